"""Synthetic brain phantoms: thick/thin slab relation, ventricle anatomy, contrasts, determinism, datalist."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medxai.data.splits import check_patient_disjoint
from medxai.data.synthetic.brain import (
    BRAIN_LABELS,
    BRAIN_TISSUES,
    CT_HU,
    generate_brain_case,
    generate_brain_dataset,
    thick_affine_from_thin,
    thick_from_thin,
    tissue_intensities,
)
from medxai.errors import InputError

# Small grid for speed: 2.4 mm in-plane, 2 mm "thin" slices, thick = 5 thin = 10 mm.
SHAPE = (80, 80, 50)
SPACING = (2.4, 2.4, 2.0)


@pytest.fixture(scope="module")
def ct_case():
    return generate_brain_case(3, "ct", SHAPE, 5, SPACING, condition="normal")


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World (mm) coordinates (n, 3) of the voxels in ``mask``."""
    idx = np.argwhere(mask).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _interior(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=1)


# ------------------------------------------------------------------------------------- thick from thin


def test_thick_from_thin_hand_computed():
    thin = np.arange(12, dtype=np.float32).reshape(1, 1, 12)
    thick = thick_from_thin(thin, 5)
    # two complete slabs (0..4, 5..9); slices 10 and 11 do not fill a slab and are dropped
    np.testing.assert_array_equal(thick, np.array([[[2.0, 7.0]]], dtype=np.float32))
    assert thick.dtype == np.float32
    labels = np.array([[0, 0, 1, 1, 2], [3, 3, 2, 2, 1], [1, 1, 1, 0, 0], [2, 0, 2, 0, 3]], dtype=np.uint8)
    # ties (0,1) -> 0 and (3,2) -> 2: the smallest tied label wins
    np.testing.assert_array_equal(thick_from_thin(labels, 5, axis=1, reduce="majority")[:, 0], [0, 2, 1, 0])
    # any axis
    vol = np.random.default_rng(0).normal(size=(10, 3, 4))
    np.testing.assert_allclose(thick_from_thin(vol, 2, axis=0), vol.reshape(5, 2, 3, 4).mean(axis=1))


def test_thick_from_thin_rejects_bad_arguments():
    with pytest.raises(InputError, match="factor"):
        thick_from_thin(np.zeros((2, 2, 10)), 0)
    with pytest.raises(InputError, match="median"):
        thick_from_thin(np.zeros((2, 2, 10)), 5, reduce="median")
    with pytest.raises(InputError, match="fewer than one slab"):
        thick_from_thin(np.zeros((2, 2, 3)), 5)
    with pytest.raises(InputError, match="label maps"):
        thick_from_thin(np.arange(1000.0).reshape(10, 10, 10), 5, reduce="majority")


