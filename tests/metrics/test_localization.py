"""Localisation metrics on hand-drawn maps and masks, 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from medxai.errors import InputError
from medxai.metrics.localization import (
    binarize_maps,
    energy_pointing_game,
    overlap_scores,
    overlap_sweep,
    pointing_game,
    sample_mean,
)


def square_mask(size: int = 10, rows: slice = slice(2, 5), cols: slice = slice(2, 5)) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[0, 0, rows, cols] = 1
    return mask


# --- pointing game ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(10, 10), (6, 8, 8)])
def test_map_that_is_the_mask_scores_one(spatial):
    mask = torch.zeros(1, 1, *spatial)
    mask[(0, 0, *[slice(2, 5)] * len(spatial))] = 1
    assert pointing_game(mask, mask).tolist() == [1.0]
    assert energy_pointing_game(mask, mask).tolist() == [1.0]


def test_pointing_game_tolerance_in_pixels():
    mask = square_mask()  # rows and columns 2..4
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 3, 6] = 1.0  # 2 px right of the mask edge (3, 4)
    maps[1, 0, 6, 6] = 1.0  # diagonal from the corner (4, 4): sqrt(8) = 2.83 px
    masks = mask.expand(2, 1, 10, 10)
    assert pointing_game(maps, masks, tolerance=0).tolist() == [0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [1.0, 0.0]
    assert pointing_game(maps, masks, tolerance=math.sqrt(8)).tolist() == [1.0, 1.0]


def test_pointing_game_3d_tolerance_in_mm_with_spacing():
    mask = torch.zeros(1, 1, 6, 6, 6)
    mask[0, 0, 1, 2:4, 2:4] = 1
    heat = torch.zeros(1, 1, 6, 6, 6)
    heat[0, 0, 3, 2, 2] = 5.0  # 2 slices away; slices 2.5 mm apart -> 5 mm
    assert pointing_game(heat, mask, tolerance=4.9, spacing=(2.5, 0.7, 0.7)).item() == 0.0
    assert pointing_game(heat, mask, tolerance=5.0, spacing=(2.5, 0.7, 0.7)).item() == 1.0
    assert pointing_game(heat, mask, tolerance=2.0).item() == 1.0  # isotropic voxels: 2 voxels


def test_pointing_game_ties_and_empty_masks():
    mask = square_mask()
    flat = torch.ones(1, 1, 10, 10)  # every pixel is a maximum: a flat map cannot hit by chance
    assert pointing_game(flat, mask).item() == 0.0
    two_peaks = torch.zeros(1, 1, 10, 10)
    two_peaks[0, 0, 3, 3] = two_peaks[0, 0, 8, 8] = 1.0  # one peak inside, an equal one far outside
    assert pointing_game(two_peaks, mask).item() == 0.0
    maps = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    maps[0, 0, 3, 3] = maps[1, 0, 9, 9] = 2.0
    masks = torch.cat([mask, mask, torch.zeros(1, 1, 10, 10)])
    hits = pointing_game(maps, masks)
    assert hits[:2].tolist() == [1.0, 0.0] and math.isnan(hits[2].item())
    assert sample_mean(hits) == pytest.approx(0.5)  # the empty-mask sample is skipped


# --- energy-based pointing game -----------------------------------------------------------------------


def test_energy_share_counts_positive_mass_only():
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, :, :5] = 1
    heat = torch.zeros(1, 1, 10, 10)
    heat[0, 0, 0, 0], heat[0, 0, 5, 2] = 1.0, 2.0  # 3 units inside
    heat[0, 0, 0, 9], heat[0, 0, 9, 7] = 3.0, 4.0  # 7 units outside
    heat[0, 0, 4, 4] = -5.0  # negative evidence inside the mask is not energy
    assert energy_pointing_game(heat, mask).item() == pytest.approx(0.3)
    assert energy_pointing_game(heat.numpy(), mask.numpy().astype(bool)).item() == pytest.approx(0.3)


def test_energy_share_3d_and_undefined_cases():
    mask = torch.zeros(3, 1, 4, 4, 4)
    mask[:2, :, :2] = 1  # front half of the volume
    heat = torch.zeros(3, 1, 4, 4, 4)
    heat[0] = 1.0  # uniform: half the mass in front
    heat[1] = -1.0  # no positive mass
    heat[2, :, 0] = 1.0
    share = energy_pointing_game(heat, mask)
    assert share[0].item() == pytest.approx(0.5)
    assert math.isnan(share[1].item()) and math.isnan(share[2].item())  # no energy; empty mask


# --- IoU and Dice -------------------------------------------------------------------------------------


def test_iou_dice_of_offset_squares():
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 0:4, 0:4] = 1.0  # 16 px
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 2:6, 2:6] = 1  # 16 px, overlap 2x2 = 4 px
    for threshold in ("otsu", 0.5):
        iou, dice = overlap_scores(heat, mask, threshold)
        assert iou.item() == pytest.approx(4 / 28)
        assert dice.item() == pytest.approx(8 / 32)


def test_iou_dice_3d_cubes_and_empty_mask():
    heat = torch.zeros(2, 1, 6, 6, 6)
    heat[:, :, 0:2, 0:2, 0:2] = 3.0  # 8 voxels
    mask = torch.zeros(2, 1, 6, 6, 6)
    mask[0, :, 0:2, 0:2, 0:4] = 1  # 16 voxels containing the cube
    iou, dice = overlap_scores(heat, mask, threshold=1.0)
    assert iou[0].item() == pytest.approx(8 / 16)
    assert dice[0].item() == pytest.approx(16 / 24)
    assert math.isnan(iou[1].item()) and math.isnan(dice[1].item())


def test_otsu_threshold_is_scikit_image_per_sample():
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 1, 12, 12, generator=generator) ** torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    binary = binarize_maps(maps, "otsu")
    for i in range(2):
        values = maps[i, 0].double().numpy()
        np.testing.assert_array_equal(binary[i, 0].numpy(), values > threshold_otsu(values))
    assert not binarize_maps(torch.full((1, 1, 4, 4), 0.3), "otsu").any()  # constant map: nothing above it


def test_threshold_sweep_curve_and_best():
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 0:6, 0:6] = 0.3  # 36 px
    heat[0, 0, 1:5, 1:5] = 0.8  # 16 px inside
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 1:5, 1:5] = 1
    sweep = overlap_sweep(heat, mask, thresholds=[0.2, 0.5, 0.9])
    torch.testing.assert_close(sweep.iou[0], torch.tensor([16 / 36, 1.0, 0.0]))
    torch.testing.assert_close(sweep.dice[0], torch.tensor([32 / 52, 1.0, 0.0]))
    assert sweep.best_iou.item() == 1.0 and sweep.best_iou_threshold.item() == pytest.approx(0.5)
    assert sweep.best_dice.item() == 1.0 and sweep.best_dice_threshold.item() == pytest.approx(0.5)


@pytest.mark.parametrize("spatial", [(9, 9), (5, 6, 7)])
def test_batched_equals_per_sample(spatial):
    generator = torch.Generator().manual_seed(4)
    maps = torch.randn(4, 1, *spatial, generator=generator)
    masks = torch.rand(4, 1, *spatial, generator=generator) > 0.6
    batched = {
        "pointing": pointing_game(maps, masks, tolerance=1.5),
        "energy": energy_pointing_game(maps, masks),
        "otsu": torch.stack(overlap_scores(maps, masks)),
        "sweep": overlap_sweep(maps, masks, [-0.5, 0.0, 0.5]).dice,
    }
    for i in range(4):
        m, k = maps[i : i + 1], masks[i : i + 1]
        assert pointing_game(m, k, tolerance=1.5)[0] == batched["pointing"][i]
        torch.testing.assert_close(energy_pointing_game(m, k)[0], batched["energy"][i])
        torch.testing.assert_close(torch.stack(overlap_scores(m, k))[:, 0], batched["otsu"][:, i])
        torch.testing.assert_close(overlap_sweep(m, k, [-0.5, 0.0, 0.5]).dice[0], batched["sweep"][i])


def test_input_errors_name_the_problem():
    with pytest.raises(InputError, match=r"masks must have the maps' shape \(1, 1, 4, 4\)"):
        pointing_game(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
    with pytest.raises(InputError, match="binary"):
        energy_pointing_game(torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(InputError, match=r"\(B, 1, H, W\)"):
        overlap_scores(torch.rand(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    with pytest.raises(InputError, match="NaN"):
        pointing_game(torch.full((1, 1, 4, 4), float("nan")), torch.ones(1, 1, 4, 4))
    with pytest.raises(InputError, match="spacing needs 2 values"):
        pointing_game(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4), spacing=(1.0, 1.0, 1.0))
