"""Threshold lung segmentation on CT phantoms and hand-built volumes; crop to the lungs with its affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from medxai.data.synthetic.ct import generate_ct_case
from medxai.errors import InputError
from medxai.transforms import CropToLungd, LungMask, LungMaskd, lung_bounding_box, lung_mask

SHAPE = (96, 96, 48)  # 3.75-4.2 mm pixels, 6.7 mm slices


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _meta_volume(array: np.ndarray, affine: np.ndarray, name: str = "/site/patient_x/ct_0042.nii.gz") -> MetaTensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    return MetaTensor(tensor, affine=torch.as_tensor(affine), meta={"filename_or_obj": name})


# Cases over centres A (standard dose), B (low dose, 45 HU noise, thick slices), C (calibration drift 0.97 x
# HU - 15) and every class; severe cases have the most lesion volume. Measured Dice with CTCase.lung_mask > 0
# (seed 0): normal 0.981-0.984, COVID-19 severe 0.981-0.983, lobar pneumonia severe 0.954-0.964.
PHANTOMS = [
    ("A", "normal", "mild"),
    ("A", "covid19", "severe"),
    ("A", "pneumonia", "severe"),
    ("B", "normal", "mild"),
    ("B", "covid19", "severe"),
    ("B", "pneumonia", "severe"),
    ("C", "normal", "mild"),
    ("C", "covid19", "severe"),
    ("C", "pneumonia", "severe"),
]


@pytest.fixture(scope="module")
def phantom_results():
    results = {}
    for centre, label, severity in PHANTOMS:
        case = generate_ct_case(0, label, severity, centre, SHAPE)
        masker = LungMask()
        mask = masker(_meta_volume(case.image, case.affine))
        results[(centre, label)] = (case, mask)
    return results


@pytest.mark.parametrize("centre,label,severity", PHANTOMS)
def test_lung_mask_dice_on_phantoms(phantom_results, centre, label, severity):
    case, mask = phantom_results[(centre, label)]
    truth = case.lung_mask > 0
    dice = _dice(mask[0].numpy(), truth)
    assert dice >= 0.9
    if label == "pneumonia":
        # consolidation touching the chest wall is not enclosed by aerated lung: the documented limitation
        assert 0.93 <= dice < 0.975
    else:
        assert dice >= 0.975


def test_hole_filling_recovers_enclosed_lesions_but_not_pleural_consolidation(phantom_results):
    # COVID-19 lesions (ground glass, denser than -320 HU in places, and consolidation cores) are mostly
    # enclosed by aerated lung: hole filling puts them back into the mask (measured recall 0.93-0.95).
    for centre in "ABC":
        case, mask = phantom_results[(centre, "covid19")]
        lesion = case.lesion_mask > 0
        recall = float(mask[0].numpy()[lesion].mean())
        assert recall >= 0.85, (centre, recall)
    # Lobar consolidation (soft-tissue density) fills the lobe up to the pleura and is not enclosed: measured
    # recall 0.55-0.69, the documented limitation of threshold segmentation.
    for centre in "ABC":
        case, mask = phantom_results[(centre, "pneumonia")]
        consolidation = case.lesion_mask == 2
        assert consolidation.sum() > 1000
        recall = float(mask[0].numpy()[consolidation].mean())
        assert 0.3 <= recall <= 0.8, (centre, recall)


def test_lung_mask_output_keeps_geometry(phantom_results):
    case, mask = phantom_results[("A", "normal")]
    assert isinstance(mask, MetaTensor)
    assert mask.dtype == torch.uint8
    assert tuple(mask.shape) == (1, *SHAPE)
    assert set(np.unique(mask.numpy())) == {0, 1}
    np.testing.assert_allclose(mask.affine.numpy(), case.affine)
    assert mask.meta["filename_or_obj"].endswith("ct_0042.nii.gz")


def _hand_built_chest(shape=(80, 80, 20)):
    """Body (40 HU) in air, two ellipsoidal lungs (-850 HU) with a vessel and an enclosed nodule, a gas bubble."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((x - 40) / 36) ** 2 + ((y - 40) / 28) ** 2 <= 1
    hu[body] = 40.0
    right = ((x - 24) / 11) ** 2 + ((y - 40) / 16) ** 2 + ((z - 9.5) / 12) ** 2 <= 1
    left = ((x - 56) / 9) ** 2 + ((y - 40) / 15) ** 2 + ((z - 9.5) / 12) ** 2 <= 1
    lungs = right | left
    hu[lungs] = -850.0
    vessel = ((x - 24) ** 2 + (y - 44) ** 2 <= 2) & right  # a vessel along z inside the right lung
    nodule = ((x - 56) ** 2 + (y - 36) ** 2 + (z - 10) ** 2 <= 9) & left  # a solid nodule inside the left lung
    hu[vessel | nodule] = 40.0
    bubble = ((x - 40) ** 2 + (y - 60) ** 2 + (z - 2) ** 2 <= 4) & ~lungs  # bowel gas: 33 voxels
    hu[bubble] = -1000.0
    return hu, lungs, right, bubble