def test_thick_slice_is_exactly_the_mean_of_its_thin_slab(ct_case):
    thin, thick = ct_case.thin_image, ct_case.thick_image
    assert thick.shape == (SHAPE[0], SHAPE[1], SHAPE[2] // 5)
    for k in range(thick.shape[2]):
        slab = thin[:, :, 5 * k : 5 * k + 5].astype(np.float64)
        np.testing.assert_allclose(thick[:, :, k], slab.mean(axis=2), rtol=0, atol=1e-4)


def test_thick_label_is_the_slab_majority(ct_case):
    thin, thick = ct_case.thin_label, ct_case.thick_label
    rng = np.random.default_rng(1)
    # every ventricle voxel of the thick volume plus random others, checked against a plain vote count
    voxels = np.argwhere((thick > 0) | (rng.uniform(size=thick.shape) < 0.01))
    for i, j, k in voxels:
        counts = Counter(thin[i, j, 5 * k : 5 * k + 5].tolist())
        top = max(counts.values())
        assert thick[i, j, k] == min(v for v, c in counts.items() if c == top)


def test_affines_carry_the_spacing_and_slab_centres(ct_case):
    np.testing.assert_allclose(np.diag(ct_case.thin_affine)[:3], SPACING)
    np.testing.assert_allclose(np.diag(ct_case.thick_affine)[:3], (SPACING[0], SPACING[1], 5 * SPACING[2]))
    # thick slice k is centred on the mean position of its five thin slices
    thin_z = ct_case.thin_affine[2, 2] * np.arange(10) + ct_case.thin_affine[2, 3]
    thick_z = ct_case.thick_affine[2, 2] * np.arange(2) + ct_case.thick_affine[2, 3]
    np.testing.assert_allclose(thick_z, thin_z.reshape(2, 5).mean(axis=1))
    np.testing.assert_allclose(thick_affine_from_thin(np.eye(4), 5)[:3, 3], [0.0, 0.0, 2.0])


def test_thick_slices_average_the_noise(ct_case):
    # Homogeneous white matter: per-voxel noise sigma as configured, /sqrt(5) after slab averaging.
    wm = ct_case.thin_tissue == BRAIN_TISSUES["white_matter"]
    wm_core = ndimage.binary_erosion(wm, iterations=2)
    sigma = ct_case.meta["noise_sigma"]
    thin_std = ct_case.thin_image[wm_core].std()
    assert thin_std == pytest.approx(sigma, rel=0.12)
    slab_core = thick_from_thin(wm_core.astype(np.uint8), 5, reduce="mean") == 1.0
    assert ct_case.thick_image[slab_core].std() == pytest.approx(sigma / np.sqrt(5), rel=0.2)


# ----------------------------------------------------------------------------------------- anatomy


def test_ventricle_labels_and_positions(ct_case):
    labels, affine = ct_case.thin_label, ct_case.thin_affine
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert set(np.unique(ct_case.thick_label)) == {0, 1, 2, 3}
    lateral = _world(affine, labels == BRAIN_LABELS["lateral"])
    third = _world(affine, labels == BRAIN_LABELS["third"])
    fourth = _world(affine, labels == BRAIN_LABELS["fourth"])
    head = _world(affine, ct_case.thin_tissue > 0)
    midline_x = 0.5 * (head[:, 0].min() + head[:, 0].max())
    # third ventricle: a thin slit on the midline, long front to back
    assert abs(third[:, 0].mean() - midline_x) < 3.0
    assert np.ptp(third[:, 0]) < 12.0 < np.ptp(third[:, 1])
    # fourth ventricle: below and behind the lateral ventricles (posterior fossa)
    assert fourth[:, 2].mean() < lateral[:, 2].mean() - 25.0
    assert fourth[:, 1].mean() < lateral[:, 1].mean()
    # lateral ventricles: a left-right symmetric pair
    right = lateral[lateral[:, 0] > third[:, 0].mean()]
    left = lateral[lateral[:, 0] < third[:, 0].mean()]
    assert len(right) == pytest.approx(len(left), rel=0.15)
    assert right[:, 0].mean() - third[:, 0].mean() == pytest.approx(third[:, 0].mean() - left[:, 0].mean(), abs=3.0)
    _, n_lateral = ndimage.label(labels == BRAIN_LABELS["lateral"])
    assert n_lateral >= 2  # split by the septum pellucidum


def test_ventricles_sit_inside_the_brain(ct_case):
    tissue = ct_case.thin_tissue
    ventricles = ct_case.thin_label > 0
    assert (tissue[ventricles] == BRAIN_TISSUES["ventricle"]).all()
    grown = ndimage.binary_dilation(ventricles, iterations=2) & ~ventricles
    brain_or_csf = np.isin(tissue[grown], [BRAIN_TISSUES[t] for t in ("grey_matter", "white_matter", "csf")])
    assert brain_or_csf.mean() > 0.98  # no ventricle touches bone or scalp


def test_hydrocephalus_enlarges_ventricles_evans_index():
    normal = generate_brain_case(11, "ct", SHAPE, 5, SPACING, condition="normal")
    hydro = generate_brain_case(11, "ct", SHAPE, 5, SPACING, condition="hydrocephalus")
    # Evans index > 0.3 indicates ventriculomegaly (Evans 1942; Relkin et al. 2005)
    assert normal.meta["evans_index"] < 0.3 < hydro.meta["evans_index"]
    assert hydro.meta["ventricle_volume_ml"]["lateral"] > 2.0 * normal.meta["ventricle_volume_ml"]["lateral"]
    assert 8.0 < normal.meta["ventricle_volume_ml"]["lateral"] < 40.0  # adult lateral ventricles, mL


# ---------------------------------------------------------------------------------------- contrasts


def test_ct_csf_darker_than_grey_matter_by_the_claimed_hu(ct_case):
    image, tissue = ct_case.thin_image, ct_case.thin_tissue
    values = ct_case.meta["tissue_values"]
    assert values == pytest.approx(CT_HU)
    csf = image[_interior(ct_case.thin_label > 0)].mean()
    grey = image[_interior(tissue == BRAIN_TISSUES["grey_matter"])].mean()
    white = image[_interior(tissue == BRAIN_TISSUES["white_matter"])].mean()
    assert grey - csf == pytest.approx(values["grey_matter"] - values["ventricle"], abs=3.0)
    assert 0.0 <= csf <= 15.0 and 35.0 <= grey <= 45.0 and 20.0 <= white <= 30.0
    assert image[_interior(tissue == BRAIN_TISSUES["bone"])].mean() > 1000.0


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_mr_contrast_order(contrast):
    case = generate_brain_case(3, contrast, SHAPE, 5, SPACING, condition="normal")
    image, tissue = case.thin_image, case.thin_tissue
    csf = image[_interior(case.thin_label > 0)].mean()
    grey = image[_interior(tissue == BRAIN_TISSUES["grey_matter"])].mean()
    white = image[_interior(tissue == BRAIN_TISSUES["white_matter"])].mean()
    claimed = tissue_intensities(contrast)
    if contrast == "t1":  # CSF darkest, white matter brighter than grey
        assert csf < grey < white
    else:  # CSF brightest, grey brighter than white
        assert csf > grey > white
    # measured ratios follow the spin-echo signal equation within the bias field's spread
    assert csf / white == pytest.approx(claimed["ventricle"] / claimed["white_matter"], rel=0.2)
    assert (image >= 0).all()  # magnitude images


def test_same_subject_in_every_contrast(ct_case):
    t1 = generate_brain_case(3, "t1", SHAPE, 5, SPACING, condition="normal")
    np.testing.assert_array_equal(t1.thin_label, ct_case.thin_label)
    np.testing.assert_array_equal(t1.thin_tissue, ct_case.thin_tissue)


def test_same_seed_identical_different_seed_differs():
    a = generate_brain_case(5, "t2", SHAPE, 5, SPACING)
    b = generate_brain_case(5, "t2", SHAPE, 5, SPACING)
    c = generate_brain_case(6, "t2", SHAPE, 5, SPACING)
    assert a.thin_image.tobytes() == b.thin_image.tobytes()
    assert a.thick_label.tobytes() == b.thick_label.tobytes()
    assert a.meta == b.meta
    assert not np.array_equal(a.thin_image, c.thin_image)


def test_invalid_arguments_raise_input_error():
    with pytest.raises(InputError, match="flair"):
        generate_brain_case(0, "flair", SHAPE, 5, SPACING)
    with pytest.raises(InputError, match="coma"):
        generate_brain_case(0, "ct", SHAPE, 5, SPACING, condition="coma")
    with pytest.raises(InputError, match="thick_factor"):
        generate_brain_case(0, "ct", SHAPE, 0, SPACING)


def test_default_case_time_bound():
    start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
    case = generate_brain_case(0, "t1")
    elapsed = time.process_time() - start
    assert case.thin_image.shape == (128, 128, 120) and case.thick_image.shape == (128, 128, 24)
    assert case.thin_affine[2, 2] == 1.0 and case.thick_affine[2, 2] == 5.0
    assert elapsed < 5.0


# ----------------------------------------------------------------------------------------- dataset


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_dataset_datalist_keeps_thin_and_thick_together(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    shape, spacing = (48, 48, 40), (4.0, 4.0, 2.5)
    path = generate_brain_dataset(tmp_path / "a", num_subjects=6, seed=2, shape=shape, spacing_mm=spacing)
    again = generate_brain_dataset(tmp_path / "b", num_subjects=6, seed=2, shape=shape, spacing_mm=spacing)
    assert _digest(path.parent) == _digest(again.parent)

    splits = {name: load_decathlon_datalist(path, data_list_key=name) for name in ("training", "validation", "test")}
    check_patient_disjoint(splits)
    where: dict[str, set] = {}
    kinds: dict[str, set] = {}
    for name, records in splits.items():
        for r in records:
            where.setdefault(r["patient_id"], set()).add(name)
            kinds.setdefault(r["patient_id"], set()).add(r["thickness"])
            assert r["slice_thickness_mm"] == (2.5 if r["thickness"] == "thin" else 12.5)
            assert r["contrast"] in ("ct", "t1")
    assert len(where) == 6
    assert all(len(s) == 1 for s in where.values())  # a subject's thin and thick share one split
    assert all(k == {"thin", "thick"} for k in kinds.values())

    thick = next(r for r in splits["training"] if r["thickness"] == "thick")
    image = LoadImage(image_only=True)(thick["image"])
    label = LoadImage(image_only=True)(thick["label"])
    np.testing.assert_allclose(image.meta["pixdim"][1:4], (4.0, 4.0, 12.5))
    assert tuple(image.shape) == (48, 48, 8)
    assert set(np.unique(np.asarray(label)).astype(int)) <= {0, 1, 2, 3}
