"""Sub-pixel convolution decoders on multi-scale encoders, and a ResNet-50 U-Net built from them.

Two papers use the same decoder: CXRNet's (seed 001 Fig. 5, eq. 3), which reconstructs the input image, and
the segmentation U-Net of the thick/thin brain-ventricle paper (seed 003 sec. 3.3.1, Fig. 9), whose decoder
layers are ``F_L = SP(W_L * F_{L-1} + b_L)`` (eq. 13): a convolution followed by the periodic shuffle ``SP``
that rearranges (H, W, C r^2) into (rH, rW, C), here with r = 2.

- :func:`split_trunk_stages` runs a trunk from :func:`~medxai.networks.backbones.create_backbone` layer by
  layer and groups its layers into *stages* that end where the resolution halves next, so the encoder exposes
  its last feature map at every stride. Torchvision ResNets give 5 stages (strides 2, 4, 8, 16, 32: ``relu``,
  ``layer1`` .. ``layer4``), VGG gives 6 (strides 1 .. 32, the maps before each max pooling and the last
  pooling). Trunks whose layers are not an ``nn.Sequential`` at power-of-two strides (Inception v3,
  SqueezeNet, ShuffleNet, timm models) are refused with an error naming them.
- :class:`SubpixelDecoderBlock` is one decoder level: a x2 pixel shuffle with ICNR initialisation (MONAI's
  :class:`~monai.networks.blocks.SubpixelUpsample`), the skip concatenation and two conv-BN-LeakyReLU blocks.
- :class:`SubpixelDecoder` stacks one block per halving of the resolution, ``log2(total stride)`` levels
  (5 for ResNet / VGG / DenseNet); the level at stride ``s`` takes the last encoder map at stride ``s`` as
  skip, or the input image at stride 1 when the trunk has no full-resolution map (ResNet; as in fastai's
  ``DynamicUnet``, which both papers' decoders follow). A trunk with a smaller total stride gets fewer levels:
  the CPU test trunk ``small_resnet`` (strides 1, 2, 4, 8) has 3 levels and takes inputs whose size is a
  multiple of 8.
- :class:`SubpixelUNet` is seed 003's segmentation network: that encoder (ResNet-50 by default, ImageNet
  weights opt-in), that decoder and a 1x1 convolution to the class logits.
"""

import math
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, SubpixelUpsample

from medxai.errors import InputError
from medxai.networks.backbones import SmallResNetTrunk, TinyTrunk, create_backbone
from medxai.networks.wrappers import plain_tensor

__all__ = [
    "DEFAULT_DECODER_CHANNELS",
    "SubpixelDecoder",
    "SubpixelDecoderBlock",
    "SubpixelUNet",
    "check_image_input",
    "split_trunk_stages",
]

#: Decoder widths of the 5 levels (deepest first); a trunk with L < 5 levels uses the last L entries.
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
#: Side of the probe image used to measure the stride of every trunk layer.
_PROBE_SIZE = 64


