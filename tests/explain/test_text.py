"""Lung zones (anatomy.py) and plain-language sentences (text.py) on constructed masks and maps.

Convention under test: in a frontal chest radiograph as displayed, and in radiological view, the patient's
right is on the image left.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medxai.errors import InputError
from medxai.explain.anatomy import lung_zones, region_shares
from medxai.explain.text import describe, describe_batch, describe_shares

H, W = 30, 40
RIGHT_ROWS, RIGHT_COLS = slice(3, 27), slice(4, 18)  # patient's right lung: image left; 24 rows -> thirds of 8
LEFT_ROWS, LEFT_COLS = slice(6, 27), slice(22, 36)  # left lung: image right; 21 rows -> thirds of 7


def _cxr_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[RIGHT_ROWS, RIGHT_COLS] = 1
    mask[LEFT_ROWS, LEFT_COLS] = 2
    return mask


def test_zones_thirds_and_peripheral_pixels_exactly():
    zones = lung_zones(_cxr_mask())
    assert zones.side[10, 5] == 1 and zones.side[10, 30] == 2 and zones.side[0, 0] == 0
    # right lung rows 3-26: upper 3-10, middle 11-18, lower 19-26
    assert [zones.zone[r, 10] for r in (3, 10, 11, 18, 19, 26)] == [1, 1, 2, 2, 3, 3]
    # left lung rows 6-26: upper 6-12, middle 13-19, lower 20-26
    assert [zones.zone[r, 30] for r in (6, 12, 13, 19, 20, 26)] == [1, 1, 2, 2, 3, 3]
    # peripheral = lateral third of the 14-pixel width: cols 4-8 (right lung), cols 31-35 (left lung)
    assert np.flatnonzero(zones.peripheral[15]).tolist() == [4, 5, 6, 7, 8, 31, 32, 33, 34, 35]


def test_map_in_one_zone_gives_exact_sentence_and_structure():
    saliency = np.zeros((H, W))
    saliency[20:27, LEFT_COLS] = 1.0
    result = describe(saliency, _cxr_mask(), "COVID-19", 0.93, "gradcam")
    assert result.sentence == "COVID-19 (probability 0.93). Grad-CAM points mainly to the lower zone of the left lung."
    info = result.as_dict()
    assert info["class_name"] == "COVID-19" and info["probability"] == 0.93 and info["method"] == "Grad-CAM"
    assert [(r["side"], r["zone"]) for r in info["regions"]] == [("left", "lower")]
    assert info["regions"][0]["share"] == pytest.approx(1.0)
    assert info["regions"][0]["peripheral_share"] == pytest.approx(5 / 14)
    assert info["outside_share"] == 0.0


def test_two_lower_zones_as_in_the_brief_example():
    saliency = np.zeros((H, W))
    saliency[20:27, LEFT_COLS] = 0.5 / (7 * 14)  # 50 % of the mass, left lower zone
    saliency[19:27, RIGHT_COLS] = 0.4 / (8 * 14)  # 40 %, right lower zone
    saliency[11:19, RIGHT_COLS] = 0.1 / (8 * 14)  # 10 %, right middle zone (not named)
    shares = region_shares(saliency, lung_zones(_cxr_mask()))
    assert [round(r["share"], 6) for r in shares["regions"][:3]] == [0.5, 0.4, 0.1]
    result = describe_shares(shares, "COVID-19", 0.93, "gradcam")
    assert result.sentence == (
        "COVID-19 (probability 0.93). Grad-CAM points mainly to the lower zone of the left lung and the lower "
        "zone of the right lung."
    )


def test_peripheral_whole_lung_outside_and_lrp_wording():
    mask = _cxr_mask()
    peripheral = np.zeros((H, W))
    peripheral[20:27, 31:36] = 1.0
    assert describe(peripheral, mask, "COVID-19", 0.5, "gradcam++", true_class="COVID-19").sentence == (
        "COVID-19 (probability 0.50, true class COVID-19). Grad-CAM++ points mainly to the peripheral lower zone "
        "of the left lung."
    )
    whole_left = (mask == 2).astype(float)
    assert describe(whole_left, mask, "COVID-19", 0.58, "gradcam").sentence.endswith(
        "Grad-CAM points mainly to the left lung."
    )
    outside = np.zeros((H, W))
    outside[0:2, :] = 1.0  # the neck: outside both lungs
    outside[10, 10] = 5.0
    result = describe(outside, mask, "Pneumonia", 0.7, "gradcam")
    assert result.sentence == "Pneumonia (probability 0.70). Grad-CAM points mainly outside the lungs."
    assert result.outside_share == pytest.approx(80 / 85)
    # LRP reports a relevance score, not a probability (seed 002, Fig. 4), and only positive relevance counts
    lrp = -np.ones((H, W))
    lrp[3:11, RIGHT_COLS] = 2.0
    result = describe(lrp, mask, "COVID-19", 10.5, "lrp")
    assert result.sentence == "COVID-19 (relevance score 10.5). LRP points mainly to the upper zone of the right lung."
    assert result.probability is None and result.score_kind == "relevance score"


def test_partly_outside_note_and_empty_map():
    mask = _cxr_mask()
    saliency = np.zeros((H, W))
    saliency[3:11, RIGHT_COLS] = 0.6 / (8 * 14)
    saliency[0, :] = 0.4 / W
    assert describe(saliency, mask, "COVID-19", 0.9, "cam").sentence == (
        "COVID-19 (probability 0.90). CAM points mainly to the upper zone of the right lung, and partly outside "
        "the lungs."
    )
    assert describe(np.zeros((H, W)), mask, "Normal", 0.8, "gradcam").sentence == (
        "Normal (probability 0.80). Grad-CAM highlights no region (the map has no positive values)."
    )


def test_left_right_convention_binary_mask_and_mirrored_image():
    binary = _cxr_mask() > 0
    on_image_left = np.zeros((H, W))
    on_image_left[3:27, 4:18] = 1.0
    # the lung on the image left of a frontal radiograph is the patient's right lung
    assert "the right lung" in describe(on_image_left, binary, "COVID-19", 0.9, "gradcam").sentence
    mirrored = describe(
        on_image_left, binary, "COVID-19", 0.9, "gradcam", mask_kwargs={"patient_right_on_image_left": False}
    )
    assert "the left lung" in mirrored.sentence
    # the binary split at the midline equals the labelled mask here
    np.testing.assert_array_equal(lung_zones(binary).side, lung_zones(_cxr_mask()).side)


def test_3d_ct_orientation_from_affine():
    # (X, Y, Z) volume; with an RAS affine, higher x is the patient's right and higher z is cranial
    mask = np.zeros((20, 6, 9), dtype=np.uint8)
    mask[12:18, 1:5, 0:9] = 1  # high x
    mask[2:8, 1:5, 0:9] = 1  # low x
    saliency = np.zeros(mask.shape)
    saliency[12:18, 1:5, 6:9] = 1.0  # high x, top third of z
    ras = np.diag([0.7, 0.7, 2.5, 1.0])
    result = describe(saliency, mask, "COVID-19", 0.8, "gradcam", mask_kwargs={"affine": ras})
    assert result.sentence.endswith("points mainly to the upper zone of the right lung.")
    lps = np.diag([-0.7, -0.7, 2.5, 1.0])  # same array stored LPS: high x is now the patient's left
    assert describe(saliency, mask, "COVID-19", 0.8, "gradcam", mask_kwargs={"affine": lps}).sentence.endswith(
        "upper zone of the left lung."
    )
    lis = np.diag([-0.7, -0.7, -2.5, 1.0])  # z increasing to inferior: the top of z becomes the lower zone
    assert describe(saliency, mask, "COVID-19", 0.8, "gradcam", mask_kwargs={"affine": lis}).sentence.endswith(
        "lower zone of the left lung."
    )
    # axcodes string equals the affine; lateral third in 3D: for the right lung (x 12-17) x 16-17
    zones = lung_zones(mask, axcodes="RAS")
    np.testing.assert_array_equal(zones.side, lung_zones(mask, affine=ras).side)
    assert np.flatnonzero(zones.peripheral[:, 2, 4]).tolist() == [2, 3, 16, 17]


def test_describe_batch_equals_single_calls():
    mask = _cxr_mask()
    maps = torch.zeros(2, 1, H, W)
    maps[0, 0, 20:27, LEFT_COLS] = 1.0
    maps[1, 0, 3:11, RIGHT_COLS] = 1.0
    masks = torch.from_numpy(np.stack([mask, mask]))
    probabilities = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    results = describe_batch(maps, masks, probabilities, ["Normal", "Pneumonia", "COVID-19"], "gradcam")
    assert [r.sentence for r in results] == [
        describe(maps[0, 0], mask, "COVID-19", 0.7, "gradcam").sentence,
        describe(maps[1, 0], mask, "Normal", 0.6, "gradcam").sentence,
    ]
    forced = describe_batch(maps, masks, probabilities, ["Normal", "Pneumonia", "COVID-19"], "gradcam", targets=[2, 2])
    assert forced[1].class_name == "COVID-19" and forced[1].score == pytest.approx(0.1)


def test_errors():
    mask = _cxr_mask()
    with pytest.raises(InputError, match="differs from the lung mask shape"):
        describe(np.zeros((H, W + 1)), mask, "COVID-19", 0.5, "gradcam")
    with pytest.raises(InputError, match=r"must be in \[0, 1\], got 1.5"):
        describe(np.zeros((H, W)), mask, "COVID-19", 1.5, "gradcam")
    other_labels = np.where(mask == 1, 3, np.where(mask == 2, 7, 0))
    with pytest.raises(InputError, match=r"values \[3, 7\]; pass labelled=True or labelled=False"):
        lung_zones(other_labels)
    with pytest.raises(InputError, match="one of R/L, A/P and S/I"):
        lung_zones(np.ones((3, 3, 3)), axcodes="RRS")


def test_real_cxr_masks_patient_right_on_image_left(shared_data):
    """On real radiologist-labelled masks (value 2 = right lung there), the right lung lies on the image left,
    and splitting the binary mask at the midline reproduces the labels."""
    from PIL import Image

    folder = shared_data / "cxr_ieee8023_lungmasks"
    if not folder.is_dir():
        pytest.skip("cxr_ieee8023_lungmasks not present")
    with open(folder / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["lung_lr_mask_gb"]]
    checked = 0
    for row in rows[:20]:
        labels = np.asarray(Image.open(folder / row["lung_lr_mask_gb"]))
        if not ((labels == 1).any() and (labels == 2).any()):
            continue
        zones = lung_zones(labels, right_label=2, left_label=1)
        right_cols = np.nonzero(zones.side == 1)[1]
        left_cols = np.nonzero(zones.side == 2)[1]
        assert right_cols.mean() < left_cols.mean()
        lung = labels > 0
        agreement = (lung_zones(lung).side[lung] == zones.side[lung]).mean()
        assert agreement > 0.99
        checked += 1
    assert checked >= 10
