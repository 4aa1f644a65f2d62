"""Seed 003 eq. 16-17: the divergence of thin-slice predictions from the uniform distribution."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.losses import UniformDivergenceLoss, uniform_divergence_loss


def _probs(values: list[list[float]]) -> torch.Tensor:
    """Pixels given as rows of class probabilities -> (1, C, 1, N)."""
    return torch.tensor(values, dtype=torch.float64).T.reshape(1, len(values[0]), 1, len(values))


def test_pearson_by_hand() -> None:
    # two pixels, two classes: -(C / HW) * sum p^2 = -(2 / 2) * (0.64 + 0.04 + 0.25 + 0.25) = -1.18
    p = _probs([[0.8, 0.2], [0.5, 0.5]])
    assert uniform_divergence_loss(p, "pearson").item() == pytest.approx(-1.18, abs=1e-12)


def test_pearson_equals_eq16_with_chi_square_f_minus_one() -> None:
    p = torch.softmax(torch.randn(2, 4, 3, 5, dtype=torch.float64), dim=1)
    c, hw = 4, 15
    eq16 = -((c * p) ** 2 - 1).sum(dim=(1, 2, 3)) / (hw * c)
    assert uniform_divergence_loss(p, "pearson").item() == pytest.approx(eq16.mean().item() - 1.0, abs=1e-12)


def test_kl_by_hand_is_entropy_minus_log_c() -> None:
    # one pixel (0.8, 0.2): -(1 / (HW C)) sum C p log(C p) = -(0.8 log 1.6 + 0.2 log 0.4)
    p = _probs([[0.8, 0.2]])
    expected = -(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    assert uniform_divergence_loss(p, "kl").item() == pytest.approx(expected, abs=1e-12)
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert expected == pytest.approx(entropy - math.log(2), abs=1e-12)


@pytest.mark.parametrize("divergence", ["pearson", "kl"])
def test_bounds_one_hot_and_uniform(divergence: str) -> None:
    loss = UniformDivergenceLoss(divergence)
    one_hot, uniform = loss.bounds(4)
    assert uniform_divergence_loss(torch.full((1, 4, 2, 2), 0.25), divergence).item() == pytest.approx(uniform, abs=1e-6)
    hot = torch.zeros(1, 4, 2, 2)
    hot[:, 2] = 1.0
    assert uniform_divergence_loss(hot, divergence).item() == pytest.approx(one_hot, abs=1e-6)
    # confident predictions have the lower loss: minimising L_T moves away from uniform
    assert one_hot < uniform


def test_pearson_gradient_is_linear_in_p_and_kl_is_not() -> None:
    """The paper's argument: d L_T / d p = -2 C p / HW for Pearson (constant second derivative)."""
    p = _probs([[0.05, 0.95], [0.5, 0.5], [0.9, 0.1]]).requires_grad_(True)
    uniform_divergence_loss(p, "pearson").backward()
    assert torch.allclose(p.grad, -2 * 2 * p.detach() / 3, atol=1e-12)
    q = p.detach().clone().requires_grad_(True)
    uniform_divergence_loss(q, "kl").backward()
    assert torch.allclose(q.grad, -(torch.log(2 * q.detach()) + 1) / 3, atol=1e-12)
    # the hard pixel (p = 0.05) gets a larger KL gradient than p = 0.5 (0.434 vs 0.333, unbounded as p -> 0),
    # but a Pearson gradient 10 times smaller: the gradient is proportional to p
    assert abs(q.grad[0, 0, 0, 0]) > 1.25 * abs(q.grad[0, 0, 0, 1])
    assert abs(p.grad[0, 0, 0, 0]).item() == pytest.approx(abs(p.grad[0, 0, 0, 1]).item() / 10, rel=1e-9)


def test_module_applies_softmax_and_lowers_entropy_when_minimised() -> None:
    torch.manual_seed(0)
    logits = (0.1 * torch.randn(2, 3, 4, 4)).requires_grad_(True)
    loss = UniformDivergenceLoss("pearson")
    assert loss(logits).item() == pytest.approx(uniform_divergence_loss(torch.softmax(logits, 1), "pearson").item())
    optimizer = torch.optim.SGD([logits], lr=5.0)
    start = loss(logits).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss(logits).backward()
        optimizer.step()
    assert loss(logits).item() < start - 0.5
    assert torch.softmax(logits, 1).amax(1).min() > 0.75


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="divergence"):
        UniformDivergenceLoss("js")
    with pytest.raises(InputError, match="C >= 2"):
        uniform_divergence_loss(torch.ones(1, 1, 4, 4), "pearson")
    with pytest.raises(InputError, match="logits"):
        UniformDivergenceLoss()(torch.ones(4, 3))
