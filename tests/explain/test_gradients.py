"""Saliency (vanilla gradient) and SmoothGrad: linear models, closed forms, batching, 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.gradients import Saliency, SmoothGrad, input_gradient
from medxai.explain.registry import create_explainer

W_2D = [[0.5, -1.0, 2.0, -3.0], [1.0, 1.0, -0.25, 0.0]]  # Linear(4, 2) on a 1x1x2x2 image


def linear_model(weight: list) -> nn.Module:
    w = torch.tensor(weight)
    model = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(torch.arange(w.shape[0], dtype=torch.float32))
    return model.eval()


class Square(nn.Module):
    """y = sum(x^2): dy/dx = 2x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).flatten(1).sum(1, keepdim=True)


def small_convnet(dims: int, channels: int = 2) -> nn.Module:
    conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
    torch.manual_seed(0)
    return nn.Sequential(
        conv(channels, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, padding=1, stride=2), nn.ReLU(),
        pool(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()


def test_saliency_of_linear_model_is_abs_weight() -> None:
    model = linear_model(W_2D)
    x = torch.tensor([[[[3.0, -1.0], [0.5, 2.0]]]])
    torch.testing.assert_close(Saliency(model)(x, 0), torch.tensor([[[[0.5, 1.0], [2.0, 3.0]]]]))
    torch.testing.assert_close(Saliency(model)(x, 1), torch.tensor([[[[1.0, 1.0], [0.25, 0.0]]]]))


def test_saliency_takes_the_channel_maximum_in_2d_and_3d() -> None:
    # two channels of a 1x2 image: |w| = (0.5, 4 | 3, 1) -> max over channels (3, 4)
    model = linear_model([[0.5, -4.0, -3.0, 1.0]])
    torch.testing.assert_close(Saliency(model)(torch.zeros(1, 2, 1, 2), 0), torch.tensor([[[[3.0, 4.0]]]]))
    # 3D: a 1x2x1x2 volume, one channel, |w| = (1, 2, 3, 4)
    model3d = linear_model([[1.0, -2.0, 3.0, -4.0]])
    maps = Saliency(model3d)(torch.randn(2, 1, 2, 1, 2), 0)
    torch.testing.assert_close(maps, torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 1, 2).expand(2, -1, -1, -1, -1))


def test_input_gradient_of_a_square_is_twice_the_input_and_leaves_params_alone() -> None:
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    gradient, targets = input_gradient(Square(), x, None)
    torch.testing.assert_close(gradient, 2 * x)
    assert targets.tolist() == [0]
    model = small_convnet(2)
    input_gradient(model, torch.randn(2, 2, 8, 8), [0, 1])
    assert all(p.grad is None for p in model.parameters())


def test_smoothgrad_with_zero_noise_equals_saliency() -> None:
    model = small_convnet(2)
    x = torch.randn(2, 2, 10, 10, generator=torch.Generator().manual_seed(1))
    smooth = SmoothGrad(model, n_samples=4, noise_level=0.0)(x, [2, 0])
    torch.testing.assert_close(smooth, Saliency(model)(x, [2, 0]))


def test_smoothgrad_of_linear_model_is_abs_weight_for_any_noise() -> None:
    model = linear_model(W_2D)
    x = torch.tensor([[[[3.0, -1.0], [0.5, 2.0]]]])
    smooth = SmoothGrad(model, n_samples=7, noise_level=0.5)(x, 0)
    torch.testing.assert_close(smooth, torch.tensor([[[[0.5, 1.0], [2.0, 3.0]]]]))


def test_smoothgrad_matches_its_closed_form_on_a_square() -> None:
    # d sum(x^2)/dx = 2x, so SmoothGrad = mean_i |2 (x + sigma n_i)| with sigma = level * (max - min) = 0.2 * 3
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    explainer = SmoothGrad(Square(), n_samples=5, noise_level=0.2, batch_size=2, seed=11)
    noise = torch.stack([explainer.noise(i, (1, 2, 2), x.device, x.dtype) for i in range(5)])
    expected = (2 * (x + 0.6 * noise)).abs().mean(0, keepdim=True)
    torch.testing.assert_close(explainer(x, 0), expected)


def test_smoothgrad_is_seeded_and_independent_of_batch_size_and_position() -> None:
    model = small_convnet(2)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    a = SmoothGrad(model, n_samples=6, noise_level=0.15, batch_size=64, seed=3)(x, [0, 1, 2])
    b = SmoothGrad(model, n_samples=6, noise_level=0.15, batch_size=1, seed=3)(x, [0, 1, 2])
    c = SmoothGrad(model, n_samples=6, noise_level=0.15, seed=4)(x, [0, 1, 2])
    assert torch.equal(a, SmoothGrad(model, n_samples=6, noise_level=0.15, batch_size=64, seed=3)(x, [0, 1, 2]))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, Saliency(model)(x, [0, 1, 2]))  # the noise changes the map


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_batched_equals_per_sample(method: str, dims: int) -> None:
    model = small_convnet(dims)
    shape = (3, 2, 8, 8) if dims == 2 else (3, 2, 6, 6, 6)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    kwargs = {"n_samples": 5, "batch_size": 4} if method == "smoothgrad" else {}
    explainer = create_explainer(method, model, **kwargs)
    targets = [2, 0, 1]
    batched = explainer(x, targets)
    single = torch.cat([explainer(x[i : i + 1], targets[i]) for i in range(3)])
    assert batched.shape == (3, 1, *shape[2:]) and float(batched.amin()) >= 0 and float(batched.amax()) > 0
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-7)


def test_target_none_explains_the_predicted_class() -> None:
    model = small_convnet(2)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    predicted = model(x).argmax(1).tolist()
    torch.testing.assert_close(Saliency(model)(x), Saliency(model)(x, predicted))
    smooth = SmoothGrad(model, n_samples=3)
    torch.testing.assert_close(smooth(x), smooth(x, predicted))


def test_works_under_no_grad_with_frozen_model_and_names_bad_targets() -> None:
    model = small_convnet(3)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.no_grad():
        maps = Saliency(model)(x, 1)
        smooth = SmoothGrad(model, n_samples=2, noise_level=0.0)(x, 1)
    assert maps.shape == (1, 1, 6, 6, 6) and float(maps.amax()) > 0
    torch.testing.assert_close(smooth, maps)
    with pytest.raises(InputError, match="target class 3 of sample 0 is outside"):
        Saliency(model)(x, 3)
    with pytest.raises(InputError, match="target class 7"):
        SmoothGrad(model, n_samples=2)(x, 7)
    with pytest.raises(InputError, match="n_samples"):
        SmoothGrad(model, n_samples=0)


def test_output_key_selects_logits_from_dict_outputs() -> None:
    inner = linear_model(W_2D)

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x), "image": x}

    x = torch.zeros(1, 1, 2, 2)
    torch.testing.assert_close(Saliency(DictModel(), output_key="logits")(x, 0), Saliency(inner)(x, 0))
    with pytest.raises(InputError, match="not a tensor"):
        Saliency(DictModel())(x, 0)
