"""Input sizes of the 12 ImageNet CNNs of Alshazly et al. 2021 (seed 004, Table 1), per backbone name.

Table 1 lists, for each network, its default (ImageNet) input size and the *custom input size* the authors
found best for CT slices; images are embedded into a canvas of that size without changing their aspect ratio
(sec. 4, :class:`medxai.transforms.canvas.AspectCanvas`). Every size here is ``(H, W)`` (rows, columns),
MONAI's and torch's axis order, ready for ``AspectCanvas(spatial_size=canvas_size(name))``.

Size convention. The paper writes sizes as ``a x b`` without saying which is the height. We read the
custom sizes as **width x height**, so that the paper's "349 x 253" is the canvas ``(H, W) = (253, 349)``:
an axial chest CT slice shows a body cross-section wider from left to right than from front to back, and
the paper chooses a canvas to hold whole slices with their aspect ratio kept and the least padding
(sec. 4), which a landscape canvas (aspect W / H of 1.24 to 1.43 here) does; a portrait canvas would
leave about half of its area as padding around such slices. (The default sizes are square, so the
question does not arise for them.) To use the other reading, pass ``canvas_size(name)[::-1]``.

Backbone names are those of :mod:`medxai.networks.backbones`, with these choices:

- ``squeezenet1_0`` for SqueezeNet: the paper cites the original SqueezeNet paper [39] (version 1.0;
  version 1.1 appeared only in the authors' code release), its default input 227 x 227 is the original
  Caffe model's, and its 0.73 M parameters are nearer the SqueezeNet 1.0 trunk (735,424 parameters
  without the 1000-class convolution) than the SqueezeNet 1.1 trunk (722,496).
- ``shufflenet_v2_x1_0`` for ShuffleNet: the paper used ShuffleNet (v1, [43], 0.34 M parameters), which
  torchvision does not have; v2 at width 1.0 is the closest registered trunk.
- ``xception`` is timm's ``legacy_xception`` (Chollet 2017).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from medxai.errors import InputError

__all__ = ["InputSize", "INPUT_SIZES", "PAPER_NAMES", "canvas_size"]


class InputSize(NamedTuple):
    """Default ImageNet input size and the paper's custom CT input size of one network, each ``(H, W)``."""

    default: tuple[int, int]
    custom: tuple[int, int]


def _wxh(width: int, height: int) -> tuple[int, int]:
    """A size written ``width x height`` in Table 1, as ``(H, W)``."""
    return height, width


#: Table 1 of seed 004, by backbone registry name; custom sizes transcribed as printed (``W x H``).
INPUT_SIZES: Mapping[str, InputSize] = MappingProxyType(
    {
        "squeezenet1_0": InputSize(_wxh(227, 227), _wxh(335, 255)),
        "shufflenet_v2_x1_0": InputSize(_wxh(224, 224), _wxh(321, 225)),
        "resnet18": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "resnet50": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "resnet101": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "resnext50_32x4d": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "resnext101_32x8d": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "inception_v3": InputSize(_wxh(299, 299), _wxh(331, 267)),
        "xception": InputSize(_wxh(299, 299), _wxh(327, 231)),
        "densenet121": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "densenet169": InputSize(_wxh(224, 224), _wxh(349, 253)),
        "densenet201": InputSize(_wxh(224, 224), _wxh(349, 253)),
    }
)

#: The model names of Table 1, by backbone registry name (for results tables).
PAPER_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "squeezenet1_0": "SqueezeNet",
        "shufflenet_v2_x1_0": "ShuffleNet",
        "resnet18": "ResNet18",
        "resnet50": "ResNet50",
        "resnet101": "ResNet101",
        "resnext50_32x4d": "ResNeXt50",
        "resnext101_32x8d": "ResNeXt101",
        "inception_v3": "InceptionV3",
        "xception": "Xception",
        "densenet121": "DenseNet121",
        "densenet169": "DenseNet169",
        "densenet201": "DenseNet201",
    }
)


def canvas_size(name: str, custom: bool = True) -> tuple[int, int]:
    """Input size ``(H, W)`` of backbone ``name`` from seed 004's Table 1.

    Parameters
    ----------
    name
        A backbone registry name from :data:`INPUT_SIZES` (case-insensitive), e.g. ``"resnet50"``.
    custom
        ``True``: the paper's custom CT input size (e.g. ``(253, 349)`` for the ResNets); ``False``: the
        network's default square ImageNet size (e.g. ``(224, 224)``).

    Returns
    -------
    (H, W)
        Canvas size for :class:`medxai.transforms.canvas.AspectCanvas`.

    Raises
    ------
    InputError
        For a name that is not one of the paper's 12 networks, listing the known names.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in INPUT_SIZES:
        raise InputError(
            f"no Table 1 input size for backbone {name!r} (seed 004); known names: {', '.join(INPUT_SIZES)}."
        )
    sizes = INPUT_SIZES[key]
    return sizes.custom if custom else sizes.default
