"""Synthetic chest CT phantoms: physical densities, disease patterns, acquisition, files and datalist."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medxai.data.splits import check_patient_disjoint
from medxai.data.synthetic.ct import (
    CENTRES,
    CLASS_NAMES,
    SCAN_LENGTH_MM,
    CTCentre,
    generate_ct_case,
    generate_ct_dataset,
)
from medxai.errors import InputError

SHAPE = (96, 96, 48)  # small but anatomically complete: 4 mm pixels, 6.7 mm slices


def _case(
    seed: int,
    label: str,
    severity: str = "moderate",
    centre: str | CTCentre = "A",
    noise: bool = False,
    shape: tuple[int, int, int] = SHAPE,
):
    return generate_ct_case(seed, label, severity, centre, shape, add_noise=noise)


def _uniform_region(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Voxels whose whole 5 x 5 in-plane neighbourhood lies in [lo, hi] (a homogeneous tissue region)."""
    inside = (image >= lo) & (image <= hi)
    return ndimage.binary_erosion(inside, structure=np.ones((5, 5, 1), bool))


@pytest.fixture(scope="module")
def normal_clean():
    return _case(0, "normal")


def test_tissue_densities_in_hounsfield_units(normal_clean):
    img, lungs = normal_clean.image, normal_clean.lung_mask > 0
    assert img[0, 0, 0] == -1000.0  # air outside the body
    # whole-lung median includes vessels: a little above the alveolar parenchyma, near -850 HU
    lung_median = float(np.median(img[lungs]))
    assert abs(lung_median - -850.0) < 30.0
    assert abs(lung_median - normal_clean.meta["parenchyma_hu"]) < 15.0
    # soft tissue (heart, muscle) and subcutaneous fat measured in homogeneous regions
    soft = _uniform_region(img, 30.0, 50.0)
    fat = _uniform_region(img, -150.0, -50.0)
    assert soft.sum() > 500 and fat.sum() > 200
    assert abs(float(img[soft].mean()) - 40.0) < 3.0
    assert abs(float(img[fat].mean()) - -100.0) < 5.0
    # bone: ribs and vertebrae reach cortical densities but never exceed the cortical value
    assert 400.0 < float(img.max()) <= 900.0
    assert np.count_nonzero(img > 300.0) > 300
    # supine gravity gradient: the posterior (dependent) half of the lungs is denser than the anterior
    y_world = normal_clean.affine[1, 3] + normal_clean.affine[1, 1] * np.arange(img.shape[1])
    posterior = lungs & (y_world < np.median(y_world[np.nonzero(lungs)[1]]))[None, :, None]
    anterior = lungs & ~posterior
    assert np.median(img[posterior]) > np.median(img[anterior]) + 10.0


def test_vessels_thin_towards_the_lung_periphery(normal_clean):
    """Murray's-law tree from the hila: vessel-dense voxels are several times rarer under the pleura."""
    lungs = normal_clean.lung_mask > 0
    depth = ndimage.distance_transform_edt(lungs, sampling=normal_clean.spacing)
    vessel = normal_clean.image > -500.0
    subpleural = vessel[lungs & (depth >= 4.0) & (depth < 12.0)].mean()
    central = vessel[lungs & (depth >= 25.0)].mean()
    assert central > 3.0 * subpleural > 0.0


def test_anatomy_in_ras_orientation(normal_clean):
    case = normal_clean
    world = lambda idx, axis: case.affine[axis, 3] + case.affine[axis, axis] * idx  # noqa: E731
    right_x = world(np.nonzero(case.lung_mask == 1)[0], 0)
    left_x = world(np.nonzero(case.lung_mask == 2)[0], 0)
    assert right_x.min() > 0 and left_x.max() < 0  # RAS: +X is the patient's right
    # the left lung is smaller (the heart sits to the left)
    assert np.count_nonzero(case.lung_mask == 2) < np.count_nonzero(case.lung_mask == 1)
    # lungs end above the bottom and below the top of the scan (apex and costophrenic recesses inside)
    per_slice = (case.lung_mask > 0).sum(axis=(0, 1))
    assert per_slice[0] < per_slice.max() * 0.2 and per_slice[-1] == 0 and per_slice.max() > 1000


def test_ground_glass_denser_than_parenchyma_by_configured_delta(normal_clean):
    covid = _case(0, "covid19", "moderate")
    delta = covid.meta["ggo_delta_hu"]
    assert -700.0 <= covid.meta["ggo_hu"] <= -300.0
    ggo = covid.lesion_mask == 1
    assert ggo.sum() > 50
    # same patient without disease: inside the lesion core, away from vessels, the density rises by delta
    core = ndimage.binary_erosion(ggo, structure=np.ones((3, 3, 1), bool)) & (normal_clean.image < -700.0)
    paired = float((covid.image - normal_clean.image)[core].mean())
    assert abs(paired - delta) < 0.05 * delta
    # on the diseased scan alone: mean inside the mask minus mean of the remaining parenchyma
    parenchyma = (covid.lung_mask > 0) & (covid.lesion_mask == 0)
    contrast = float(covid.image[ggo].mean() - covid.image[parenchyma].mean())
    assert abs(contrast - delta) < 0.2 * delta
    # ground-glass keeps vessels visible (Fleischner definition): vessel-density voxels inside the lesion
    assert np.count_nonzero(covid.image[ggo] > -300.0) > 0


