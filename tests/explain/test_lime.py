from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lime import lime_image
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso

from medxai.errors import InputError
from medxai.explain.lime import LIME, lime_kernel, sample_lime_masks
from medxai.explain.registry import create_explainer
from medxai.explain.superpixels import SlicSuperpixels


class SuperpixelLinear(torch.nn.Module):
    """A "model" exactly linear in superpixel indicators: logit_1 = sum_i w_i * mean intensity of superpixel i.

    With a zero baseline, switching superpixel i off removes ``w_i * mean_i(x)``: the true LIME weights.
    """

    def __init__(self, segments: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        one_hot = torch.nn.functional.one_hot(segments.flatten(), weights.numel()).float()
        self.register_buffer("averaging", one_hot / one_hot.sum(0))
        self.register_buffer("weights", weights.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.mean(1).flatten(1) @ self.averaging @ self.weights
        return torch.stack([torch.zeros_like(score), score], dim=1)

    def true_weights(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(0).flatten() @ self.averaging) * self.weights


def _blocks(shape: tuple[int, ...], block: int) -> torch.Tensor:
    """Labels of a grid of cubes/squares of edge ``block``."""
    grids = torch.meshgrid(*[torch.arange(n) // block for n in shape], indexing="ij")
    per_axis = [n // block for n in shape]
    labels = torch.zeros(shape, dtype=torch.long)
    for grid, count in zip(grids, per_axis):
        labels = labels * count + grid
    return labels


def _cnn(in_channels: int = 3, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(16, classes),
    ).eval()


def test_paper_kernel_with_sigma_2_and_euclidean_distance():
    # seed 000 eq. 7: pi = exp(-(x - x')^2 / sigma^2); with k superpixels off, d^2 = k
    k = np.arange(5)
    assert np.allclose(lime_kernel(np.sqrt(k), 2.0), np.exp(-k / 4.0))


def test_samples_are_lime_images_samples():
    masks = sample_lime_masks(6, 4, seed=3)
    expected = np.random.RandomState(3).randint(0, 2, 24).reshape(6, 4)
    expected[0] = 1
    assert np.array_equal(masks, expected)


def test_recovers_the_weights_of_a_model_linear_in_superpixels_2d():
    segments = _blocks((32, 32), 8)  # 16 superpixels
    weights = torch.zeros(16)
    weights[5], weights[10], weights[3] = 2.0, -1.0, 0.5
    model = SuperpixelLinear(segments, weights)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) + 0.5
    explanation = LIME(model, baseline="zero", output="logit").explain_superpixels(x, 1, segments=segments[None])
    true = model.true_weights(x[0]).double()
    assert explanation.ranking(0)[0] == 5
    assert torch.allclose(explanation.weights[0], true, atol=5e-3)  # Lasso shrinkage ~ 4 alpha
    assert explanation.fit_scores[0] > 0.999
    assert explanation.maps.shape == (1, 1, 32, 32)
    assert explanation.maps[0, 0, 8, 8] == pytest.approx(float(explanation.weights[0][5]))  # painted (label 5: row 1, col 1)


def test_recovers_the_relevant_supervoxel_in_3d_with_slic():
    volume = torch.full((1, 1, 16, 16, 16), 0.2)
    volume[0, 0, 4:10, 4:10, 4:10] = 1.0  # a bright "lesion"
    segmenter = SlicSuperpixels(n_segments=27, compactness=0.01, sigma=0)
    segments = segmenter(volume)[0]
    lesion_label = int(segments[6, 6, 6])
    assert (segments == lesion_label).sum() == 216  # SLIC found the lesion as one supervoxel
    weights = torch.zeros(int(segments.max()) + 1)
    weights[lesion_label] = 3.0
    weights[(lesion_label + 1) % weights.numel()] = -0.5
    model = SuperpixelLinear(segments, weights)
    explainer = LIME(model, segmenter=segmenter, baseline="zero", output="logit", num_samples=300)
    maps = explainer(volume, 1)
    explanation = explainer.last_explanation
    assert maps.shape == (1, 1, 16, 16, 16)
    assert explanation.ranking(0)[0] == lesion_label
    assert float(explanation.weights[0][lesion_label]) == pytest.approx(3.0, abs=5e-3)
    assert float(maps[0, 0, 6, 6, 6]) == pytest.approx(float(explanation.weights[0][lesion_label]))


def _lime_image_classifier(model: torch.nn.Module, calls: list[int] | None = None):
    """lime_image's classifier_fn: (n, H, W, 3) numpy -> logits (n, K) numpy."""

    def classify(images: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(images))
        with torch.no_grad():
            return model(torch.from_numpy(images).permute(0, 3, 1, 2).float()).double().numpy()

    return classify


def test_identical_weights_to_lime_image_given_same_segmentation_samples_kernel_and_lasso():
    model = _cnn()
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1))
    segments = _blocks((24, 24), 6)  # 16 superpixels
    ours = LIME(model, baseline="mean", output="logit", num_samples=200, seed=7, alpha=1e-4).explain_superpixels(
        image[None], 2, segments=segments[None]
    )
    reference = lime_image.LimeImageExplainer(
        kernel_width=2.0, kernel=lambda d, kernel_width: np.exp(-(d**2) / kernel_width**2), feature_selection="none", random_state=7
    ).explain_instance(
        image.permute(1, 2, 0).numpy(),
        _lime_image_classifier(model),
        labels=(2,),
        top_labels=None,
        hide_color=None,
        num_features=16,
        num_samples=200,
        segmentation_fn=lambda _: segments.numpy(),
        distance_metric="euclidean",
        model_regressor=Lasso(alpha=1e-4, max_iter=100_000, tol=1e-8),
        random_seed=0,
    )
    lime_weights = np.zeros(16)
    for feature, weight in reference.local_exp[2]:
        lime_weights[feature] = weight
    assert np.abs(lime_weights).max() > 1e-3
    assert np.allclose(ours.weights[0].numpy(), lime_weights, atol=1e-6)
    assert float(ours.intercepts[0]) == pytest.approx(reference.intercept[2], abs=1e-6)


def test_ranks_agree_with_lime_image_defaults_ridge_cosine_and_sqrt_kernel():
    segments = _blocks((24, 24), 6)
    weights = torch.linspace(-1.0, 2.0, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(2))]
    model = SuperpixelLinear(segments, weights)
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3)) + 0.5
    ours = LIME(model, baseline="zero", output="logit", num_samples=500).explain_superpixels(image[None], 1, segments=segments[None])
    logits = lambda images: model(torch.from_numpy(images).permute(0, 3, 1, 2).float()).double().numpy()  # noqa: E731
    reference = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        image.permute(1, 2, 0).numpy(), logits, labels=(1,), top_labels=None, hide_color=0, num_samples=500,
        segmentation_fn=lambda _: segments.numpy(), random_seed=0,
    )
    lime_weights = np.zeros(16)
    for feature, weight in reference.local_exp[1]:
        lime_weights[feature] = weight
    assert spearmanr(ours.weights[0].numpy(), lime_weights).statistic > 0.95


