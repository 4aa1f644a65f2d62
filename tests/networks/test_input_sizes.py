"""Seed 004 Table 1 input sizes per backbone name: values by hand, names registered, forward passes."""

from __future__ import annotations

import pytest
import torch

from medxai.errors import InputError
from medxai.networks.backbones import create_backbone, list_backbones
from medxai.networks.input_sizes import INPUT_SIZES, PAPER_NAMES, canvas_size


@pytest.mark.parametrize(
    ("name", "default", "custom"),
    [
        # Table 1 prints "default" and "custom" as W x H; canvas_size returns (H, W)
        ("squeezenet1_0", (227, 227), (255, 335)),
        ("shufflenet_v2_x1_0", (224, 224), (225, 321)),
        ("resnet18", (224, 224), (253, 349)),
        ("resnext101_32x8d", (224, 224), (253, 349)),
        ("inception_v3", (299, 299), (267, 331)),
        ("xception", (299, 299), (231, 327)),
        ("densenet201", (224, 224), (253, 349)),
    ],
)
def test_table_1_values(name, default, custom):
    assert canvas_size(name) == custom
    assert canvas_size(name, custom=False) == default
    assert canvas_size(name.upper()) == custom


def test_all_twelve_networks_are_registered_backbones():
    assert len(INPUT_SIZES) == 12 and set(PAPER_NAMES) == set(INPUT_SIZES)
    assert set(INPUT_SIZES) <= set(list_backbones())
    for sizes in INPUT_SIZES.values():
        assert sizes.default[0] == sizes.default[1]  # default sizes are square
        assert sizes.custom[1] > sizes.custom[0]  # custom canvases are landscape (W x H reading)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError, match="'vgg16'.*resnet50.*densenet201"):
        canvas_size("vgg16")


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_0"])
def test_small_trunks_run_at_their_custom_size(name):
    trunk, num_features = create_backbone(name, in_channels=3)
    trunk.eval()
    height, width = canvas_size(name)
    with torch.no_grad():
        features = trunk(torch.zeros(1, 3, height, width))
    assert features.shape[:2] == (1, num_features)
    assert features.shape[3] > features.shape[2]  # the landscape canvas gives landscape feature maps