def test_consolidation_density_and_air_bronchogram():
    pneumonia = _case(2, "pneumonia", "moderate")
    consolidation = pneumonia.image[pneumonia.lesion_mask == 2]
    assert consolidation.size > 500
    assert -100.0 <= pneumonia.meta["consolidation_hu"] <= 100.0
    assert abs(float(np.median(consolidation)) - pneumonia.meta["consolidation_hu"]) < 15.0
    # air-filled bronchi stay dark inside the consolidation (air bronchogram)
    assert np.count_nonzero(consolidation < -400.0) >= 3
    assert not np.any(pneumonia.lesion_mask == 1)


def test_severity_sets_a_contiguous_run_of_slices():
    nz = 64
    counts = {}
    for severity in ("mild", "moderate", "severe"):
        case = _case(4, "covid19", severity, shape=(64, 64, nz))
        labels = case.slice_labels
        hit = np.nonzero(labels)[0]
        assert hit.size and hit[-1] - hit[0] + 1 == hit.size  # contiguous
        assert case.lesion_slices == (hit[0], hit[-1] + 1)
        assert np.array_equal(labels, (case.lesion_mask.max(axis=(0, 1)) > 0).astype(np.uint8))
        counts[severity] = hit.size
    assert 2 <= counts["mild"] <= 0.10 * nz
    assert counts["mild"] < counts["moderate"] < counts["severe"]
    normal = _case(4, "normal", shape=(64, 64, nz))
    assert not normal.lesion_mask.any() and normal.lesion_slices is None and normal.severity == "none"


def test_covid_bilateral_peripheral_basal_and_pneumonia_one_lobe():
    covid_depth, pneumonia_depth, lower, posterior = [], [], [], []
    for seed in (0, 1, 2):
        covid, pneumonia = _case(seed, "covid19"), _case(seed, "pneumonia")
        for case, depths in ((covid, covid_depth), (pneumonia, pneumonia_depth)):
            lesion = case.lesion_mask > 0
            assert np.all(case.lung_mask[lesion] > 0)  # lesions lie in the lungs
            distance = ndimage.distance_transform_edt(case.lung_mask > 0, sampling=case.spacing)
            depths.append(float(distance[lesion].mean()))
        assert set(np.unique(covid.lung_mask[covid.lesion_mask > 0])) == {1, 2}  # bilateral
        assert np.unique(pneumonia.lung_mask[pneumonia.lesion_mask > 0]).size == 1  # one lung
        assert pneumonia.meta["lobe"] is not None and len(pneumonia.meta["lungs_involved"]) == 1
        # COVID-19 lesions sit low (lower lobes) and posterior (dependent) relative to the lungs
        lesion_idx, lung_idx = np.nonzero(covid.lesion_mask), np.nonzero(covid.lung_mask)
        lower.append(lesion_idx[2].mean() - lung_idx[2].mean())
        posterior.append(lesion_idx[1].mean() - lung_idx[1].mean())
    assert np.mean(lower) < 0 and np.mean(posterior) < 0
    # peripheral (subpleural) ground-glass is closer to the pleura than lobar consolidation
    assert np.mean(covid_depth) < 0.7 * np.mean(pneumonia_depth)


@pytest.mark.parametrize("centre", ["A", "B", "D"])
def test_centre_noise_sigma_matches_configuration(centre):
    sigma = CENTRES[centre].noise_sigma_hu
    clean, noisy = _case(1, "normal", centre=centre), _case(1, "normal", centre=centre, noise=True)
    body = (clean.image > -900.0) & (clean.image < 1500.0)  # away from the -1024 clip
    assert abs(float((noisy.image - clean.image)[body].std()) - sigma) < 0.03 * sigma
    tissue = CENTRES[centre].hu_scale * 40.0 + CENTRES[centre].hu_offset
    region = _uniform_region(clean.image, tissue - 1.0, tissue + 1.0)  # homogeneous soft tissue
    assert region.sum() > 300
    assert abs(float(noisy.image[region].std()) - sigma) < 0.1 * sigma


def test_centre_calibration_spacing_and_affine():
    for name in ("A", "B", "C"):
        centre = CENTRES[name]
        case = _case(3, "normal", centre=name)
        spacing = centre.spacing(SHAPE)
        assert np.allclose(np.diag(case.affine)[:3], spacing)
        assert spacing[2] == pytest.approx(SCAN_LENGTH_MM / SHAPE[2])
        assert spacing[0] == pytest.approx(centre.field_of_view_mm / SHAPE[0])
        assert case.meta["centre"]["noise_sigma_hu"] == centre.noise_sigma_hu
        air = centre.hu_scale * -1000.0 + centre.hu_offset
        assert case.image[0, 0, 0] == pytest.approx(round(air))
        tissue = centre.hu_scale * 40.0 + centre.hu_offset  # calibrated soft tissue
        assert _uniform_region(case.image, tissue - 1.0, tissue + 1.0).sum() > 300


