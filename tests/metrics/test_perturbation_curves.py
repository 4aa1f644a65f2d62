"""Perturbation metrics against hand-computed curves on "models" whose score is a known function of the input.

The linear model scores ``s(x) = sum(W * x)``; with ``activation="none"`` the tracked score is ``s``
itself, so every point of a curve is a sum of the weights of the pixels still present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from medxai.errors import InputError
from medxai.metrics.perturbation_curves import (
    PAPER_AOPPC_THRESHOLDS,
    aopc_morf,
    aoppc,
    average_drop_increase,
    class_scores,
    deletion,
    gaussian_blur,
    insertion,
)


class LinearScore(torch.nn.Module):
    """Outputs (N, 2): ``[s, -s]`` with ``s = sum(W * x)`` over channels and space."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone().double(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        self.largest_batch = max(getattr(self, "largest_batch", 0), x.shape[0])
        s = (self.weight * x.double()).flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


def small_cnn(spatial_dims: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    pool = torch.nn.AdaptiveAvgPool2d(2) if spatial_dims == 2 else torch.nn.AdaptiveAvgPool3d(2)
    return torch.nn.Sequential(
        conv(2, 4, 3, padding=1), torch.nn.ReLU(), pool, torch.nn.Flatten(), torch.nn.Linear(4 * 2**spatial_dims, 3)
    ).eval()


# --- AOPPC (seed 001, eq. 12) -------------------------------------------------------------------------


def test_paper_thresholds_are_point_one_to_one():
    assert PAPER_AOPPC_THRESHOLDS == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])


def test_aoppc_uniform_weights_counts_kept_pixels():
    # normalised map value of pixel i is i / 15; at threshold x the pixels with i / 15 >= x are zeroed,
    # so the kept pixels are i < 15 x: 2, 3 (0.2 = 3/15 is "at least 0.2"), 5, 6, 8, 9, 11, 12, 14, 15
    model = LinearScore(torch.full((1, 1, 4, 4), 1 / 16))
    x = torch.ones(1, 1, 4, 4)
    raw_map = torch.arange(16.0).view(1, 1, 4, 4) * 3 + 7  # min-max normalisation removes scale and offset
    curve = aoppc(model, x, raw_map, target=0, activation="none")
    kept = torch.tensor([2, 3, 5, 6, 8, 9, 11, 12, 14, 15], dtype=torch.float64)
    expected_curve = torch.cat([torch.ones(1, dtype=torch.float64), kept / 16])
    torch.testing.assert_close(curve.x, torch.tensor([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]))
    torch.testing.assert_close(curve.probabilities[0].double(), expected_curve, atol=1e-6, rtol=0)
    assert curve.score.item() == pytest.approx(1 - 85 / 160)  # 0.46875