def test_lung_mask_exact_on_hand_built_chest():
    hu, lungs, right, bubble = _hand_built_chest()
    mask = lung_mask(hu, (1.0, 1.0), closing_radius_mm=0.0)
    assert bubble.sum() > 0 and not mask[bubble].any()  # small gas pocket dropped
    np.testing.assert_array_equal(mask, lungs.astype(np.uint8))  # vessel and nodule filled, nothing else
    one = lung_mask(hu, (1.0, 1.0), closing_radius_mm=0.0, max_components=1)
    np.testing.assert_array_equal(one, right.astype(np.uint8))  # the larger lung only
    # the second lung is kept only when it holds at least min_component_fraction of the largest
    ratio = (lungs & ~right).sum() / right.sum()
    assert 0.5 < ratio < 0.9
    only_large = lung_mask(hu, (1.0, 1.0), closing_radius_mm=0.0, min_component_fraction=0.95)
    np.testing.assert_array_equal(only_large, right.astype(np.uint8))


def test_lung_mask_closing_radius_follows_pixel_spacing():
    # Rectangular lung (flat borders) with a 3 x 3 notch of soft tissue at its upper border (rows 12-14, row 12
    # on the border). The 3 mm closing is a disc of radius 3 px at 1 mm pixels and round(3 / 4) = 1 px (a
    # cross) at 4 mm pixels, read from the affine. Worked by hand: the radius-3 disc fills the two inner rows
    # (6 voxels); the cross fills only (14, 17) and (14, 19), whose 4-neighbours all lie in the dilated set.
    # The border row is never refilled: no lung pixel lies within the radius of the point r above it.
    hu = np.full((50, 60, 3), -1000.0, dtype=np.float32)
    hu[4:46, 4:56] = 40.0
    hu[12:34, 10:26] = -850.0
    hu[12:15, 17:20] = 40.0
    fine = LungMask()(_meta_volume(hu, np.diag([1.0, 1.0, 5.0, 1.0])))[0].numpy()
    coarse = LungMask()(_meta_volume(hu, np.diag([4.0, 4.0, 5.0, 1.0])))[0].numpy()
    expected_fine = np.zeros((3, 3), np.uint8)
    expected_fine[1:] = 1
    expected_coarse = np.zeros((3, 3), np.uint8)
    expected_coarse[2, [0, 2]] = 1
    for k in range(3):
        np.testing.assert_array_equal(fine[12:15, 17:20, k], expected_fine)
        np.testing.assert_array_equal(coarse[12:15, 17:20, k], expected_coarse)
    # away from the notch the mask is the lung rectangle
    lung = np.zeros(hu.shape, dtype=bool)
    lung[12:34, 10:26] = True
    assert int((fine.astype(bool) ^ lung).sum()) == 3 * 3  # the notch's border row, on 3 slices
    np.testing.assert_array_equal(lung_mask(hu, (4.0, 4.0)), coarse)


def test_lung_mask_refuses_volume_without_lungs():
    body = np.full((40, 40, 6), -1000.0, dtype=np.float32)
    body[5:35, 5:35] = 40.0
    img = _meta_volume(body, np.eye(4), name="/hospital/Jane_Doe/ct_0099.nii.gz")
    with pytest.raises(InputError, match="ct_0099.nii.gz") as err:
        LungMask()(img)
    assert "Jane_Doe" not in str(err.value)
    empty = LungMask(allow_empty=True)(img)
    assert int(empty.sum()) == 0
    with pytest.raises(InputError, match="ct_0099.nii.gz"):
        LungMask()(img[:, :, :, 0])  # a 2D slice


def test_lung_maskd_stores_under_key_and_checks_keys():
    hu, lungs, _, _ = _hand_built_chest()
    data = {"image": _meta_volume(hu, np.eye(4)), "lung_mask": "labels/ct_0042_lung.nii.gz"}
    out = LungMaskd("image", mask_key="lung_mask", closing_radius_mm=0.0)(data)
    np.testing.assert_array_equal(out["lung_mask"][0].numpy(), lungs.astype(np.uint8))
    assert out["image"] is data["image"]
    with pytest.raises(InputError, match="one mask_key per key"):
        LungMaskd(["image", "other"], mask_key="lung_mask")