def test_lime_image_traps_rgb_only_batches_of_ten_no_volumes():
    """lime_image turns a grayscale slice into 3 channels, calls the classifier 10 images at a time and
    cannot take a volume; ours keeps the channels, uses large batches, and explains volumes."""
    calls: list[int] = []
    model_rgb = _cnn()
    lime_image.LimeImageExplainer(random_state=0).explain_instance(
        np.random.default_rng(0).random((16, 16)), _lime_image_classifier(model_rgb, calls), top_labels=None, labels=(0,),
        num_samples=95, segmentation_fn=lambda _: _blocks((16, 16), 4).numpy(), random_seed=0,
    )
    assert calls == [10] * 9 + [5]

    model_gray = _cnn(in_channels=1)
    forwards: list[int] = []
    model_gray.register_forward_hook(lambda module, inputs, output: forwards.append(inputs[0].shape[0]))
    LIME(model_gray, num_samples=95, batch_size=64)(torch.rand(1, 1, 16, 16), 0, segments=_blocks((16, 16), 4)[None])
    assert forwards == [1, 64, 31]  # the prediction of x, then 95 perturbations in two batches

    volume = np.random.default_rng(1).random((8, 16, 16))
    with pytest.raises(IndexError):
        lime_image.LimeImageExplainer(random_state=0).explain_instance(
            volume, lambda v: np.zeros((len(v), 2)), segmentation_fn=lambda _: np.zeros((8, 16, 16), dtype=int), num_samples=10
        )


def test_batched_equals_per_sample_seeded_and_works_under_no_grad():
    model = _cnn(in_channels=1)
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(4))
    explainer = LIME(model, segmenter=SlicSuperpixels(n_segments=10), num_samples=64, baseline="blur", blur_sigma=2.0)
    with torch.no_grad():
        batched = explainer.explain_superpixels(x, [0, 1, 2])
    for b in range(3):
        single = explainer.explain_superpixels(x[b : b + 1], b)
        assert torch.equal(single.segments[0], batched.segments[b])
        assert torch.allclose(single.weights[0], batched.weights[b], atol=1e-7)
        assert torch.allclose(single.maps[0], batched.maps[b], atol=1e-7)
    again = explainer.explain_superpixels(x, [0, 1, 2])
    assert all(torch.equal(a, b) for a, b in zip(again.weights, batched.weights))
    other_seed = LIME(model, segmenter=SlicSuperpixels(n_segments=10), num_samples=64, baseline="blur", blur_sigma=2.0, seed=1)
    assert not torch.equal(other_seed.explain_superpixels(x[:1], 0).weights[0], batched.weights[0])
    assert torch.equal(batched.targets, torch.tensor([0, 1, 2]))
    assert torch.allclose(batched.model_outputs, model(x).softmax(1)[[0, 1, 2], [0, 1, 2]].double(), atol=1e-6)


def test_lasso_zeroes_superpixels_without_effect():
    segments = _blocks((16, 16), 4)
    weights = torch.zeros(16)
    weights[0] = 1.0
    model = SuperpixelLinear(segments, weights)
    x = torch.ones(1, 1, 16, 16)
    explanation = LIME(model, baseline="zero", output="logit", alpha=1e-2).explain_superpixels(x, 1, segments=segments[None])
    assert int((explanation.weights[0] != 0).sum()) == 1
    assert float(explanation.weights[0][0]) == pytest.approx(1.0 - 4 * 1e-2, abs=0.02)  # shrunk by about 4 alpha


def test_registry_and_errors():
    model = _cnn(in_channels=1)
    assert isinstance(create_explainer("lime", model, num_samples=10), LIME)
    with pytest.raises(InputError, match="'manhattan'"):
        LIME(model, distance="manhattan")
    with pytest.raises(InputError, match="segments must have shape"):
        LIME(model, num_samples=10)(torch.rand(1, 1, 8, 8), 0, segments=torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="num_samples"):
        LIME(model, num_samples=1)
    assert math.isfinite(LIME(model).kernel_width)