def test_aoppc_3d_two_level_map():
    # voxels with map 1 carry weight 0.3, with map 0.5 weight 0.2, with map 0 weight 0.5:
    # x in 0.6..1.0 removes the first group (drop 0.3), x in 0.1..0.5 both (drop 0.5)
    weight = torch.tensor([0.1, 0.2, 0.05, 0.05, 0.1, 0.2, 0.2, 0.1]).view(1, 1, 2, 2, 2)
    raw_map = torch.tensor([1, 1, 0.5, 0.5, 0.5, 0, 0, 0]).view(1, 1, 2, 2, 2)
    curve = aoppc(LinearScore(weight), torch.ones(1, 1, 2, 2, 2), raw_map, target=0, activation="none")
    torch.testing.assert_close(
        curve.probabilities[0].double(),
        torch.tensor([1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.7, 0.7, 0.7, 0.7, 0.7], dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    assert curve.score.item() == pytest.approx(0.4)
    assert curve.mean_score() == pytest.approx(0.4)


def test_aoppc_baseline_and_softmax_probability():
    # removed pixels take the baseline 1 instead of 2: s falls by half of the removed weight;
    # class 0 probability of logits [s, -s] is sigmoid(2 s)
    weight = torch.tensor([0.1, 0.2, 0.05, 0.05, 0.1, 0.2, 0.2, 0.1]).view(1, 1, 2, 2, 2)
    raw_map = torch.tensor([1, 1, 0.5, 0.5, 0.5, 0, 0, 0]).view(1, 1, 2, 2, 2)
    curve = aoppc(LinearScore(weight), torch.full((1, 1, 2, 2, 2), 2.0), raw_map, target=0, baseline=1.0)
    s0, s_high, s_low = 2.0, 2.0 - 0.3, 2.0 - 0.5
    sig = lambda v: 1 / (1 + math.exp(-2 * v))  # noqa: E731
    expected = (5 * (sig(s0) - sig(s_high)) + 5 * (sig(s0) - sig(s_low))) / 10
    assert curve.score.item() == pytest.approx(expected, rel=1e-5)
    assert curve.probabilities[0, 0].item() == pytest.approx(sig(s0), rel=1e-6)


def test_aoppc_constant_map_removes_nothing():
    model = LinearScore(torch.rand(1, 1, 4, 4))
    curve = aoppc(model, torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.7), target=0, activation="none")
    assert curve.score.item() == pytest.approx(0.0, abs=1e-7)


# --- deletion / insertion (RISE) ----------------------------------------------------------------------


def ranked_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """Weights i / 120 (i = 0..15, sum 1) and a map that ranks them in the same order."""
    weight = torch.arange(16.0).view(1, 1, 4, 4) / 120
    return weight, torch.arange(16.0).view(1, 1, 4, 4)


def test_deletion_auc_by_hand():
    weight, importance = ranked_weights()
    curve = deletion(LinearScore(weight), torch.ones(1, 1, 4, 4), importance, target=0, n_steps=4, activation="none")
    # after step k the 4k largest weights are gone: 120, 66, 28, 6, 0 (/120)
    torch.testing.assert_close(curve.x, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(
        curve.probabilities[0].double(), torch.tensor([120, 66, 28, 6, 0], dtype=torch.float64) / 120
    )
    assert curve.score.item() == pytest.approx(1 / 3)  # 0.25 * (0.5 + (66 + 28 + 6) / 120)


def test_insertion_auc_by_hand_and_complements_deletion():
    weight, importance = ranked_weights()
    model, x = LinearScore(weight), torch.ones(1, 1, 4, 4)
    curve = insertion(model, x, importance, target=0, n_steps=4, start=0.0, activation="none")
    torch.testing.assert_close(
        curve.probabilities[0].double(), torch.tensor([0, 54, 92, 114, 120], dtype=torch.float64) / 120
    )
    assert curve.score.item() == pytest.approx(2 / 3)
    # a linear score with a zero baseline: deletion + insertion = the full score
    deleted = deletion(model, x, importance, target=0, n_steps=4, activation="none")
    assert deleted.score.item() + curve.score.item() == pytest.approx(1.0)


def test_deletion_3d_one_voxel_per_step():
    # weights i / 28 on 8 voxels, map ranks them in the same order at shuffled positions
    order = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    weight = (order.double() / 28).view(1, 1, 2, 2, 2)
    curve = deletion(LinearScore(weight), torch.ones(1, 1, 2, 2, 2), weight.float() * 5, target=0, activation="none")
    # n_steps = 100 is capped at the 8 voxels; removing the k largest leaves (8 - k)(7 - k) / 2 / 28
    expected = torch.tensor([(8 - k) * (7 - k) / 56 for k in range(9)], dtype=torch.float64)
    torch.testing.assert_close(curve.probabilities[0].double(), expected, atol=1e-6, rtol=0)
    assert curve.score.item() == pytest.approx(0.3125)


def test_insertion_starts_from_blurred_input():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 12)
    weight = torch.rand(1, 1, 12, 12)
    maps = torch.rand(2, 1, 12, 12)
    curve = insertion(LinearScore(weight), x, maps, target=0, n_steps=6, blur_sigma=2.0, activation="none")
    blurred = gaussian_blur(x, 2.0)
    torch.testing.assert_close(curve.probabilities[:, 0], (weight * blurred).flatten(1).sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(curve.probabilities[:, -1], (weight * x).flatten(1).sum(1), rtol=1e-5, atol=1e-6)


def test_gaussian_blur_matches_scipy():
    x = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    ours = gaussian_blur(x, 2.0)[0, 0].numpy()
    reference = ndimage.gaussian_filter(x[0, 0].numpy().astype(np.float64), 2.0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(ours, reference, atol=5e-3)


# --- AOPC, most relevant first (Samek et al. 2017) ----------------------------------------------------


def patch_case() -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 patches of a 4x4 image: weight totals TL .4, TR .1, BL .3, BR .2; relevance sums 10, 3, 7, 1."""
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2, :2], weight[..., :2, 2:], weight[..., 2:, :2], weight[..., 2:, 2:] = 0.1, 0.025, 0.075, 0.05
    relevance = torch.zeros(1, 1, 4, 4)
    relevance[..., :2, :2] = 2.5
    relevance[..., 0, 3] = 3.0  # the single largest pixel sits in a patch of small total relevance
    relevance[..., 2:, :2] = 1.75
    relevance[..., 2:, 2:] = 0.25
    return weight, relevance


def test_aopc_morf_orders_patches_by_summed_relevance():
    weight, relevance = patch_case()
    model, x = LinearScore(weight), torch.ones(1, 1, 4, 4)
    curve = aopc_morf(model, x, relevance, target=0, patch_size=2, activation="none")
    # removal order TL, BL, TR, BR: scores 1, .6, .3, .2, 0
    expected = torch.tensor([1, 0.6, 0.3, 0.2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(curve.probabilities[0].double(), expected)
    assert curve.score.item() == pytest.approx((0 + 0.4 + 0.7 + 0.8 + 1.0) / 5)
    short = aopc_morf(model, x, relevance, target=0, patch_size=2, num_steps=2, activation="none")
    assert short.score.item() == pytest.approx((0 + 0.4 + 0.7) / 3)
    torch.testing.assert_close(short.x, torch.tensor([0.0, 1.0, 2.0]))


def test_aopc_morf_3d_slabs_and_partial_patches():
    weight = torch.zeros(1, 1, 4, 4, 4)
    weight[:, :, :2] = 0.3 / 32
    weight[:, :, 2:] = 0.7 / 32
    relevance = torch.zeros(1, 1, 4, 4, 4)
    relevance[:, :, 2:] = 1.0
    x = torch.ones(1, 1, 4, 4, 4)
    curve = aopc_morf(LinearScore(weight), x, relevance, target=0, patch_size=(2, 4, 4), activation="none")
    torch.testing.assert_close(curve.probabilities[0].double(), torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64))
    assert curve.score.item() == pytest.approx(1.7 / 3)
    # 5x5 with 2x2 patches: a 3x3 grid whose last row and column are partial; removing all 9 clears the image
    model, ones, relevance = LinearScore(torch.rand(1, 1, 5, 5)), torch.ones(1, 1, 5, 5), torch.rand(1, 1, 5, 5)
    full = aopc_morf(model, ones, relevance, target=0, patch_size=2, activation="none")
    assert full.probabilities.shape == (1, 10)
    assert full.probabilities[0, -1].item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(InputError, match="num_steps must be in \\[1, 9\\]"):
        aopc_morf(model, ones, relevance, patch_size=2, num_steps=10)


# --- average drop / increase in confidence (Grad-CAM++) -----------------------------------------------


def test_average_drop_and_increase_two_samples_by_hand():
    # W = +0.1 on the left half, -0.05 on the right half: every row contributes 0.1, so Y = 0.4 for ones
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., :2], weight[..., 2:] = 0.1, -0.05
    x = torch.ones(2, 1, 4, 4)
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2], maps[0, 0, 2] = 1.0, 0.5  # O = 0.2 + 0.5 * 0.1 = 0.25 -> drop 37.5 %
    maps[1, 0, :, :2] = 1.0  # keeps only the positive evidence: O = 0.8 > Y
    raw = maps * 10 + 3  # min-max normalisation recovers the maps above
    result = average_drop_increase(LinearScore(weight), x, raw, target=0, activation="none")
    torch.testing.assert_close(result.original.double(), torch.tensor([0.4, 0.4], dtype=torch.float64))
    torch.testing.assert_close(result.masked.double(), torch.tensor([0.25, 0.8], dtype=torch.float64))
    torch.testing.assert_close(result.drop.double(), torch.tensor([37.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(result.increase, torch.tensor([0.0, 1.0]))
    assert result.average_drop() == pytest.approx(18.75)
    assert result.increase_in_confidence() == pytest.approx(0.5)
    unnormalised = average_drop_increase(LinearScore(weight), x, maps, target=0, normalize=False, activation="none")
    torch.testing.assert_close(unnormalised.drop, result.drop)


def test_average_drop_rejects_non_positive_scores():
    with pytest.raises(InputError, match="sample 0"):
        model = LinearScore(-torch.ones(1, 1, 4, 4))
        average_drop_increase(model, torch.ones(1, 1, 4, 4), torch.rand(1, 1, 4, 4), target=0, activation="none")


# --- shared behaviour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batched_equals_per_sample(spatial_dims):
    model = small_cnn(spatial_dims)
    generator = torch.Generator().manual_seed(3)
    shape = (3, 2, *([6] * spatial_dims))
    x = torch.rand(shape, generator=generator)
    maps = torch.rand((3, 1, *shape[2:]), generator=generator)
    metrics = {
        "aoppc": lambda xs, ms, t: aoppc(model, xs, ms, t, batch_size=7),
        "deletion": lambda xs, ms, t: deletion(model, xs, ms, t, n_steps=10, batch_size=7),
        "insertion": lambda xs, ms, t: insertion(model, xs, ms, t, n_steps=10, blur_sigma=1.0, batch_size=7),
        "aopc": lambda xs, ms, t: aopc_morf(model, xs, ms, t, patch_size=3, batch_size=7),
    }
    for name, metric in metrics.items():
        batched = metric(x, maps, None)
        singles = [metric(x[i : i + 1], maps[i : i + 1], None) for i in range(3)]
        torch.testing.assert_close(batched.probabilities, torch.cat([s.probabilities for s in singles]), msg=name)
        torch.testing.assert_close(batched.score, torch.cat([s.score for s in singles]), msg=name)
    batched = average_drop_increase(model, x, maps, [0, 1, 2])
    singles = [average_drop_increase(model, x[i : i + 1], maps[i : i + 1], i) for i in range(3)]
    torch.testing.assert_close(batched.drop, torch.cat([s.drop for s in singles]))


def test_all_copies_are_scored_in_large_batches_and_numpy_is_accepted():
    weight, importance = ranked_weights()
    model = LinearScore(weight)
    x, maps = np.ones((2, 1, 4, 4), dtype=np.float32), importance.expand(2, 1, 4, 4).numpy()
    curve = deletion(model, x, maps, target=0, n_steps=16, activation="none", batch_size=64)
    # 2 samples x 17 steps = 34 copies in one forward pass
    assert model.calls == 1 and model.largest_batch == 34
    assert curve.probabilities.shape == (2, 17)


def test_default_target_is_predicted_class_and_targets_are_per_sample():
    model = LinearScore(torch.full((1, 1, 4, 4), 0.1))
    x = torch.cat([torch.ones(1, 1, 4, 4), -torch.ones(1, 1, 4, 4)])  # s = 1.6 and -1.6: classes 0 and 1
    maps = torch.arange(32.0).view(2, 1, 4, 4)
    predicted = deletion(model, x, maps, target=None, n_steps=4)
    explicit = deletion(model, x, maps, target=[0, 1], n_steps=4)
    torch.testing.assert_close(predicted.probabilities, explicit.probabilities)
    expected_start = 1 / (1 + math.exp(-3.2))
    assert predicted.probabilities[:, 0].tolist() == pytest.approx([expected_start, expected_start], rel=1e-6)


def test_input_errors_name_the_problem():
    model = small_cnn(2)
    x = torch.rand(2, 2, 6, 6)
    with pytest.raises(InputError, match=r"maps must have shape \(2, 1, 6, 6\)"):
        deletion(model, x, torch.rand(2, 1, 5, 6))
    with pytest.raises(InputError, match="target class 3"):
        aoppc(model, x, torch.rand(2, 1, 6, 6), target=3)
    with pytest.raises(InputError, match="thresholds must lie in"):
        aoppc(model, x, torch.rand(2, 1, 6, 6), thresholds=[0.0, 0.5])
    with pytest.raises(InputError, match="activation"):
        class_scores(torch.rand(2, 3), torch.tensor([0, 1]), activation="relu")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="start must be 'blur'"):
        insertion(model, x, torch.rand(2, 1, 6, 6), start="black")  # type: ignore[arg-type]
