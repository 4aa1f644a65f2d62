from __future__ import annotations

import pytest
import torch

from medxai.errors import InputError
from medxai.explain.base import Explainer, check_batch, resolve_targets
from medxai.explain.perturbation import batched_forward, iter_chunks, model_device
from medxai.explain.registry import create_explainer, list_explainers, register_explainer


class _InputTimesGradient(Explainer):
    """Minimal explainer used to test the base class: x * d(logit_t)/dx summed over channels."""

    def attribute(self, x, target, **kwargs):
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        t = resolve_targets(target, x.shape[0], logits)
        logits.gather(1, t[:, None].to(logits.device)).sum().backward()
        return (x * x.grad).sum(1, keepdim=True).detach()


def _linear_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(24, dtype=torch.float32).reshape(3, 8))
    return model


def test_explainer_enables_grad_inside_no_grad_and_computes_exact_values():
    model = _linear_model()
    x = torch.ones(2, 2, 2, 2)
    with torch.no_grad():
        maps = _InputTimesGradient(model)(x, target=[0, 2])
    w = model[1].weight.reshape(3, 2, 2, 2)
    assert maps.shape == (2, 1, 2, 2)
    assert torch.equal(maps[0, 0], w[0].sum(0))
    assert torch.equal(maps[1, 0], w[2].sum(0))


def test_default_target_is_predicted_class():
    model = _linear_model()
    x = torch.ones(1, 2, 2, 2)
    maps = _InputTimesGradient(model)(x)
    assert torch.equal(maps[0, 0], model[1].weight.reshape(3, 2, 2, 2)[2].sum(0))  # class 2 has largest logit


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.ones(2, 3), "shape"),
        (torch.ones(0, 1, 4, 4), "empty"),
        (torch.ones(1, 1, 4, 4, dtype=torch.int64), "floating point"),
        (torch.tensor([[[[1.0, float("nan")]]]]), "NaN or Inf"),
    ],
)
def test_check_batch_rejects_bad_input(bad, message):
    with pytest.raises(InputError, match=message):
        check_batch(bad)


def test_resolve_targets():
    logits = torch.tensor([[0.1, 0.9], [2.0, 1.0]])
    assert resolve_targets(None, 2, logits).tolist() == [1, 0]
    assert resolve_targets(1, 2).tolist() == [1, 1]
    with pytest.raises(InputError, match="3 targets for a batch of 2"):
        resolve_targets([0, 1, 1], 2)
    with pytest.raises(InputError, match="target class 5 of sample 1 is outside"):
        resolve_targets([0, 5], 2, logits)


def test_registry_factory_and_unknown_name():
    register_explainer("test_input_x_grad")(_InputTimesGradient)
    assert "test_input_x_grad" in list_explainers()
    explainer = create_explainer("TEST_input_x_grad", _linear_model())
    assert isinstance(explainer, _InputTimesGradient)
    with pytest.raises(InputError, match="unknown explainer 'nope'"):
        create_explainer("nope", _linear_model())
    with pytest.raises(ValueError, match="already registered"):
        register_explainer("test_input_x_grad")(Explainer)


def test_batched_forward_equals_single_pass_for_tensor_and_builder():
    model = torch.nn.Linear(4, 2)
    x = torch.randn(11, 4)
    expected = model(x).detach()
    assert torch.allclose(batched_forward(model, x, batch_size=3), expected)
    seen = []

    def build(chunk):
        seen.append((chunk.start, chunk.stop))
        return x[chunk]

    out = batched_forward(model, build, n=11, batch_size=5, postprocess=lambda z: z.softmax(1)[:, 1])
    assert torch.allclose(out, expected.softmax(1)[:, 1])
    assert seen == [(0, 5), (5, 10), (10, 11)]
    assert list(iter_chunks(4, 4)) == [slice(0, 4)]
    assert model_device(model) == torch.device("cpu")