def test_thick_slice_is_the_average_of_its_thin_slices():
    """Partial volume: a 5 mm slice equals the mean of the four 1.25 mm slices it covers."""
    thick = CTCentre("thick", "test", 0.0, 1.0, 0.0, 380.0, 5.0, 0.0)
    thin = dataclasses.replace(thick, name="thin", slice_thickness_mm=1.25)
    a = _case(5, "normal", centre=thick, shape=(64, 64, 64))  # 5 mm slices every 5 mm
    b = _case(5, "normal", centre=thin, shape=(64, 64, 256))  # 1.25 mm slices every 1.25 mm
    grouped = b.image.reshape(64, 64, 64, 4)
    lungs = (a.lung_mask > 0) | (b.lung_mask > 0).reshape(64, 64, 64, 4).any(axis=-1)
    away = ~ndimage.binary_dilation(lungs, iterations=2)  # vessels and lung texture depend on the grid
    error = np.abs(a.image - grouped.mean(axis=-1))[away]
    # equal up to rounding to integer HU; the few exceptions are sub-threshold lung edges (apex tips)
    assert np.mean(error <= 1.0) > 0.9995 and error.max() < 10.0
    assert np.abs(a.image - grouped[..., 0])[away].max() > 200.0  # a single thin slice differs (ribs)


def test_same_seed_identical_different_seed_differs():
    a, b = _case(7, "covid19", noise=True), _case(7, "covid19", noise=True)
    assert a.image.tobytes() == b.image.tobytes() and a.lesion_mask.tobytes() == b.lesion_mask.tobytes()
    c = _case(8, "covid19", noise=True)
    assert not np.array_equal(a.image, c.image)


def test_default_case_generation_time():
    generate_ct_case(0, "normal")  # warm caches
    start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
    case = generate_ct_case(1, "covid19", "severe", "B")
    elapsed = time.process_time() - start
    assert case.image.shape == (128, 128, 64)
    assert elapsed < 2.0, f"default case took {elapsed:.2f} s"


def test_invalid_arguments_name_the_value():
    with pytest.raises(InputError, match="flu"):
        generate_ct_case(0, "flu")
    with pytest.raises(InputError, match="critical"):
        generate_ct_case(0, "covid19", "critical")
    with pytest.raises(InputError, match="Z"):
        generate_ct_case(0, "covid19", centre="Z")
    with pytest.raises(InputError, match="16, 16, 4"):
        generate_ct_case(0, "covid19", shape=(16, 16, 4))
    with pytest.raises(InputError, match="-1"):
        generate_ct_case(-1, "normal")
    with pytest.raises(InputError, match="noise_sigma_hu"):
        CTCentre("X", "bad", -5.0, 1.0, 0.0, 380.0, 1.0, 0.5)


def _digest(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_dataset_files_datalist_and_determinism(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImage

    kwargs = dict(num_cases=9, seed=5, centres=("A", "B", "C"), shape=(48, 48, 16))
    path = generate_ct_dataset(tmp_path / "one", **kwargs)
    generate_ct_dataset(tmp_path / "two", **kwargs)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")  # byte-identical
    generate_ct_dataset(tmp_path / "three", **{**kwargs, "seed": 6, "num_cases": 1})
    assert _digest(tmp_path / "one")["images/ct_0000.nii.gz"] != _digest(tmp_path / "three")["images/ct_0000.nii.gz"]

    content = json.loads(path.read_text())
    splits = {name: load_decathlon_datalist(str(path), data_list_key=name) for name in ("training", "test")}
    check_patient_disjoint({name: content[name] for name in ("training", "validation", "test")})
    entries = [e for name in ("training", "validation", "test") for e in content[name]]
    assert len(entries) == 9 and len({e["patient_id"] for e in entries}) == 9
    labels = [e["label"] for e in entries]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # balanced classes
    for label in range(3):  # each class spread over the three centres
        assert sorted(e["centre"] for e in entries if e["label"] == label) == ["A", "B", "C"]
    assert content["metadata"]["class_names"] == list(CLASS_NAMES)

    loader = LoadImage(image_only=True)
    entry = splits["training"][0]
    raw = next(e for e in entries if entry["image"].endswith(e["image"]))
    image, lesion = loader(entry["image"]), loader(entry["lesion_mask"])
    case = generate_ct_case(raw["seed"], raw["class_name"], raw["severity"], raw["centre"], (48, 48, 16))
    assert np.array_equal(np.asarray(image), case.image)  # int16 storage is exact for integer HU
    assert np.array_equal(np.asarray(lesion), case.lesion_mask)
    assert np.allclose(image.pixdim[:3].numpy(), CENTRES[raw["centre"]].spacing((48, 48, 16)))
    assert raw["covid"] == int(raw["class_name"] == "covid19")
    assert raw["slice_labels"] == [int(v) for v in (np.asarray(lesion).max(axis=(0, 1)) > 0)]
    assert (raw["lesion_slices"] is None) == (raw["class_name"] == "normal")
