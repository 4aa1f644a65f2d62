from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import shap
import torch

from medxai.errors import InputError
from medxai.explain.kernel_shap import KernelSHAP, seeded_numpy, shapley_kernel
from medxai.explain.registry import create_explainer
from medxai.explain.superpixels import SlicSuperpixels, baseline_image, compose


class SuperpixelModel(torch.nn.Module):
    """logit_1 = sum_i w_i m_i + gamma * (m_0 m_1 + (sum_i m_i)^2), m_i the mean intensity of superpixel i.

    gamma = 0 is linear in the superpixel indicators (with a zero baseline), gamma != 0 has interactions.
    """

    def __init__(self, segments: torch.Tensor, weights: torch.Tensor, gamma: float = 0.0) -> None:
        super().__init__()
        one_hot = torch.nn.functional.one_hot(segments.flatten(), weights.numel()).double()
        self.register_buffer("averaging", one_hot / one_hot.sum(0))
        self.register_buffer("weights", weights.double())
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.double().mean(1).flatten(1) @ self.averaging
        score = means @ self.weights + self.gamma * (means[:, 0] * means[:, 1] + means.sum(1) ** 2)
        return torch.stack([torch.zeros_like(score), score], dim=1).float()


def _strips(height: int, width: int, count: int) -> torch.Tensor:
    """Labels of ``count`` vertical strips."""
    return (torch.arange(width) * count // width).expand(height, width).clone()


def brute_force_shapley(model: torch.nn.Module, image: torch.Tensor, baseline: torch.Tensor, segments: torch.Tensor) -> np.ndarray:
    """Exact Shapley values of the superpixel game v(S) = logit_1(image with only S on), over all 2^M coalitions."""
    num = int(segments.max()) + 1
    masks = torch.tensor(list(itertools.product([False, True], repeat=num)))
    with torch.no_grad():
        values = model(compose(image, baseline, segments, masks))[:, 1].double().numpy()
    value = {tuple(m.tolist()): v for m, v in zip(masks, values)}
    phi = np.zeros(num)
    for i in range(num):
        for mask in value:
            if mask[i]:
                continue
            size = sum(mask)
            with_i = tuple(True if j == i else on for j, on in enumerate(mask))
            weight = math.factorial(size) * math.factorial(num - size - 1) / math.factorial(num)
            phi[i] += weight * (value[with_i] - value[mask])
    return phi


def test_shapley_kernel_values():
    # (M - 1) / (C(M, s) s (M - s)) for M = 4
    assert shapley_kernel(4, np.array([1, 2, 3])).tolist() == pytest.approx([3 / 12, 3 / 24, 3 / 12])
    assert np.isinf(shapley_kernel(4, 0))


def test_linear_model_gives_weight_times_mean_and_efficiency():
    segments = _strips(8, 12, 6)
    weights = torch.tensor([0.0, 2.0, -1.0, 0.0, 0.5, 0.0])
    model = SuperpixelModel(segments, weights)
    x = torch.rand(1, 1, 8, 12, generator=torch.Generator().manual_seed(0)) + 0.5
    explanation = KernelSHAP(model, baseline="zero", output="logit").explain_superpixels(x, 1, segments=segments[None])
    means = (x[0, 0].double().flatten() @ model.averaging).numpy()
    assert np.allclose(explanation.weights[0].numpy(), weights.numpy() * means, atol=1e-5)
    assert float(explanation.intercepts[0]) == pytest.approx(0.0, abs=1e-6)  # f(all off) = f(zeros) = 0
    assert float(explanation.weights[0].sum()) == pytest.approx(float(explanation.model_outputs[0]), abs=1e-5)
    # a superpixel filled with its own mean looks unchanged to a model of superpixel means: all values 0
    mean_fill = KernelSHAP(model, baseline="mean", output="logit").explain_superpixels(x, 1, segments=segments[None])
    assert np.allclose(mean_fill.weights[0].numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_exact_shapley_values_of_a_nonlinear_model_when_all_coalitions_fit(baseline):
    segments = _strips(6, 14, 7)  # M = 7: 2^7 - 2 = 126 coalitions <= num_samples
    model = SuperpixelModel(segments, torch.linspace(-1, 1, 7), gamma=0.7)
    x = torch.rand(1, 1, 6, 14, generator=torch.Generator().manual_seed(1)) * 2
    explanation = KernelSHAP(model, baseline=baseline, output="logit", num_samples=200).explain_superpixels(
        x, 1, segments=segments[None]
    )
    exact = brute_force_shapley(model, x[0], baseline_image(x[0], segments, baseline), segments)
    assert np.abs(exact).max() > 0.05
    assert np.allclose(explanation.weights[0].numpy(), exact, atol=1e-5)


def test_sampled_coalitions_approximate_shapley_values_and_keep_efficiency():
    segments = _strips(4, 24, 12)  # M = 12: 4094 coalitions, 1000 sampled
    model = SuperpixelModel(segments, torch.linspace(-1, 2, 12), gamma=0.05)
    x = torch.rand(1, 1, 4, 24, generator=torch.Generator().manual_seed(2)) + 0.5
    explanation = KernelSHAP(model, baseline="zero", output="logit").explain_superpixels(x, 1, segments=segments[None])
    exact = brute_force_shapley(model, x[0], torch.zeros_like(x[0]), segments)
    values = explanation.weights[0].numpy()
    assert np.abs(values - exact).max() < 0.05 * np.abs(exact).max()
    assert values.sum() == pytest.approx(float(explanation.model_outputs[0] - explanation.intercepts[0]), abs=1e-6)


def test_3d_supervoxels_probability_output_is_efficient():
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)
    ).eval()
    volume = torch.rand(2, 1, 8, 10, 10, generator=torch.Generator().manual_seed(4))
    explainer = KernelSHAP(model, segmenter=SlicSuperpixels(n_segments=12), baseline="blur", blur_sigma=1.5, num_samples=128)
    maps = explainer(volume, [0, 1])
    explanation = explainer.last_explanation
    assert maps.shape == (2, 1, 8, 10, 10)
    with torch.no_grad():
        off = torch.stack([compose(volume[b], baseline_image(volume[b], explanation.segments[b], "blur", 1.5), explanation.segments[b],
                                   torch.zeros(1, len(explanation.weights[b]), dtype=torch.bool))[0] for b in range(2)])
        probabilities = model(off).softmax(1)
    for b in range(2):
        assert float(explanation.intercepts[b]) == pytest.approx(float(probabilities[b, b]), abs=1e-6)
        assert float(explanation.weights[b].sum()) == pytest.approx(float(explanation.model_outputs[b] - explanation.intercepts[b]), abs=1e-6)