def _trunk_layers(trunk: nn.Module, backbone: str, owner: str = "network") -> List[Tuple[str, nn.Module]]:
    """The trunk as an ordered list of layers whose composition is the trunk's forward.

    Plain ``nn.Sequential`` containers are flattened (VGG / DenseNet ``features``; ResNet stages stay whole,
    their blocks are flattened too and regrouped by stride later). The two registered CPU trunks, whose
    ``forward`` is written out, are rebuilt from their own modules. ``owner`` names the calling network in
    error messages.
    """
    if isinstance(trunk, SmallResNetTrunk):
        items = [("conv1", trunk.conv1), ("bn1", trunk.bn1), ("relu", nn.ReLU())]
        return items + [(name, getattr(trunk, name)) for name in ("layer1", "layer2", "layer3")]
    if isinstance(trunk, TinyTrunk):
        return [
            ("conv1", trunk.conv1), ("bn1", trunk.bn1), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", trunk.conv2), ("bn2", trunk.bn2), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ]  # fmt: skip
    if type(trunk) is not nn.Sequential:
        raise InputError(
            f"{owner}: backbone '{backbone}' ({type(trunk).__name__}) is not a sequential trunk; {owner} needs "
            "the stage outputs of torchvision / MONAI ResNets, VGG, DenseNet or the 'tiny' / 'small_resnet' trunks."
        )
    layers: List[Tuple[str, nn.Module]] = []
    for name, child in trunk.named_children():
        if type(child) is nn.Sequential:
            layers.extend((f"{name}_{sub}", module) for sub, module in _trunk_layers(child, backbone, owner))
        else:
            layers.append((name, child))
    return layers


def split_trunk_stages(
    trunk: nn.Module, in_channels: int, backbone: str = "trunk", owner: str = "network"
) -> Tuple[nn.ModuleList, List[int], List[int]]:
    """Group a trunk's layers into stages that each end at the last layer of one resolution.

    The layers are run on a zero probe image (1, in_channels, 64, 64) in ``eval`` mode without gradients
    (BatchNorm statistics are untouched). A stage ends where the next layer changes the resolution, so the
    stage outputs are the trunk's feature maps at every stride, the deepest last.

    Parameters
    ----------
    trunk
        A trunk from :func:`~medxai.networks.backbones.create_backbone`.
    in_channels
        Channels of the trunk's input.
    backbone
        Name of the trunk in error messages.
    owner
        Name of the calling network in error messages (e.g. ``"CXRNet"``).

    Returns
    -------
    (stages, strides, channels)
        ``nn.ModuleList`` of ``nn.Sequential`` stages (the trunk's own modules, not copies), the output
        stride of each stage (powers of two, increasing) and its number of channels.

    Raises
    ------
    InputError
        When the trunk is not sequential or a layer output is not at a power-of-two stride of the probe.
    """
    layers = _trunk_layers(trunk, backbone, owner)
    was_training = trunk.training
    trunk.eval()
    strides, channels = [], []
    with torch.no_grad():
        x = torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE)
        for name, layer in layers:
            x = layer(x)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            stride = _PROBE_SIZE // max(h, 1)
            if x.dim() != 4 or h != w or h * stride != _PROBE_SIZE or stride & (stride - 1) != 0:
                raise InputError(
                    f"{owner}: backbone '{backbone}' layer '{name}' maps a {_PROBE_SIZE}x{_PROBE_SIZE} image to "
                    f"shape {list(x.shape)}, not a power-of-two stride; {owner}'s pixel-shuffle decoder needs "
                    "stage outputs at strides 1, 2, 4, ..."
                )
            strides.append(stride)
            channels.append(int(x.shape[1]))
    trunk.train(was_training)
    stages, stage_strides, stage_channels = nn.ModuleList(), [], []
    current: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, (name, layer) in enumerate(layers):
        current[name] = layer
        if i == len(layers) - 1 or strides[i + 1] != strides[i]:
            stages.append(nn.Sequential(current))
            stage_strides.append(strides[i])
            stage_channels.append(channels[i])
            current = OrderedDict()
    if stage_strides[-1] < 2:
        raise InputError(f"{owner}: backbone '{backbone}' does not downsample (total stride {stage_strides[-1]}).")
    return stages, stage_strides, stage_channels


def check_image_input(x: torch.Tensor, in_channels: int, size_divisor: int, owner: str = "network") -> None:
    """Raise :class:`~medxai.errors.InputError` unless ``x`` is (B, in_channels, H, W) with ``H`` and ``W``
    positive multiples of ``size_divisor``; the message names the shape and the nearest valid size.

    TorchScript-compatible (called from the networks' ``forward``).
    """
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise InputError(f"{owner} expects images (B, {in_channels}, H, W), got shape {list(x.shape)}.")
    h, w = int(x.shape[2]), int(x.shape[3])
    if h % size_divisor != 0 or w % size_divisor != 0 or h == 0 or w == 0:
        raise InputError(
            f"{owner}: input size {h}x{w} is not a multiple of {size_divisor} (the encoder's total stride, "
            f"one x2 pixel-shuffle level per halving); resize or pad the image, e.g. to "
            f"{max(1, round(h / size_divisor)) * size_divisor}x"
            f"{max(1, round(w / size_divisor)) * size_divisor}."
        )


