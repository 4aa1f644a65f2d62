"""Boxes from maps: exact boxes on constructed blobs, thresholds, 3D, and world coordinates by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medxai.errors import InputError
from medxai.explain.boxes import box_to_world, boxes_from_map, boxes_from_maps, threshold_map


def _two_blobs() -> np.ndarray:
    saliency = np.zeros((12, 16))
    saliency[2:5, 3:7] = 0.8  # rows 2-4, cols 3-6: 12 px
    saliency[3, 4] = 1.0
    saliency[7:11, 10:12] = 0.6  # rows 7-10, cols 10-11: 8 px
    saliency[0, 15] = 0.2  # weak speckle below half of the maximum
    return saliency


def test_two_blobs_give_exact_boxes_and_scores():
    boxes = boxes_from_map(_two_blobs(), threshold=0.5, mode="relative")
    assert [(b["min"], b["max"]) for b in boxes] == [([2, 3], [4, 6]), ([7, 10], [10, 11])]
    assert [b["num_voxels"] for b in boxes] == [12, 8]
    assert boxes[0]["score_max"] == pytest.approx(1.0)
    assert boxes[0]["score_mean"] == pytest.approx((11 * 0.8 + 1.0) / 12)
    assert boxes[1]["score_max"] == pytest.approx(0.6) and boxes[1]["score_mean"] == pytest.approx(0.6)
    assert boxes[0]["centroid"] == pytest.approx([3.0, 4.5])
    assert "min_mm" not in boxes[0]  # no affine, no world coordinates


def test_threshold_modes():
    saliency = _two_blobs()
    # absolute 0.7 keeps only the first blob
    assert [b["min"] for b in boxes_from_map(saliency, threshold=0.7, mode="absolute")] == [[2, 3]]
    # absolute 0.1 also keeps the speckle, which min_size removes
    assert len(boxes_from_map(saliency, threshold=0.1, mode="absolute")) == 3
    assert len(boxes_from_map(saliency, threshold=0.1, mode="absolute", min_size=2)) == 2
    # Otsu on a two-level map separates exactly the two levels
    mask, value = threshold_map(np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), mode="otsu")
    assert 0.0 <= value < 1.0
    np.testing.assert_array_equal(mask, [[False, False, True], [False, True, True]])
    assert len(boxes_from_map(saliency, mode="otsu")) >= 2
    # nothing salient: no boxes, no error
    assert boxes_from_map(np.zeros((5, 5))) == []
    assert boxes_from_map(-np.ones((5, 5))) == []
    assert boxes_from_map(np.full((5, 5), 3.0), mode="otsu") == []


def test_connectivity_decides_whether_diagonal_pixels_join():
    saliency = np.zeros((4, 4))
    saliency[0, 0] = saliency[1, 1] = 1.0
    assert len(boxes_from_map(saliency)) == 1  # 8-connectivity by default
    assert len(boxes_from_map(saliency, connectivity=1)) == 2


def test_3d_blob_and_world_coordinates_by_hand():
    saliency = np.zeros((10, 12, 8), dtype=np.float32)
    saliency[1:3, 2:6, 3:4] = 2.0  # voxels i 1-2, j 2-5, k 3: 8 voxels
    affine = np.array(
        [[2.0, 0.0, 0.0, 10.0], [0.0, 3.0, 0.0, 20.0], [0.0, 0.0, 4.0, 30.0], [0.0, 0.0, 0.0, 1.0]]
    )
    (box,) = boxes_from_map(saliency, affine=affine)
    assert box["min"] == [1, 2, 3] and box["max"] == [2, 5, 3]
    # outer voxel edges: x 10 + 2 * (0.5 .. 2.5) = 11 .. 15, y 20 + 3 * (1.5 .. 5.5) = 24.5 .. 36.5,
    # z 30 + 4 * (2.5 .. 3.5) = 40 .. 44
    assert box["min_mm"] == pytest.approx([11.0, 24.5, 40.0])
    assert box["max_mm"] == pytest.approx([15.0, 36.5, 44.0])
    assert box["centroid_mm"] == pytest.approx([10 + 2 * 1.5, 20 + 3 * 3.5, 30 + 4 * 3.0])
    assert box["volume_mm3"] == pytest.approx(8 * 2 * 3 * 4)


def test_flipped_affine_gives_ordered_world_bounds():
    # LPS-like flip of x and y: world = -index; bounds must still be (min, max)
    lo, hi = box_to_world([1, 2, 0], [3, 4, 0], np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert lo == pytest.approx([-3.5, -4.5, -0.5]) and hi == pytest.approx([-0.5, -1.5, 0.5])


def test_2d_affine_3x3_and_area():
    saliency = np.zeros((6, 6))
    saliency[1:3, 1:4] = 1.0
    (box,) = boxes_from_map(saliency, affine=np.array([[0.5, 0, 100.0], [0, 0.25, 50.0], [0, 0, 1]]))
    assert box["min_mm"] == pytest.approx([100.25, 50.125]) and box["max_mm"] == pytest.approx([101.25, 50.875])
    assert box["area_mm2"] == pytest.approx(6 * 0.5 * 0.25)


def test_batched_maps_and_metatensor_affines():
    maps = torch.zeros(2, 1, 8, 8, 8)
    maps[0, 0, 1:3, 1:3, 1:3] = 1.0
    maps[1, 0, 5:8, 0:2, 4:6] = 3.0
    per_sample = [boxes_from_map(maps[b, 0]) for b in range(2)]
    assert boxes_from_maps(maps) == per_sample
    assert per_sample[1][0]["min"] == [5, 0, 4] and per_sample[1][0]["max"] == [7, 1, 5]
    affines = torch.stack([torch.eye(4), torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))])
    meta = MetaTensor(maps, affine=affines)
    boxes = boxes_from_maps(meta)
    assert boxes[0][0]["volume_mm3"] == pytest.approx(8.0) and boxes[1][0]["volume_mm3"] == pytest.approx(12 * 8.0)


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="relative threshold"):
        boxes_from_map(np.ones((3, 3)), threshold=1.5)
    with pytest.raises(InputError, match="unknown threshold mode"):
        boxes_from_map(np.ones((3, 3)), mode="mean")
    with pytest.raises(InputError, match="2D .* or 3D"):
        boxes_from_map(np.ones(3))
    with pytest.raises(InputError, match="NaN"):
        boxes_from_map(np.full((3, 3), np.nan))
    with pytest.raises(InputError, match=r"\(B, 1, H, W\)"):
        boxes_from_maps(torch.ones(2, 3, 4, 4))
