from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from monai.visualize import OcclusionSensitivity

from medxai.errors import InputError
from medxai.explain.occlusion import Occlusion, target_scores, window_indicators
from medxai.explain.registry import create_explainer


class _PixelLinear(torch.nn.Module):
    """logits = [0, sum(w * x)]: the drop of one patch is sum over the patch of w * (x - baseline)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _cnn(spatial_dims: int, in_channels: int = 2, classes: int = 3) -> torch.nn.Module:
    conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
    pool = torch.nn.AdaptiveAvgPool2d if spatial_dims == 2 else torch.nn.AdaptiveAvgPool3d
    torch.manual_seed(0)
    return torch.nn.Sequential(
        conv(in_channels, 4, 3, padding=1), torch.nn.ReLU(), pool(2), torch.nn.Flatten(), torch.nn.Linear(4 * 2**spatial_dims, classes)
    ).eval()


def test_hand_computed_map_of_a_linear_model():
    # w * (x - b) = [1, 2, 4]; windows [0, 1] and [1, 2] drop 3 and 6; covered once, twice, once
    weight = torch.tensor([[[[1.0, 1.0, 2.0]]]])
    x = torch.tensor([[[[2.0, 3.0, 3.0]]]])
    maps = Occlusion(_PixelLinear(weight), patch_size=(1, 2), stride=1, baseline=1.0, output="logit")(x, 1)
    assert maps.tolist() == [[[[3.0, 4.5, 6.0]]]]


def test_unit_patches_give_weight_times_input_minus_baseline():
    torch.manual_seed(1)
    weight, x = torch.randn(1, 1, 5, 6), torch.randn(2, 1, 5, 6)
    maps = Occlusion(_PixelLinear(weight), patch_size=1, stride=1, baseline=-0.5, output="logit")(x, 1)
    assert torch.allclose(maps, weight * (x + 0.5), atol=1e-6)


def test_window_placement_matches_captum_and_clips_the_last_window():
    ind = window_indicators(size=7, window=3, stride=3)
    assert ind.tolist() == [[1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1]]
    with pytest.raises(InputError, match="larger than the image"):
        window_indicators(size=2, window=3, stride=1)


def test_equals_captum_in_2d_with_per_sample_targets_and_uneven_windows():
    model = _cnn(2)
    x = torch.randn(3, 2, 13, 11, generator=torch.Generator().manual_seed(2))
    targets = [0, 2, 1]
    ours = Occlusion(model, patch_size=(4, 3), stride=(3, 2), baseline=0.5, batch_size=7)(x, targets)
    reference = CaptumOcclusion(lambda z: model(z).softmax(1)).attribute(
        x, sliding_window_shapes=(2, 4, 3), strides=(2, 3, 2), baselines=0.5, target=targets
    )
    assert ours.abs().max() > 1e-3  # the check is not vacuous
    assert torch.allclose(ours[:, 0], reference[:, 0], atol=1e-6)


def test_equals_captum_in_3d_with_logits():
    model = _cnn(3, in_channels=1)
    x = torch.randn(2, 1, 6, 7, 5, generator=torch.Generator().manual_seed(3))
    ours = Occlusion(model, patch_size=3, stride=2, baseline=0.0, output="logit", batch_size=16)(x, [1, 0])
    reference = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(1, 3, 3, 3), strides=(1, 2, 2, 2), target=[1, 0])
    assert ours.shape == (2, 1, 6, 7, 5)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_equals_monai_occlusion_sensitivity_which_takes_one_image_and_returns_occluded_scores():
    """MONAI (batch 1 only) maps f(occluded); ours maps the drop f(x) - f(occluded); same windows when
    (size - patch) is a multiple of the stride (MONAI clamps its last window instead of clipping it)."""
    model = _cnn(2, in_channels=1)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    ours = Occlusion(model, patch_size=4, stride=2, baseline=0.5)(x, 2)
    softmax = lambda out: out.softmax(1)  # noqa: E731
    monai_occ = OcclusionSensitivity(model, mask_size=4, n_batch=10, verbose=False, mode=0.5, overlap=0.5, activate=softmax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="batch size of 1"):
            monai_occ(x)  # the trap: a batch of two is refused
        for b in range(2):
            occluded, _ = monai_occ(x[b : b + 1])
            drop = model(x[b : b + 1]).softmax(1)[0, 2] - occluded[0, 2]
            assert torch.allclose(ours[b, 0], drop.as_tensor().detach(), atol=1e-6)
        # second trap: activate=True picks sigmoid from the INPUT's single channel, not the class count
        sigmoid_scores, _ = OcclusionSensitivity(model, mask_size=4, verbose=False, mode=0.5, overlap=0.5)(x[:1])
    assert not torch.allclose(sigmoid_scores.sum(1), torch.ones(1, 16, 16), atol=1e-2)


def test_batched_equals_per_sample_and_target_none_is_argmax():
    model = _cnn(2)
    x = torch.randn(4, 2, 10, 10, generator=torch.Generator().manual_seed(5))
    explainer = Occlusion(model, patch_size=3, stride=2, baseline="mean", batch_size=13)
    batched = explainer(x)
    predicted = model(x).argmax(1)
    for b in range(4):
        single = explainer(x[b : b + 1], int(predicted[b]))
        assert torch.allclose(batched[b], single[0], atol=1e-6)


def test_mean_baseline_uses_each_samples_channel_means():
    weight = torch.ones(1, 2, 2, 2)
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]]]])  # channel means 4 and 1
    maps = Occlusion(_PixelLinear(weight), patch_size=1, stride=1, baseline="mean", output="logit")(x, 1)
    assert maps[0, 0].tolist() == [[(1 - 4) + (0 - 1), (3 - 4) + (0 - 1)], [(5 - 4) + (0 - 1), (7 - 4) + (4 - 1)]]


def test_runs_under_no_grad_uncovered_voxels_are_zero_and_registry_builds_it():
    weight = torch.ones(1, 1, 1, 5)
    x = torch.ones(1, 1, 1, 5)
    explainer = create_explainer("occlusion", _PixelLinear(weight), patch_size=1, stride=2, output="logit")
    with torch.no_grad():
        maps = explainer(x, 1)
    assert maps.tolist() == [[[[1.0, 0.0, 1.0, 0.0, 1.0]]]]


def test_target_scores_probability_logit_and_single_logit_sigmoid():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert target_scores(logits, torch.tensor([1, 0])).tolist() == pytest.approx([0.5, 1 / (1 + torch.e**-2)])
    assert target_scores(logits, torch.tensor([1, 0]), "logit").tolist() == [0.0, 2.0]
    assert target_scores(torch.tensor([[0.0]]), torch.tensor([0])).tolist() == [0.5]
    with pytest.raises(InputError, match="output"):
        target_scores(logits, torch.tensor([0, 0]), "prob")


def test_bad_arguments_name_the_value():
    model = _cnn(2)
    with pytest.raises(InputError, match="'median'"):
        Occlusion(model, baseline="median")
    with pytest.raises(InputError, match="patch_size"):
        Occlusion(model, patch_size=(2, 2, 2))(torch.zeros(1, 2, 8, 8), 0)
    with pytest.raises(InputError, match="class 5"):
        Occlusion(model)(torch.zeros(1, 2, 8, 8), 5)
