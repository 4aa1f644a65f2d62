"""MIL losses: patient BCE (eq. 7), noisy slice-label BCE (eq. 10-11), total (eq. 12), and the slice-level baseline."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.losses import MILLoss, SliceLevelLoss, one_hot_targets
from medxai.networks import CTMILNet

L3 = math.log(3.0)


def _details() -> dict[str, torch.Tensor]:
    """2 patients x 4 slices x 2 classes with hand-picked numbers."""
    patient_logits = torch.tensor([[0.0, L3], [math.log(4.0), -math.log(4.0)]])  # probs 0.5, 0.75 / 0.8, 0.2
    slice_scores = torch.tensor(
        [
            [[0.0, L3], [0.0, L3], [0.0, -L3], [0.0, -L3]],  # sigmoid: 0.5 | 0.75, 0.75, 0.25, 0.25
            [[L3, -L3]] * 4,  # 0.75 | 0.25
        ]
    )
    q = torch.tensor([[0.9, 0.2], [0.1, 0.8]])  # P(z=1) = 0.1 + 0.7 P(y=1)
    return {
        "patient_logits": patient_logits,
        "slice_scores": slice_scores,
        "transition": q.expand(2, 4, 2, 2, 2).clone(),
    }


LABELS = torch.tensor([1, 0])  # one-hot [[0, 1], [1, 0]]
# eq. 7 per patient, summed over c: -log(1 - 0.5) - log 0.75 and -log 0.8 - log(1 - 0.2)
L_CLS = ((math.log(2.0) - math.log(0.75)) + (-2.0 * math.log(0.8))) / 2.0
# eq. 11: P(z=1) = 0.45 (p=.5), 0.625 (p=.75), 0.275 (p=.25); mean over the 8 slices of the sum over c
L_NOISY = (
    4 * -math.log(1 - 0.45) + 2 * -math.log(0.625) + 2 * -math.log(0.275)  # patient 1, label c = 1
    + 4 * -math.log(0.625) + 4 * -math.log(1 - 0.275)  # patient 2, label c = 0
) / 8.0  # fmt: skip


def test_hand_computed_parts_and_total():
    loss_fn = MILLoss(lambda_noisy=0.5)
    total = loss_fn(_details(), LABELS)
    assert loss_fn.last_cls.item() == pytest.approx(L_CLS, rel=1e-6)
    assert loss_fn.last_noisy.item() == pytest.approx(L_NOISY, rel=1e-6)
    assert total.item() == pytest.approx(L_CLS + 0.5 * L_NOISY, rel=1e-6)  # eq. 12
    assert loss_fn.last_parts == pytest.approx({"loss": total.item(), "loss_cls": L_CLS, "loss_noisy": L_NOISY})


def test_classification_part_matches_torch_bce_on_the_patient_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(6, 2) * 3
    labels = torch.randint(0, 2, (6,))
    targets = torch.nn.functional.one_hot(labels, 2).float()
    reference = torch.nn.BCELoss(reduction="sum")(torch.sigmoid(logits), targets) / 6
    torch.testing.assert_close(MILLoss(lambda_noisy=0.0)(logits, labels), reference)


def test_lambda_zero_is_the_classification_loss_and_label_formats_agree():
    details = _details()
    zero = MILLoss(lambda_noisy=0.0)
    assert zero(details, LABELS).item() == pytest.approx(L_CLS, rel=1e-6)
    assert zero(details["patient_logits"], LABELS).item() == pytest.approx(L_CLS, rel=1e-6)
    loss_fn = MILLoss(lambda_noisy=1e-4)
    expected = loss_fn(details, LABELS)
    one_hot = torch.tensor([[0, 1], [1, 0]])
    for labels in (LABELS.view(2, 1), LABELS.float(), one_hot, one_hot.float()):
        torch.testing.assert_close(loss_fn(details, labels), expected)


def test_gradient_reaches_the_transition_head_only_through_the_noisy_term():
    torch.manual_seed(0)
    net = CTMILNet("tiny", section_length=4, k=2, dropout=0.0, return_details=True)
    x = torch.randn(2, 1, 16, 16, 6)
    MILLoss(lambda_noisy=1e-4)(net(x), LABELS).backward()
    grad = net.ncm.transition.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert net.trunk.conv1.weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    MILLoss(lambda_noisy=0.0)(net(x), LABELS).backward()
    assert net.ncm.transition.weight.grad is None or net.ncm.transition.weight.grad.abs().sum() == 0


def test_errors_name_the_problem():
    details = _details()
    with pytest.raises(InputError, match="needs 'transition'"):
        MILLoss(1e-4)({k: v for k, v in details.items() if k != "transition"}, LABELS)
    with pytest.raises(InputError, match="return_details=True"):
        MILLoss(1e-4)(details["patient_logits"], LABELS)
    with pytest.raises(InputError, match=r"indices must lie in \[0, 1\] for 2 classes, got \[0, 2\]"):
        MILLoss(0.0)(details, torch.tensor([2, 0]))
    with pytest.raises(InputError, match="no 'patient_logits'"):
        MILLoss(0.0)({"slice_scores": details["slice_scores"]}, LABELS)
    with pytest.raises(InputError, match="lambda_noisy must be >= 0"):
        MILLoss(-1.0)


def test_one_hot_targets_single_class():
    torch.testing.assert_close(one_hot_targets(torch.tensor([1, 0, 1]), 1), torch.tensor([[1.0], [0.0], [1.0]]))


def test_slice_level_loss_by_hand():
    details = _details()
    # every slice gets its patient's label: slice probs (0.5, 0.75) x2, (0.5, 0.25) x2 with y = (0, 1);
    # (0.75, 0.25) x4 with y = (1, 0)
    expected = (
        2 * (math.log(2) - math.log(0.75)) + 2 * (math.log(2) - math.log(0.25)) + 4 * (-2 * math.log(0.75))
    ) / 8
    loss_fn = SliceLevelLoss()
    assert loss_fn(details, LABELS).item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn(details["slice_scores"], LABELS).item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn.last_parts["loss"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InputError, match=r"slice scores must be \(B, D, C\)"):
        loss_fn(details["patient_logits"], LABELS)
