"""Slice-wise Dice grouped by slice thickness (seed 003 Tables 4-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medxai.errors import InputError
from medxai.metrics import dice_table, slice_dice


def test_slice_dice_by_hand() -> None:
    label = np.zeros((4, 4, 3), dtype=np.int64)
    pred = np.zeros_like(label)
    label[0:2, 0:2, 0] = 1  # slice 0: 4 reference pixels
    pred[0:2, 0:1, 0] = 1  # 2 predicted, both inside: Dice 2*2 / (2 + 4) = 2/3
    label[1, 1, 1] = 3  # slice 1: classes are merged, prediction of another ventricle class still overlaps
    pred[1, 1, 1] = 2
    pred[3, 3, 1] = 1  # plus one false positive: Dice 2*1 / (2 + 1) = 2/3
    pred[0, 0, 2] = 1  # slice 2: no reference: undefined
    dice, area = slice_dice(pred, label)
    assert dice[0] == pytest.approx(2 / 3) and dice[1] == pytest.approx(2 / 3) and math.isnan(dice[2])
    assert area.tolist() == [4, 1, 0]
    # one class only: slice 1's class-3 reference is missed by the class-2 prediction
    dice3, _ = slice_dice(pred, label, classes=[3])
    assert dice3[1] == pytest.approx(0.0) and math.isnan(dice3[0])


def test_slice_dice_accepts_one_hot_and_channel_first_and_other_axes() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (5, 6, 7))
    pred = rng.integers(0, 3, (5, 6, 7))
    dice, _ = slice_dice(pred, label)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).permute(3, 0, 1, 2)
    np.testing.assert_allclose(slice_dice(one_hot, torch.as_tensor(label)[None])[0], dice)
    along_x, _ = slice_dice(pred, label, slice_axis=0)
    assert along_x.shape == (5,)
    p0, l0 = pred[2] > 0, label[2] > 0
    assert along_x[2] == pytest.approx(2 * (p0 & l0).sum() / (p0.sum() + l0.sum()))


def test_slice_dice_errors() -> None:
    with pytest.raises(InputError, match="differ in shape"):
        slice_dice(np.zeros((4, 4, 3)), np.zeros((4, 4, 2)))
    with pytest.raises(InputError, match="3D label volume"):
        slice_dice(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(InputError, match="integer class indices"):
        slice_dice(np.full((4, 4, 3), 0.5), np.zeros((4, 4, 3)))


def test_dice_table_pools_slices_not_volumes() -> None:
    table = dice_table(["thick", "thin", "thin", "thin", "thick"], [1.0, 0.5, float("nan"), 0.7, 0.8])
    assert list(table) == ["thick", "thin", "mixed"]
    assert table["thick"]["mean"] == pytest.approx(0.9) and table["thick"]["n_slices"] == 2
    assert table["thin"]["mean"] == pytest.approx(0.6) and table["thin"]["n_slices"] == 2
    assert table["mixed"]["mean"] == pytest.approx(3.0 / 4) and table["mixed"]["n_slices"] == 4
    assert dice_table(["thin"], [float("nan")])["thin"] == {"mean": None, "std": None, "n_slices": 0}
    with pytest.raises(InputError, match="2 groups for 1"):
        dice_table(["a", "b"], [1.0])
