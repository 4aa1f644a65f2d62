"""Fusion loss of CXRNet (seed 001 eq. 5-6): CE of the input classifier + CE of the reconstruction classifier."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.losses import FusionLoss


def _ce(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], by hand (eq. 6 with a one-hot t)."""
    return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
LOGITS_REC = [[0.0, 1.0, 0.0], [-2.0, 3.0, 1.0]]
LABELS = [0, 2]


def _details() -> dict[str, torch.Tensor]:
    return {
        "logits": torch.tensor(LOGITS),
        "logits_reconstruction": torch.tensor(LOGITS_REC),
        "reconstruction": torch.zeros(2, 1, 4, 4),
    }


def test_fusion_loss_is_the_sum_of_two_hand_computed_cross_entropies():
    ce1 = sum(_ce(l, t) for l, t in zip(LOGITS, LABELS)) / 2
    ce2 = sum(_ce(l, t) for l, t in zip(LOGITS_REC, LABELS)) / 2
    loss = FusionLoss()
    for target in (torch.tensor(LABELS), torch.tensor([[0], [2]]), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])):
        terms = loss.terms(_details(), target)
        assert terms["ce_input"].item() == pytest.approx(ce1, rel=1e-6)
        assert terms["ce_reconstruction"].item() == pytest.approx(ce2, rel=1e-6)
        assert loss(_details(), target).item() == pytest.approx(ce1 + ce2, rel=1e-6)
    # the hand values themselves: (0.170 + ln 3) / 2 and (1.551 + 2.133) / 2
    assert ce1 == pytest.approx(0.6342, abs=1e-4) and ce2 == pytest.approx(1.8421, abs=1e-4)


def test_weights_and_class_weights():
    ce1 = sum(_ce(l, t) for l, t in zip(LOGITS, LABELS)) / 2
    ce2 = sum(_ce(l, t) for l, t in zip(LOGITS_REC, LABELS)) / 2
    assert FusionLoss(weights=(1.0, 0.5))(_details(), torch.tensor(LABELS)).item() == pytest.approx(ce1 + 0.5 * ce2)
    # class weights: a weighted mean over the batch, sum(w_t * ce) / sum(w_t)
    w = [1.0, 1.0, 3.0]
    weighted = (_ce(LOGITS[0], 0) + 3 * _ce(LOGITS[1], 2)) / 4 + (_ce(LOGITS_REC[0], 0) + 3 * _ce(LOGITS_REC[1], 2)) / 4
    assert FusionLoss(class_weight=w)(_details(), torch.tensor(LABELS)).item() == pytest.approx(weighted, rel=1e-6)


def test_gradients_reach_both_logits():
    details = {k: v.clone().requires_grad_(True) for k, v in _details().items() if k != "reconstruction"}
    FusionLoss()(details, torch.tensor(LABELS)).backward()
    for key in ("logits", "logits_reconstruction"):
        probs = details[key].detach().softmax(1)
        expected = (probs - torch.nn.functional.one_hot(torch.tensor(LABELS), 3)) / 2  # d CE / d logits
        torch.testing.assert_close(details[key].grad, expected)


def test_bad_inputs_are_named():
    loss = FusionLoss()
    with pytest.raises(InputError, match=r"missing \['logits_reconstruction'\].*return_details=True"):
        loss({"logits": torch.zeros(2, 3)}, torch.tensor(LABELS))
    with pytest.raises(InputError, match="missing"):
        loss(torch.zeros(2, 3), torch.tensor(LABELS))
    with pytest.raises(InputError, match=r"class indices must lie in \[0, 2\].*to 3"):
        loss(_details(), torch.tensor([0, 3]))
    with pytest.raises(InputError, match=r"got shape \[3\]"):
        loss(_details(), torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="weights must be two non-negative"):
        FusionLoss(weights=(1.0, -1.0))
