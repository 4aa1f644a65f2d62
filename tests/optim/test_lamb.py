"""LAMB via timm with seed 004's defaults, and seed 004's step schedule (sec. 5.2)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from timm.optim import Lamb

from medxai.errors import InputError
from medxai.optim import lamb, step_schedule


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.linspace(-1, 1, 20).reshape(5, 4)
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0]])
    optimizer.zero_grad()
    nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    optimizer.step()


def test_factory_is_timms_lamb_with_the_paper_defaults():
    optimizer = lamb(_tiny_model().parameters())
    assert type(optimizer) is Lamb
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["weight_decay"] == 1.0


def test_one_step_equals_timms_lamb_built_directly():
    ours, theirs = _tiny_model(), _tiny_model()
    kwargs = {"lr": 1e-2, "weight_decay": 0.5, "betas": (0.8, 0.99), "max_grad_norm": None}
    _one_step(ours, lamb(ours.parameters(), **kwargs))
    _one_step(theirs, Lamb(theirs.parameters(), **kwargs))
    start = _tiny_model()
    for a, b, s in zip(ours.parameters(), theirs.parameters(), start.parameters()):
        assert torch.equal(a, b) and not torch.equal(a, s)


@pytest.mark.parametrize(
    ("weight_decay", "always_adapt", "expected_ratio"),
    [
        (0.0, True, 10.0),  # trust ratio ||w|| / ||u||: the step scales with the weight norm
        (1.0, False, 10.0),  # the paper's setting: adaptation applies, every step is lr * ||w||
        (0.0, False, 1.0),  # timm skips the trust ratio without weight decay: plain Adam, same step norm
    ],
)
def test_trust_ratio_scales_the_step_with_the_weight_norm(weight_decay, always_adapt, expected_ratio):
    torch.manual_seed(1)
    base = torch.randn(8, 8)
    small, large = nn.Parameter(base.clone()), nn.Parameter(10 * base.clone())
    optimizer = lamb([small, large], lr=1e-3, weight_decay=weight_decay, always_adapt=always_adapt)
    grad = torch.randn(8, 8)
    small.grad, large.grad = grad.clone(), grad.clone()
    before = [small.detach().clone(), large.detach().clone()]
    optimizer.step()
    steps = [(p.detach() - b).norm().item() for p, b in zip((small, large), before)]
    assert steps[1] / steps[0] == pytest.approx(expected_ratio, rel=1e-3)
    if weight_decay > 0 or always_adapt:
        assert steps[0] == pytest.approx(1e-3 * base.norm().item(), rel=1e-3)


@pytest.mark.parametrize(("lr", "weight_decay"), [(0.0, 1.0), (-1e-3, 1.0), (3e-4, -1.0), (float("nan"), 1.0)])
def test_bad_factory_arguments_are_named(lr, weight_decay):
    with pytest.raises(InputError, match="lr|weight_decay"):
        lamb(_tiny_model().parameters(), lr=lr, weight_decay=weight_decay)


def _lr_by_epoch(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_paper_schedule_by_hand():
    optimizer = lamb(_tiny_model().parameters())
    rates = _lr_by_epoch(step_schedule(optimizer), 100)
    expected = {0: 3e-4, 49: 3e-4, 50: 1e-4, 69: 1e-4, 70: 3e-5, 79: 3e-5, 80: 1e-5, 89: 1e-5, 90: 3e-6, 99: 3e-6}
    for epoch, rate in expected.items():
        assert rates[epoch] == pytest.approx(rate, rel=1e-12), epoch


def test_schedule_scales_another_base_lr_and_its_state_dict_loads_with_weights_only():
    optimizer = lamb(_tiny_model().parameters(), lr=6e-4)
    scheduler = step_schedule(optimizer, milestones=(2, 4), values=(3e-4, 1e-4, 3e-5))
    assert _lr_by_epoch(scheduler, 5) == pytest.approx([6e-4, 6e-4, 2e-4, 2e-4, 6e-5], rel=1e-12)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = step_schedule(copy.deepcopy(optimizer), milestones=(2, 4), values=(3e-4, 1e-4, 3e-5))
    fresh.load_state_dict(state)
    assert fresh.last_epoch == scheduler.last_epoch


@pytest.mark.parametrize(
    ("milestones", "values", "match"),
    [
        ((50, 70), (3e-4, 1e-4), "one more rate"),
        ((50, 70), (3e-4, 1e-4, 3e-5, 1e-5), "one more rate"),
        ((70, 50), (3e-4, 1e-4, 3e-5), "strictly increasing"),
        ((50, 50), (3e-4, 1e-4, 3e-5), "strictly increasing"),
        ((0, 50), (3e-4, 1e-4, 3e-5), "strictly increasing"),
        ((50,), (3e-4, 0.0), "finite numbers > 0"),
    ],
)
def test_bad_schedules_are_named(milestones, values, match):
    optimizer = torch.optim.SGD(_tiny_model().parameters(), lr=3e-4)
    with pytest.raises(InputError, match=match):
        step_schedule(optimizer, milestones, values)
