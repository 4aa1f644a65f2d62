"""Cascading model-parameter randomisation (Adebayo et al. 2018) on small networks, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from medxai.errors import InputError
from medxai.explain.base import Explainer, resolve_targets
from medxai.explain.registry import register_explainer
from medxai.metrics.sanity import (
    cascading_randomization,
    execution_order,
    reinitialize,
    spearman_per_sample,
)


def gradient_factory(model: torch.nn.Module):
    """Vanilla gradient of the target logit, summed over channels: (B, 1, *spatial)."""

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), x)
        return grad.sum(1, keepdim=True)

    return explain


def input_factory(model: torch.nn.Module):
    """An "explainer" that ignores the model and returns the input (Adebayo's edge-detector failure case)."""
    return lambda x, target: x.sum(1, keepdim=True)


@register_explainer("test_sanity_input_times")
class InputTimes(Explainer):
    """Registered model-independent explainer: the input times a constant factor."""

    def __init__(self, model: torch.nn.Module, factor: float = 1.0) -> None:
        super().__init__(model)
        self.factor = factor

    def attribute(self, x, target, **kwargs):
        resolve_targets(target, x.shape[0])
        return self.factor * x.sum(1, keepdim=True)


def linear_model() -> torch.nn.Module:
    """A "trained" linear classifier on 1x32x32 whose class-0 weights are a smooth ramp."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    ramp = torch.linspace(-1, 1, 32)
    with torch.no_grad():
        model[1].weight[0] = (ramp.view(-1, 1) + ramp.view(1, -1)).flatten()
        model[1].weight[1] = -model[1].weight[0]
        model[1].bias.zero_()
    return model.eval()


def conv_net(spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    side = 8 if spatial_dims == 2 else 6
    return torch.nn.Sequential(
        conv(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        conv(4, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * side**spatial_dims, 2),
    ).eval()


def test_spearman_by_hand_and_constant_maps():
    maps = torch.tensor([[1.0, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1], [5, 5, 5, 5]]).view(4, 1, 2, 2)
    reference = torch.tensor([1.0, 2, 3, 4]).view(1, 1, 2, 2).expand(4, 1, 2, 2)
    rho = spearman_per_sample(maps, reference)
    # 1 - 6 sum d^2 / (n (n^2 - 1)): d = (0, 1, -1, 0) gives 1 - 12 / 60 = 0.8
    assert rho[:3].tolist() == pytest.approx([1.0, 0.8, -1.0])
    assert math.isnan(rho[3].item())


def test_gradient_map_decorrelates_while_the_input_keeps_correlation_one():
    model = linear_model()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    gradient = cascading_randomization(model, gradient_factory, x, target=0)
    assert gradient.layers == ["1"]
    # the gradient of a linear model is its weight row: after re-initialisation it is independent noise
    assert gradient.spearman_signed.abs().max().item() < 0.1
    assert gradient.spearman_abs.abs().max().item() < 0.1
    # the Adebayo failure case: a map that does not depend on the model passes through unchanged
    edge = cascading_randomization(model, input_factory, x, target=0)
    torch.testing.assert_close(edge.spearman_abs, torch.ones(3, 1, dtype=torch.float64))
    torch.testing.assert_close(edge.spearman_signed, torch.ones(3, 1, dtype=torch.float64))


def test_correlations_equal_scipy_on_the_maps_the_explainer_produced():
    model = conv_net(2)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    produced: list[torch.Tensor] = []

    def recording_factory(network):
        explain = gradient_factory(network)
        return lambda xs, t: produced.append(explain(xs, t)) or produced[-1]

    result = cascading_randomization(model, recording_factory, x, target=[0, 1])
    original, randomized = produced[0], produced[1:]
    assert len(randomized) == len(result.layers) == 3
    for step, maps in enumerate(randomized):
        for i in range(2):
            a, b = maps[i].flatten().numpy(), original[i].flatten().numpy()
            assert result.spearman_signed[i, step].item() == pytest.approx(spearmanr(a, b).statistic)
            assert result.spearman_abs[i, step].item() == pytest.approx(spearmanr(abs(a), abs(b)).statistic)
    torch.testing.assert_close(result.mean_abs(), result.spearman_abs.mean(0))


def test_cascade_goes_from_the_output_back_cumulatively_on_a_copy():
    model = conv_net(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    snapshots: list[dict[str, torch.Tensor]] = []

    def snapshot_factory(network):
        snapshots.append({k: v.clone() for k, v in network.state_dict().items()})
        return gradient_factory(network)

    order, logits = execution_order(model, x)
    assert order == ["0", "2", "5"]
    result = cascading_randomization(model, snapshot_factory, x)
    assert result.layers == ["5", "2", "0"]
    changed = [
        sorted({k.split(".")[0] for k in before if not torch.equal(snap[k], before[k])}) for snap in snapshots
    ]
    assert changed == [[], ["5"], ["2", "5"], ["0", "2", "5"]]
    # the caller's model and RNG state are untouched
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    # target None fixes the original model's predicted classes
    assert logits.argmax(1).tolist() == resolve_targets(None, 2, model(x)).tolist()


def test_seed_makes_it_deterministic():
    model, x = conv_net(2), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    first = cascading_randomization(model, gradient_factory, x, seed=5)
    again = cascading_randomization(model, gradient_factory, x, seed=5)
    other = cascading_randomization(model, gradient_factory, x, seed=6)
    assert torch.equal(first.spearman_signed, again.spearman_signed)
    assert not torch.equal(first.spearman_signed, other.spearman_signed)


def test_3d_conv_net():
    model = conv_net(3)
    x = torch.rand(2, 1, 6, 6, 6, generator=torch.Generator().manual_seed(4))
    gradient = cascading_randomization(model, gradient_factory, x, target=0)
    edge = cascading_randomization(model, input_factory, x, target=0)
    assert gradient.layers == ["5", "2", "0"] and gradient.spearman_abs.shape == (2, 3)
    torch.testing.assert_close(edge.spearman_signed, torch.ones(2, 3, dtype=torch.float64))
    # with every layer re-drawn, the gradient map no longer follows the original one
    assert gradient.mean_signed()[-1].item() < 0.5


def test_batched_equals_per_sample():
    model = conv_net(2)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    batched = cascading_randomization(model, gradient_factory, x, target=[0, 1, 0])
    for i, t in enumerate([0, 1, 0]):
        single = cascading_randomization(model, gradient_factory, x[i : i + 1], target=t)
        torch.testing.assert_close(single.spearman_signed[0], batched.spearman_signed[i])


def test_layer_order_by_name_block_or_module_and_registry_name():
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2)),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 8 * 8, 2),
    ).eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    result = cascading_randomization(model, gradient_factory, x, layer_order=[model[2], "0"])
    assert result.layers == ["2", "0"]
    assert execution_order(model, x)[0] == ["0.0", "0.1", "2"]
    by_name = cascading_randomization(model, "test_sanity_input_times", x, explainer_kwargs={"factor": -2.0})
    torch.testing.assert_close(by_name.spearman_signed, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="layer 'head' in layer_order is not a sub-module"):
        cascading_randomization(model, gradient_factory, x, layer_order=["head"])
    with pytest.raises(InputError, match="has no parameters"):
        reinitialize(torch.nn.ReLU())