def test_crop_to_lung_same_box_on_every_slice_and_affine_translation(phantom_results):
    case, mask = phantom_results[("B", "covid19")]
    spacing = np.array(case.spacing)
    origin = case.affine[:3, 3]
    data = {
        "image": _meta_volume(case.image, case.affine),
        "lesion": _meta_volume(case.lesion_mask, case.affine),
        "lung_mask": mask,
    }
    truth = mask[0].numpy().astype(bool)
    rows = np.nonzero(truth.any(axis=(1, 2)))[0]
    cols = np.nonzero(truth.any(axis=(0, 2)))[0]
    margin = 3
    h0, h1 = rows[0] - margin, rows[-1] + 1 + margin
    w0, w1 = cols[0] - margin, cols[-1] + 1 + margin
    assert h0 > 0 and w0 > 0 and h1 < SHAPE[0] and w1 < SHAPE[1]
    assert lung_bounding_box(mask, margin) == ([h0, w0, 0], [h1, w1, SHAPE[2]])

    out = CropToLungd(["image", "lesion", "lung_mask"], mask_key="lung_mask", margin=margin)(data)
    depth = SHAPE[2]
    for key, source in (("image", case.image), ("lesion", case.lesion_mask), ("lung_mask", truth)):
        assert tuple(out[key].shape) == (1, h1 - h0, w1 - w0, depth)
        for k in range(depth):  # the same box on every slice, slices in order
            np.testing.assert_array_equal(out[key][0, :, :, k].numpy(), source[h0:h1, w0:w1, k])
        # the world position of voxel (0, 0, 0) moved by the box origin times the spacing; spacing unchanged
        affine = out[key].affine.numpy()
        np.testing.assert_allclose(affine[:3, 3], origin + np.array([h0, w0, 0]) * spacing, atol=1e-6)
        np.testing.assert_allclose(np.diag(affine)[:3], spacing)
    # every lung voxel survives the crop
    assert int(out["lung_mask"].sum()) == int(truth.sum())


def test_crop_to_lung_margin_clipped_and_invertible(phantom_results):
    case, mask = phantom_results[("A", "normal")]
    image = _meta_volume(case.image, case.affine)
    crop = CropToLungd(["image"], margin=500)  # larger than the image: clipped to the whole slice
    assert tuple(crop({"image": image, "lung_mask": mask})["image"].shape) == (1, *SHAPE)

    pipeline = Compose([CropToLungd(["image", "lung_mask"], margin=(2, 4))])
    out = pipeline({"image": image, "lung_mask": mask})
    (h0, w0, _), (h1, w1, _) = lung_bounding_box(mask, (2, 4))
    assert tuple(out["image"].shape) == (1, h1 - h0, w1 - w0, SHAPE[2])
    # Invertd puts a prediction made on the crop back into the input geometry, zeros outside the box
    out["pred"] = out["image"] + 2000.0
    restored = Invertd("pred", pipeline, orig_keys="image", nearest_interp=False)(out)["pred"]
    assert tuple(restored.shape) == (1, *SHAPE)
    np.testing.assert_allclose(restored.affine.numpy(), case.affine)
    np.testing.assert_array_equal(restored[0, h0:h1, w0:w1].numpy(), case.image[h0:h1, w0:w1] + 2000.0)
    outside = np.ones(SHAPE[:2], dtype=bool)
    outside[h0:h1, w0:w1] = False
    assert float(restored[0].numpy()[outside].max()) == 0.0


def test_crop_to_lung_errors_name_the_case():
    image = _meta_volume(np.zeros((20, 20, 4), np.float32), np.eye(4), "/a/b/ct_0005.nii.gz")
    empty = _meta_volume(np.zeros((20, 20, 4), np.uint8), np.eye(4), "/a/b/ct_0005_lung.nii.gz")
    with pytest.raises(InputError, match="ct_0005_lung.nii.gz.*empty"):
        CropToLungd("image")({"image": image, "lung_mask": empty})
    other = _meta_volume(np.ones((20, 18, 4), np.uint8), np.eye(4), "/a/b/ct_0005_lung.nii.gz")
    with pytest.raises(InputError, match="ct_0005.nii.gz.*spatial shape"):
        CropToLungd("image")({"image": image, "lung_mask": other})
    with pytest.raises(KeyError, match="lung_mask"):
        CropToLungd("image")({"image": image})
    with pytest.raises(InputError, match="margin"):
        CropToLungd("image", margin=-1)