class SubpixelDecoderBlock(nn.Module):
    """One sub-pixel decoder level: ``D_n = F(concat(U(D_{n-1}), E_skip))`` (seed 001 Fig. 5, eq. 3), with
    ``U(D) = SP(W * D + b)`` the sub-pixel convolution of seed 003 eq. 13.

    ``U`` is a x2 pixel shuffle (sub-pixel convolution) whose 3x3 convolution has ICNR-initialised weights
    (:func:`monai.networks.utils.icnr_init`) and a zero bias, so at initialisation every 2x2 output block
    repeats one value: the upsampling starts as nearest-neighbour upsampling of the convolution output, free
    of checkerboard artefacts (Aitken et al. 2017). ``blur=True`` adds MONAI's pad-and-average-pool
    (``apply_pad_pool``, Sugawara et al. 2019). ``F`` is a ReLU on the concatenation followed by two
    (3x3 conv, BatchNorm, LeakyReLU 0.1) blocks (seed 001 eq. 4).

    Parameters
    ----------
    in_channels
        Channels of the previous decoder output ``D_{n-1}``.
    skip_channels
        Channels of the skip map (0: no skip at this level).
    out_channels
        Channels of the upsampled map and of the block output.
    blur
        Apply MONAI's pad + average pool after the pixel shuffle.
    negative_slope
        Slope of the LeakyReLU (0.1 in the paper).

    Shapes
    ------
    ``x``: (B, in_channels, h, w); ``skip``: (B, skip_channels, 2h, 2w) or ``None``; output
    (B, out_channels, 2h, 2w).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        blur: bool = False,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.upsample = SubpixelUpsample(
            spatial_dims=2, in_channels=in_channels, out_channels=out_channels, scale_factor=2, apply_pad_pool=blur
        )
        conv = self.upsample.conv_block
        if isinstance(conv, nn.Conv2d) and conv.bias is not None:
            nn.init.zeros_(conv.bias)  # ICNR covers the weights; equal (zero) biases keep the 2x2 blocks equal
        self.relu = nn.ReLU()
        act = ("leakyrelu", {"negative_slope": negative_slope})
        self.conv1 = Convolution(2, out_channels + skip_channels, out_channels, kernel_size=3, norm="batch", act=act)
        self.conv2 = Convolution(2, out_channels, out_channels, kernel_size=3, norm="batch", act=act)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        up = self.upsample(x)
        if skip is not None:
            up = torch.cat([up, skip], dim=1)
        return self.conv2(self.conv1(self.relu(up)))


class SubpixelDecoder(nn.ModuleList):
    """U-Net decoder of :class:`SubpixelDecoderBlock` levels on a multi-scale encoder (seed 001 eq. 3,
    seed 003 eq. 13): one x2 level per halving of the resolution, from the deepest encoder map to the input's
    resolution.

    The decoder *is* the list of its blocks (an ``nn.ModuleList``: ``len``, iteration and indexing give the
    levels, deepest first, and the state-dict keys are ``<index>.<block keys>``), with a ``forward`` that runs
    them with their skips. Do not append or remove blocks: :attr:`skip_index` is fixed at construction.

    Parameters
    ----------
    encoder_strides
        Output stride of every encoder stage, increasing powers of two (from :func:`split_trunk_stages`); the
        last one, the total stride, sets the number of levels ``log2(encoder_strides[-1])``.
    encoder_channels
        Channels of every encoder stage (same length).
    in_channels
        Channels of the encoder's input image, the skip of the last level when no stage is at stride 1.
    decoder_channels
        Widths of the levels, deepest first (default ``(256, 128, 64, 32, 16)``). With fewer levels than
        entries the last entries are used; fewer entries than levels is an error.
    blur
        MONAI's pad + average pool after each pixel shuffle (``SubpixelUpsample(apply_pad_pool=True)``).
    negative_slope
        LeakyReLU slope of the blocks (0.1).
    owner, backbone
        Names of the calling network and of its trunk, for error messages.

    Attributes
    ----------
    skip_index
        Per level, the index of its skip in the encoder outputs, ``-1`` for the input image, ``-2`` for none.
    out_channels
        Channels of the output, ``decoder_channels[-1]``.

    Shapes
    ------
    ``features``: the encoder outputs, ``features[i]`` (B, encoder_channels[i], H / encoder_strides[i],
    W / encoder_strides[i]); ``x``: the input (B, in_channels, H, W); output (B, out_channels, H, W).

    Raises
    ------
    InputError
        Strides that are not increasing powers of two, mismatched lengths, or too few / non-positive widths.
    """

    def __init__(
        self,
        encoder_strides: Sequence[int],
        encoder_channels: Sequence[int],
        in_channels: int,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        blur: bool = False,
        negative_slope: float = 0.1,
        owner: str = "SubpixelDecoder",
        backbone: Optional[str] = None,
    ) -> None:
        strides, channels = [int(s) for s in encoder_strides], [int(c) for c in encoder_channels]
        if (
            not strides
            or len(strides) != len(channels)
            or any(s < 1 or s & (s - 1) != 0 for s in strides)
            or any(b <= a for a, b in zip(strides, strides[1:]))
            or strides[-1] < 2
        ):
            raise InputError(
                f"{owner}: encoder strides {strides} (channels {channels}) must be increasing powers of two, one per "
                "stage, ending at a total stride >= 2."
            )
        num_levels = int(round(math.log2(strides[-1])))
        widths = [int(c) for c in decoder_channels]
        if len(widths) < num_levels or min(widths, default=0) < 1:
            subject = f"backbone '{backbone}'" if backbone is not None else f"an encoder of total stride {strides[-1]}"
            raise InputError(f"{owner}: {subject} needs {num_levels} positive decoder widths, got {widths}.")
        widths = widths[len(widths) - num_levels :]

        # level i upsamples to stride strides[-1] / 2^(i+1); its skip is the last encoder stage at that stride
        # (index into the stage outputs), -1 for the input image, -2 for none
        blocks: List[nn.Module] = []
        skip_index: List[int] = []
        previous = channels[-1]
        for level, width in enumerate(widths):
            stride = strides[-1] >> (level + 1)
            if stride in strides[:-1]:
                index = strides.index(stride)
                skip, skip_channels = index, channels[index]
            elif stride == 1:
                skip, skip_channels = -1, int(in_channels)
            else:
                skip, skip_channels = -2, 0
            blocks.append(SubpixelDecoderBlock(previous, skip_channels, width, blur, negative_slope))
            skip_index.append(skip)
            previous = width
        super().__init__(blocks)
        self.skip_index: List[int] = skip_index
        self.encoder_strides: List[int] = strides
        self.in_channels = int(in_channels)
        self.out_channels = int(previous)

    def __getitem__(self, idx):  # type: ignore[override]
        # nn.ModuleList rebuilds slices with type(self)(...), which needs this class's constructor arguments
        if isinstance(idx, slice):
            return nn.ModuleList(list(self._modules.values())[idx])
        return super().__getitem__(idx)

    def forward(self, features: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The last decoder map (B, out_channels, H, W) from the encoder outputs of ``x`` (deepest last)."""
        out = features[-1]
        for level, block in enumerate(self):
            index = self.skip_index[level]
            if index == -2:
                out = block(out, None)
            elif index == -1:
                out = block(out, x)
            else:
                out = block(out, features[index])
        return out


