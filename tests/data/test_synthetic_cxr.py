"""Synthetic chest radiographs: physics of the rendering, disease patterns, masks, determinism, datalist."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medxai.data.splits import check_patient_disjoint
from medxai.data.synthetic.cxr import (
    CXR_CENTRES,
    CXR_CLASS_NAMES,
    CXR_LESION_LABELS,
    CXR_MATERIALS_HU,
    MU_WATER_PER_MM,
    decode_line_integral,
    generate_cxr_case,
    generate_cxr_dataset,
    mu_from_hu,
)
from medxai.errors import InputError

SIZE = (192, 192)


@pytest.fixture(scope="module")
def cases() -> dict:
    """One chest (seed 5) with every class, plus its lesion-free twins, at two severities."""
    out = {}
    for label in range(4):
        out[label] = generate_cxr_case(5, label, "moderate", "A", SIZE)
    out["covid_free"] = generate_cxr_case(5, 3, "moderate", "A", SIZE, lesions=False)
    out["bacterial_free"] = generate_cxr_case(5, 1, "moderate", "A", SIZE, lesions=False)
    return out


def _midline_col(lung_mask: np.ndarray) -> float:
    """Column half-way between the medial edges of the two lungs."""
    right_cols = np.nonzero((lung_mask == 1).any(axis=0))[0]
    left_cols = np.nonzero((lung_mask == 2).any(axis=0))[0]
    return 0.5 * (right_cols.max() + left_cols.min())


def test_mu_from_hu_is_the_hounsfield_definition():
    assert mu_from_hu(0.0) == pytest.approx(MU_WATER_PER_MM)
    assert mu_from_hu(-1000.0) == pytest.approx(0.0)
    # lung at -850 HU attenuates 15 % of water
    assert mu_from_hu(CXR_MATERIALS_HU["lung"]) == pytest.approx(0.15 * MU_WATER_PER_MM)


def test_lung_masks_two_lungs_right_larger_on_image_left(cases):
    for label in range(4):
        lung = cases[label].lung_mask
        assert set(np.unique(lung)) == {0, 1, 2}
        for value in (1, 2):
            _, n = ndimage.label(lung == value)
            assert n == 1
        _, n_all = ndimage.label(lung > 0)
        assert n_all == 2
        # PA view: the patient's right lung is on the image left; the heart makes the left lung smaller.
        cols_r = np.nonzero(lung == 1)[1].mean()
        cols_l = np.nonzero(lung == 2)[1].mean()
        assert cols_r < SIZE[1] / 2 < cols_l
        assert (lung == 1).sum() > 1.02 * (lung == 2).sum()


def test_costophrenic_angles_are_lateral(cases):
    lung = cases[0].lung_mask
    mid = _midline_col(lung)
    for value in (1, 2):
        rows, cols = np.nonzero(lung == value)
        lowest = cols[rows == rows.max()]
        lateral_dist = np.abs(lowest - mid).mean()
        # The lowest point of each lung (the costophrenic sulcus) lies in its lateral half.
        span = np.abs(cols - mid)
        assert lateral_dist > 0.5 * (span.min() + span.max())


def test_aerated_lung_darker_than_mediastinum_and_bone(cases):
    case = cases[0]
    image = case.image.astype(float)
    lung = case.lung_mask > 0
    rows = np.nonzero(lung.any(axis=1))[0]
    mid = int(round(_midline_col(case.lung_mask)))
    mediastinum = image[rows.min() : rows.max(), mid - 3 : mid + 4]  # spine behind the mediastinum
    assert image[lung].mean() + 60 < mediastinum.mean()
    # outside the body (air) is darkest: the direct beam saturates the detector
    assert image[:, :3].mean() < 10
    # the abdomen below the domes (soft tissue, no lung) is brighter than the lungs
    below = image[rows.max() + 10 : rows.max() + 20, mid - 40 : mid + 40]
    assert below.mean() > image[lung].mean() + 60


def test_vascular_markings_fade_to_the_periphery():
    # Model-level check on the anatomy's vessel path-length map (ribs and margins dominate image detail).
    from medxai.data.synthetic.cxr import _build_anatomy

    anat = _build_anatomy(np.random.default_rng(0), SIZE, CXR_CENTRES["A"])
    lung = anat.lung_mask > 0
    vessels = anat.vessel_bronchus
    detail = np.abs(vessels - ndimage.gaussian_filter(vessels, 2.0))  # what shows as markings
    for value, name in ((1, "right"), (2, "left")):
        hx, hy = anat.hila[name]
        dist = np.hypot(anat.grid.x - hx, anat.grid.y - hy)
        side = anat.lung_mask == value
        near = side & (dist < np.percentile(dist[side], 33))
        far = side & (dist > np.percentile(dist[side], 67))
        assert vessels[near].mean() > 2.0 * vessels[far].mean() > 0
        assert detail[near].mean() > 1.5 * detail[far].mean()
    assert not vessels[~lung].any()


def test_opacities_raise_the_line_integral_by_the_claimed_amount(cases):
    for label, free_key in ((3, "covid_free"), (1, "bacterial_free")):
        case, free = cases[label], cases[free_key]
        np.testing.assert_array_equal(case.lung_mask, free.lung_mask)
        assert not free.lesion_mask.any()
        p_lesion = decode_line_integral(case.image, case.meta)
        p_free = decode_line_integral(free.image, free.meta)
        for name, claimed in case.meta["lesion_line_integral_increase"].items():
            inside = case.lesion_mask == CXR_LESION_LABELS[name]
            measured = (p_lesion - p_free)[inside].mean()
            assert claimed > 0.05
            assert measured == pytest.approx(claimed, rel=0.15), name
            # and the display brightens there: opacities are whiter than the same lung without them
            assert case.image[inside].mean() > free.image[inside].mean() + 5
        # outside the lesion and away from its blurred border nothing changes
        far = ~ndimage.binary_dilation(case.lesion_mask > 0, iterations=8)
        assert np.abs(p_lesion - p_free)[far].mean() < 0.01


def test_consolidation_is_denser_than_ground_glass(cases):
    # Per mm of lung replaced, consolidation (+30 HU) adds 2.5x the attenuation of ground-glass (-500 HU).
    ggo = mu_from_hu(CXR_MATERIALS_HU["ground_glass"]) - mu_from_hu(CXR_MATERIALS_HU["lung"])
    cons = mu_from_hu(CXR_MATERIALS_HU["consolidation"]) - mu_from_hu(CXR_MATERIALS_HU["lung"])
    assert cons / ggo == pytest.approx(880.0 / 350.0)
    assert cases[1].meta["lesion_line_integral_increase"]["consolidation"] > 2 * cases[3].meta[
        "lesion_line_integral_increase"
    ]["ground_glass"]


def test_lesions_lie_inside_the_lungs(cases):
    for label in (1, 2, 3):
        lesion = cases[label].lesion_mask
        assert lesion.any()
        assert not (lesion.astype(bool) & (cases[label].lung_mask == 0)).any()
    assert not cases[0].lesion_mask.any()
    assert cases[0].severity == "none"


def test_covid_bilateral_peripheral_lower_zone(cases):
    case = cases[3]
    lesion, lung = case.lesion_mask > 0, case.lung_mask
    per_lung = [(lesion & (lung == v)).sum() for v in (1, 2)]
    assert min(per_lung) > 0.1 * lesion.sum()
    lung_rows = np.nonzero(lung > 0)[0]
    lesion_rows = np.nonzero(lesion)[0]
    # lower zones: below the middle of the lung fields
    assert lesion_rows.mean() > 0.5 * (lung_rows.min() + lung_rows.max())
    # peripheral: further from the midline than the average lung pixel
    mid = _midline_col(lung)
    assert np.abs(np.nonzero(lesion)[1] - mid).mean() > np.abs(np.nonzero(lung > 0)[1] - mid).mean() + 5


def test_bacterial_is_one_unilateral_consolidation(cases):
    case = cases[1]
    lesion = case.lesion_mask
    assert set(np.unique(lesion)) == {0, CXR_LESION_LABELS["consolidation"]}
    lungs_hit = {int(v) for v in np.unique(case.lung_mask[lesion > 0])}
    assert len(lungs_hit) == 1
    _, n = ndimage.label(lesion > 0)
    assert n == 1
    assert case.meta["lesion"]["lobe"].startswith("right" if lungs_hit == {1} else "left")


def test_viral_bilateral_and_perihilar(cases):
    viral, covid = cases[2], cases[3]
    lung = viral.lung_mask
    lesion = viral.lesion_mask > 0
    assert set(np.unique(viral.lesion_mask)) == {0, CXR_LESION_LABELS["ground_glass"]}
    assert all((lesion & (lung == v)).sum() > 0.2 * lesion.sum() for v in (1, 2))
    rr, cc = np.mgrid[: SIZE[0], : SIZE[1]]
    hila = viral.meta["hila_px"]  # same chest, so the same hila for both cases
    dist = np.minimum(*(np.hypot(rr - hila[side][0], cc - hila[side][1]) for side in ("right", "left")))
    assert dist[lesion].mean() + 10 < dist[covid.lesion_mask > 0].mean()


def test_severity_increases_extent():
    for label in (1, 2, 3):
        fractions = [
            generate_cxr_case(9, label, severity, "A", (128, 128)).meta["lesion_area_fraction"]
            for severity in ("mild", "moderate", "severe")
        ]
        assert fractions[0] < fractions[1] < fractions[2], (label, fractions)
    mild = generate_cxr_case(9, 3, "mild", "A", (128, 128)).meta["lesion_area_fraction"]
    assert 0.05 < mild < 0.15


def test_centres_differ_in_noise_and_geometry():
    a = generate_cxr_case(4, 0, centre="A", size=(128, 128))
    b = generate_cxr_case(4, 0, centre="B", size=(128, 128))
    assert a.pixel_spacing_mm[0] == pytest.approx(CXR_CENTRES["A"].field_of_view_mm / 128)
    assert b.pixel_spacing_mm[0] == pytest.approx(CXR_CENTRES["B"].field_of_view_mm / 128)

    def abdomen_noise(case):
        rows = np.nonzero((case.lung_mask > 0).any(axis=1))[0]
        mid = int(round(_midline_col(case.lung_mask)))
        p = decode_line_integral(case.image, case.meta)[rows.max() + 8 : rows.max() + 18, mid + 10 : mid + 30]
        return np.std(p - ndimage.median_filter(p, 3))

    # centre B's detector collects ~30x fewer quanta: clearly noisier in dense regions
    assert abdomen_noise(b) > 2.0 * abdomen_noise(a)
    assert a.meta["centre"]["name"] == "A" and b.meta["centre"]["quanta_per_mm2"] == CXR_CENTRES["B"].quanta_per_mm2


def test_same_seed_identical_different_seed_differs():
    one = generate_cxr_case(21, "covid19", "severe", "C", (128, 128))
    two = generate_cxr_case(21, 3, "severe", "C", (128, 128))
    other = generate_cxr_case(22, 3, "severe", "C", (128, 128))
    assert one.image.tobytes() == two.image.tobytes()
    assert one.lesion_mask.tobytes() == two.lesion_mask.tobytes()
    assert one.meta == two.meta
    assert not np.array_equal(one.image, other.image)
    assert not np.array_equal(one.lung_mask, other.lung_mask)


def test_invalid_arguments_raise_input_error():
    with pytest.raises(InputError, match="pneumonia"):
        generate_cxr_case(0, "pneumonia")
    with pytest.raises(InputError, match="7"):
        generate_cxr_case(0, 7)
    with pytest.raises(InputError, match="critical"):
        generate_cxr_case(0, 1, severity="critical")
    with pytest.raises(InputError, match="'Z'"):
        generate_cxr_case(0, 1, centre="Z")
    with pytest.raises(InputError, match="32"):
        generate_cxr_case(0, 1, size=(32, 256))


def test_default_case_time_bound():
    start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
    case = generate_cxr_case(1, 3)
    elapsed = time.process_time() - start
    assert case.image.shape == (256, 256) and case.image.dtype == np.uint8
    assert elapsed < 1.5


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_dataset_layout_monai_datalist_and_patient_splits(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    path = generate_cxr_dataset(tmp_path / "one", num_cases=12, seed=3, size=(96, 96))
    again = generate_cxr_dataset(tmp_path / "two", num_cases=12, seed=3, size=(96, 96))
    assert _digest(path.parent) == _digest(again.parent)

    splits = {name: load_decathlon_datalist(path, data_list_key=name) for name in ("training", "validation", "test")}
    check_patient_disjoint(splits)
    records = [r for part in splits.values() for r in part]
    assert len(records) == 12
    assert sorted(r["label"] for r in records) == sorted([0, 1, 2, 3] * 3)
    for r in records:
        assert r["class_name"] == CXR_CLASS_NAMES[r["label"]]
        assert r["label3"] == {0: 0, 1: 1, 2: 1, 3: 2}[r["label"]]
        assert r["patient_id"].startswith("synthetic-cxr-")
        assert Path(r["image"]).is_file() and Path(r["lesion_mask"]).is_file()
        lung = np.array(Image.open(r["lung_mask"]))
        lesion = np.array(Image.open(r["lesion_mask"]))
        assert lung.dtype == np.uint8 and set(np.unique(lung)) == {0, 1, 2}
        assert not (lesion.astype(bool) & (lung == 0)).any()
        assert (r["severity"] == "none") == (r["label"] == 0)
    # MONAI reads the PNG (transposed to W, H by its PIL reader) with the pixel values we wrote
    first = records[0]
    image = LoadImage(image_only=True)(first["image"])
    np.testing.assert_array_equal(np.asarray(image).T, np.array(Image.open(first["image"])))