def test_batched_equals_per_sample_deterministic_and_global_rng_untouched():
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3)
    ).eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    explainer = KernelSHAP(model, segmenter=SlicSuperpixels(n_segments=14), num_samples=100, output="logit")
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    with torch.no_grad():
        batched = explainer.explain_superpixels(x)
    assert np.random.rand() == expected_draw  # shap's global-RNG sampling was seeded and restored
    assert torch.equal(batched.targets, model(x).argmax(1))
    for b in range(3):
        single = explainer.explain_superpixels(x[b : b + 1], int(batched.targets[b]))
        assert torch.allclose(single.weights[0], batched.weights[b], atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(explainer.explain_superpixels(x).weights, batched.weights))
    assert batched.fit_scores is None


def test_shap_image_masker_casts_to_uint8_but_compose_keeps_values():
    """The trap: shap.maskers.Image with inpainting returns the whole image cast to uint8."""
    ct = torch.linspace(-1000.0, 400.0, 64).view(1, 8, 8)  # Hounsfield units
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:, :4] = True  # left half kept
    masker = shap.maskers.Image("inpaint_telea", (8, 8, 1))
    (masked,) = masker(keep.numpy().reshape(-1, 1).ravel(), ct.permute(1, 2, 0).numpy())
    kept_shap = masked.reshape(8, 8)[:, :4]
    assert not np.allclose(kept_shap, ct[0, :, :4].numpy())  # kept HU values destroyed (wrapped into 0..255)
    assert kept_shap.min() >= 0 and kept_shap.max() <= 255
    segments = (torch.arange(8) >= 4).long().expand(8, 8)
    ours = compose(ct, torch.zeros_like(ct), segments, torch.tensor([[True, False]]))
    assert torch.equal(ours[0, 0, :, :4], ct[0, :, :4])


def test_seeded_numpy_restores_state_even_on_error():
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    with pytest.raises(RuntimeError):
        with seeded_numpy(0):
            raise RuntimeError("boom")
    assert np.random.rand() == expected


def test_registry_and_errors():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    assert isinstance(create_explainer("kernel_shap", model, num_samples=10), KernelSHAP)
    with pytest.raises(InputError, match="l1_reg"):
        KernelSHAP(model, l1_reg=True)
    with pytest.raises(InputError, match="'inpaint'"):
        KernelSHAP(model, baseline="inpaint")