class SubpixelUNet(nn.Module):
    """U-Net with a ResNet-50 encoder and a sub-pixel convolution decoder for 2D segmentation
    (seed 003 sec. 3.3.1, Fig. 9, eq. 13).

    The encoder is a trunk from :func:`~medxai.networks.backbones.create_backbone` (ResNet-50 by default: the
    real torchvision ResNet-50 without its pooling and ``fc``), split into one stage per resolution by
    :func:`split_trunk_stages`. The decoder (:class:`SubpixelDecoder`) has one level per halving, each
    ``F_L = SP(W_L * F_{L-1} + b_L)`` (eq. 13, ``SP`` the x2 pixel shuffle, ICNR-initialised) followed by the
    skip concatenation and two conv-BN-LeakyReLU blocks; a 1x1 convolution gives the segmentation logits.

    Why not :class:`monai.networks.nets.FlexibleUNet` with ``upsample="pixelshuffle"``: MONAI's 2D ResNet
    encoders have no ImageNet weights (its ``ResNetEncoder`` pretrained weights are MedicalNet's, 3D only),
    while the paper fine-tunes an ImageNet ResNet-50; ``create_backbone`` loads torchvision's ImageNet
    ResNet-50 from a local file (``pretrained=True`` / ``"auto"`` from the torch hub cache, or
    ``pretrained_path``). The decoder blocks are MONAI's own :class:`~monai.networks.blocks.SubpixelUpsample`
    with :func:`~monai.networks.utils.icnr_init`.

    Parameters
    ----------
    backbone
        Encoder trunk name for :func:`~medxai.networks.backbones.create_backbone` (``"resnet50"``); any trunk
        with a sequential layer list at power-of-two strides (ResNets, VGG, DenseNet, ``small_resnet``).
    in_channels
        Image channels (1 for a grey ultrasound / CT slice).
    out_channels
        Segmentation classes, background included (the logits' channels).
    pretrained
        ImageNet weights for the encoder, opt-in: ``True`` (torchvision's ``DEFAULT`` weights, read from the
        torch hub cache), ``"auto"`` (only if cached, never downloads) or ``False`` (random, default). With
        ``in_channels != 3`` the first convolution's filters are adapted (summed over RGB for one channel).
    pretrained_path
        A local state dict of the full classification model (e.g. a saved torchvision ``resnet50``), loaded
        into the encoder; takes precedence over ``pretrained``. The decoder and head always start random.
    decoder_channels
        Widths of the decoder levels, deepest first (default ``(256, 128, 64, 32, 16)``).
    blur
        MONAI's pad + average pool after each pixel shuffle.
    negative_slope
        LeakyReLU slope of the decoder (0.1).

    Attributes
    ----------
    encoder
        ``nn.ModuleList`` of the encoder stages (ResNet-50: strides 2, 4, 8, 16, 32).
    decoder
        The :class:`SubpixelDecoder`.
    head
        The 1x1 ``nn.Conv2d`` to ``out_channels``.
    latent_layer
        Dotted name of the bottleneck (the deepest encoder stage, ``"encoder.4"`` for ResNet-50), for
        ``net.get_submodule(net.latent_layer).register_forward_hook(...)``.
    size_divisor
        The encoder's total stride (32 for ResNet-50): input sizes must be multiples of it.
    stage_strides, num_features
        Strides of the encoder stages; channels of the bottleneck (2048 for ResNet-50).

    Shapes
    ------
    Input ``x``: (B, in_channels, H, W), ``H`` and ``W`` multiples of :attr:`size_divisor`; a MONAI
    ``MetaTensor`` is accepted (its values are used). :meth:`forward` returns logits (B, out_channels, H, W),
    no activation (use softmax / ``DiceCELoss(softmax=True)``). :meth:`encode` returns the stage outputs,
    ``features[i]`` of shape (B, C_i, H / stage_strides[i], W / stage_strides[i]); the last, the bottleneck,
    is (B, 2048, H / 32, W / 32) for ResNet-50.

    Raises
    ------
    InputError
        Unsupported trunk, unusable weights, ``out_channels < 1``, too few decoder widths; in
        :meth:`forward`, a non-4D input, wrong channels or a size that is not a multiple of ``size_divisor``.

    Scriptable with :func:`torch.jit.script`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        out_channels: int = 4,
        pretrained: Union[bool, str] = False,
        pretrained_path: Optional[Union[str, Path]] = None,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        blur: bool = False,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if int(out_channels) < 1:
            raise InputError(f"SubpixelUNet: out_channels must be >= 1, got {out_channels}.")
        trunk, _ = create_backbone(backbone, in_channels, pretrained, pretrained_path)
        stages, strides, channels = split_trunk_stages(trunk, in_channels, backbone, owner="SubpixelUNet")
        self.encoder = stages
        self.decoder = SubpixelDecoder(
            strides, channels, in_channels, decoder_channels, blur, negative_slope, "SubpixelUNet", backbone
        )
        self.head = nn.Conv2d(self.decoder.out_channels, int(out_channels), kernel_size=1)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.num_features = int(channels[-1])
        self.size_divisor = int(strides[-1])
        self.stage_strides: List[int] = list(strides)
        self.latent_layer: str = f"encoder.{len(stages) - 1}"

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder stage outputs for images (B, C_in, H, W): one map per stride, the deepest last."""
        features: List[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, out_channels, H, W) for images (B, in_channels, H, W)."""
        check_image_input(x, self.in_channels, self.size_divisor, "SubpixelUNet")
        if not torch.jit.is_scripting():
            x = plain_tensor(x)  # MONAI MetaTensor batches: the network needs only the values
        return self.head(self.decoder(self.encode(x), x))
