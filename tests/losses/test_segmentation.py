"""CEMinusLogDiceLoss: L = CE - log(Dice) (seed 001 eq. 1-2) against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.losses import CEMinusLogDiceLoss


def _two_pixel_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One image of 2 pixels, 2 classes. Logits chosen so that softmax gives p(lung) = 0.8 and 0.4.

    Pixel 0 is lung (target 1) with p(lung) = 0.8, pixel 1 is background (target 0) with p(lung) = 0.4.
    """
    logit_08 = math.log(0.8 / 0.2)
    logit_04 = math.log(0.4 / 0.6)
    logits = torch.tensor([[[[0.0, 0.0]], [[logit_08, logit_04]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1, 0]]]])  # (1, 1, 1, 2)
    return logits, target


def test_hand_computed_two_pixel_case():
    logits, target = _two_pixel_case()
    # CE: mean of -log p(true class) = (-log 0.8 - log 0.6) / 2
    ce = (-math.log(0.8) - math.log(0.6)) / 2
    # lung class: TP = 0.8, FP = 0.4, FN = 0.2 -> Dice = 1.6 / (1.6 + 0.4 + 0.2) = 1.6 / 2.2
    dice = 1.6 / 2.2
    loss = CEMinusLogDiceLoss(smooth_nr=0.0, smooth_dr=0.0)(logits, target)
    assert loss.item() == pytest.approx(ce - math.log(dice), abs=1e-6)
    coefficients = CEMinusLogDiceLoss(smooth_nr=0.0, smooth_dr=0.0).dice_coefficients(logits, target)
    assert coefficients.tolist() == [[pytest.approx(dice, abs=1e-6)]]


def test_background_term_and_weights():
    logits, target = _two_pixel_case()
    # background class: p(bg) = 0.2, 0.6; target bg = 0, 1 -> TP = 0.6, FP = 0.2, FN = 0.4 -> Dice = 1.2 / 1.8
    dice_lung, dice_bg = 1.6 / 2.2, 1.2 / 1.8
    ce = (-math.log(0.8) - math.log(0.6)) / 2
    loss = CEMinusLogDiceLoss(include_background=True, smooth_nr=0.0, smooth_dr=0.0)(logits, target)
    assert loss.item() == pytest.approx(ce - (math.log(dice_lung) + math.log(dice_bg)) / 2, abs=1e-6)
    weighted = CEMinusLogDiceLoss(lambda_ce=2.0, lambda_dice=0.5, smooth_nr=0.0, smooth_dr=0.0)(logits, target)
    assert weighted.item() == pytest.approx(2 * ce - 0.5 * math.log(dice_lung), abs=1e-6)


def test_batch_pooling_differs_from_per_image_mean():
    logits, target = _two_pixel_case()
    # second image: all background predicted as lung with p = 0.5 (logits 0, 0); target has one lung pixel
    logits2 = torch.zeros(1, 2, 1, 2)
    target2 = torch.tensor([[[[0, 1]]]])
    batch_logits, batch_target = torch.cat([logits, logits2]), torch.cat([target, target2])
    # image 2, lung: TP = 0.5, FP = 0.5, FN = 0.5 -> Dice = 1 / 2
    per_image = CEMinusLogDiceLoss(smooth_nr=0.0, smooth_dr=0.0)
    ce = (-math.log(0.8) - math.log(0.6) - 2 * math.log(0.5)) / 4
    expected = ce - (math.log(1.6 / 2.2) + math.log(0.5)) / 2
    assert per_image(batch_logits, batch_target).item() == pytest.approx(expected, abs=1e-6)
    # pooled: TP = 1.3, FP = 0.9, FN = 0.7 -> Dice = 2.6 / 4.2
    pooled = CEMinusLogDiceLoss(smooth_nr=0.0, smooth_dr=0.0, batch=True)
    assert pooled(batch_logits, batch_target).item() == pytest.approx(ce - math.log(2.6 / 4.2), abs=1e-6)


def test_perfect_prediction_gives_zero_dice_term_and_gradients_flow():
    target = torch.tensor([[[[0, 1], [1, 0]]]])
    logits = torch.stack([(1 - target[:, 0]) * 40.0, target[:, 0] * 40.0], dim=1).float().requires_grad_()
    loss = CEMinusLogDiceLoss()(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    noisy = torch.zeros(1, 2, 2, 2, requires_grad=True)
    CEMinusLogDiceLoss()(noisy, target).backward()
    # raising the lung logit on lung pixels lowers the loss: negative gradient there
    assert (noisy.grad[0, 1][target[0, 0] == 1] < 0).all()


def test_target_without_channel_axis_and_bad_targets():
    logits, target = _two_pixel_case()
    loss = CEMinusLogDiceLoss()
    assert loss(logits, target[:, 0]).item() == pytest.approx(loss(logits, target).item())
    with pytest.raises(InputError, match=r"\[0, 2\)"):
        loss(logits, target + 2)
    with pytest.raises(InputError, match="shape"):
        loss(logits, torch.zeros(1, 1, 3, 3))
    with pytest.raises(InputError, match="C >= 2"):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
