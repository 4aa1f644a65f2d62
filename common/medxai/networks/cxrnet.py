"""CXRNet: an encoder-decoder-encoder network that classifies a chest X-ray and reconstructs an explanation image
(seed 001 sec. III-B, Figs. 4-6, eq. 3-6).

- The **first encoder** (a trunk from :func:`~medxai.networks.backbones.create_backbone`, ResNet-50 by default)
  maps the image to multi-scale feature maps; average pooling and a fully connected layer classify the
  deepest one (sec. III-B-b). These are the logits used for prediction (sec. III-B-1: "fed into a
  classifier for identifying the disease types"), returned by :meth:`CXRNet.forward`.
- The **decoder** (Fig. 5, eq. 3) is U-Net-like: each level upsamples x2 by pixel shuffle with ICNR
  initialisation (:class:`monai.networks.blocks.SubpixelUpsample`, Aitken et al. 2017, the paper's [43]),
  concatenates the encoder feature map of the same resolution (the *skip*), and applies ``F``: a ReLU and
  two (3x3 conv, BN, LeakyReLU 0.1) blocks (eq. 4). A 1x1 convolution then gives the **reconstruction**, an
  image of the input's size and channels: the pixel-level explanation of Fig. 12c.
- The **second encoder** is the first one applied again (the same module, so one parameter set) to the
  reconstruction, and classifies it; the fusion loss :class:`medxai.losses.FusionLoss` (eq. 5-6) sums both
  cross-entropies, which makes the decoder keep the image content the classifier needs.

Encoder levels. The trunk's layers are run one by one and grouped into *stages* that end where the
resolution halves next, so the encoder exposes the last feature map at every stride. Torchvision ResNets
give 5 levels (strides 2, 4, 8, 16, 32: ``relu``, ``layer1`` .. ``layer4``), VGG gives 6 (strides 1 .. 32, the
maps before each max pooling and the last pooling). The decoder has one level per halving of the
resolution, ``log2(stride)``: 5 for ResNet / VGG / DenseNet, as in the paper; the level at stride ``s`` takes
the encoder map at stride ``s`` as skip, or the input image at stride 1 when the trunk has no full-resolution
map (ResNet; as in fastai's ``DynamicUnet``, which the paper's decoder follows). A trunk with a smaller total
stride gets fewer levels: the CPU test trunk ``small_resnet`` (strides 1, 2, 4, 8) has 3 decoder levels and
takes inputs whose size is a multiple of 8. Trunks whose layers are not an ``nn.Sequential`` at power-of-two
strides (Inception v3, SqueezeNet, ShuffleNet, timm models) are refused with an error naming them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, SubpixelUpsample

from medxai.errors import InputError
from medxai.networks.backbones import SmallResNetTrunk, TinyTrunk, create_backbone

__all__ = ["CXRNet", "CXRDecoderBlock", "split_trunk_stages"]

#: Decoder widths of the 5 levels (deepest first); a trunk with L < 5 levels uses the last L entries.
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
#: Side of the probe image used to measure the stride of every trunk layer.
_PROBE_SIZE = 64


def _trunk_layers(trunk: nn.Module, backbone: str) -> List[Tuple[str, nn.Module]]:
    """The trunk as an ordered list of layers whose composition is the trunk's forward.

    Plain ``nn.Sequential`` containers are flattened (VGG / DenseNet ``features``; ResNet stages stay whole,
    their blocks are flattened too and regrouped by stride later). The two registered CPU trunks, whose
    ``forward`` is written out, are rebuilt from their own modules.
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
            f"CXRNet: backbone '{backbone}' ({type(trunk).__name__}) is not a sequential trunk; CXRNet needs "
            "the stage outputs of torchvision / MONAI ResNets, VGG, DenseNet or the 'tiny' / 'small_resnet' trunks."
        )
    layers: List[Tuple[str, nn.Module]] = []
    for name, child in trunk.named_children():
        if type(child) is nn.Sequential:
            layers.extend((f"{name}_{sub}", module) for sub, module in _trunk_layers(child, backbone))
        else:
            layers.append((name, child))
    return layers


def split_trunk_stages(
    trunk: nn.Module, in_channels: int, backbone: str = "trunk"
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
        Name used in error messages.

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
    layers = _trunk_layers(trunk, backbone)
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
                    f"CXRNet: backbone '{backbone}' layer '{name}' maps a {_PROBE_SIZE}x{_PROBE_SIZE} image to "
                    f"shape {list(x.shape)}, not a power-of-two stride; CXRNet's pixel-shuffle decoder needs "
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
        raise InputError(f"CXRNet: backbone '{backbone}' does not downsample (total stride {stage_strides[-1]}).")
    return stages, stage_strides, stage_channels


class CXRDecoderBlock(nn.Module):
    """One decoder level of CXRNet (seed 001 Fig. 5, eq. 3): ``D_n = F(concat(U(D_{n-1}), E_skip))``.

    ``U`` is a x2 pixel shuffle (sub-pixel convolution) whose 3x3 convolution has ICNR-initialised weights
    (:func:`monai.networks.utils.icnr_init`) and a zero bias, so at initialisation every 2x2 output block
    repeats one value: the upsampling starts as nearest-neighbour upsampling of the convolution output, free
    of checkerboard artefacts (Aitken et al. 2017). ``blur=True`` adds MONAI's pad-and-average-pool
    (``apply_pad_pool``, Sugawara et al. 2019). ``F`` is a ReLU on the concatenation followed by two
    (3x3 conv, BatchNorm, LeakyReLU 0.1) blocks (eq. 4).

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


class CXRNet(nn.Module):
    """Encoder-decoder-encoder classifier with a pixel-level explanation image (seed 001 Fig. 4).

    Parameters
    ----------
    backbone
        Encoder trunk for :func:`~medxai.networks.backbones.create_backbone` (seed 001: ResNet-50 by default;
        ResNet-34, VGG16/19 are also evaluated there). See the module docstring for the supported trunks.
    num_classes
        Classes (4 in the paper: healthy, bacterial pneumonia, viral non-COVID pneumonia, COVID-19).
    in_channels
        Image channels (1 for a grey CXR); the reconstruction has the same number.
    pretrained, pretrained_path
        ImageNet weights (opt-in) or a local state dict for the encoder, see
        :func:`~medxai.networks.backbones.create_backbone`. The decoder and the head start random.
    decoder_channels
        Widths of the decoder levels, deepest first (default ``(256, 128, 64, 32, 16)``). A trunk with fewer
        than 5 levels uses the last entries; more entries than levels is fine, fewer is an error.
    blur
        MONAI's pad + average pool after each pixel shuffle (``SubpixelUpsample(apply_pad_pool=True)``).
    negative_slope
        LeakyReLU slope of the decoder (eq. 4: 0.1).
    sigmoid_output
        Squash the reconstruction into (0, 1), the intensity range of the preprocessed (CLAHE) input, which
        also makes it a map whose pixel values are the importances thresholded by the AOPPC (eq. 12);
        ``False`` leaves it linear.
    shared_head
        Use one classifier (average pooling + fully connected layer) for both encoders, i.e. the second
        encoder *with its classifier* is the first one (sec. III-B-c calls the two "classifiers (i.e.
        encoder)"). ``False`` gives the second encoder its own fully connected layer.
    return_details
        When ``True`` :meth:`forward` returns :meth:`forward_details`'s dict (training with
        :class:`medxai.losses.FusionLoss`); otherwise the first encoder's logits only, as MONAI inferers,
        ``verify_net_in_out`` and MONAI Label expect. An attribute, switchable after construction.

    Shapes
    ------
    Input ``x``: (B, in_channels, H, W) with ``H`` and ``W`` multiples of :attr:`size_divisor` (the trunk's
    total stride: 32 for ResNet / VGG / DenseNet). :meth:`forward` returns logits (B, num_classes) of the
    first encoder on the input (the prediction; only the encoder runs). :meth:`forward_details` returns

    - ``logits`` (B, num_classes): first encoder on the input (= :meth:`forward`);
    - ``logits_reconstruction`` (B, num_classes): second encoder on the reconstruction;
    - ``reconstruction`` (B, in_channels, H, W): the decoder's image, the explanation of Fig. 12c.

    BatchNorm. In training both passes normalise by their own batch statistics, but only the first pass
    (the input images) updates the encoder's running statistics, which ``eval`` mode uses for the prediction
    on inputs. The reconstructions have a distribution of their own: in a 30-step run on blob images like
    the tests', running statistics estimated over both passes gave chance accuracy in ``eval`` mode, over the
    inputs alone 100 %.
    (A TorchScript-compiled model in training mode lets the second pass update them too.)

    Scriptable with :func:`torch.jit.script`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 4,
        in_channels: int = 1,
        pretrained: bool = False,
        pretrained_path: Optional[Union[str, Path]] = None,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        blur: bool = False,
        negative_slope: float = 0.1,
        sigmoid_output: bool = True,
        shared_head: bool = True,
        return_details: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"CXRNet: num_classes must be >= 2 (softmax cross-entropy), got {num_classes}.")
        trunk, num_features = create_backbone(backbone, in_channels, pretrained, pretrained_path)
        stages, strides, channels = split_trunk_stages(trunk, in_channels, backbone)
        num_levels = int(round(math.log2(strides[-1])))
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) < num_levels or min(decoder_channels) < 1:
            raise InputError(
                f"CXRNet: backbone '{backbone}' needs {num_levels} positive decoder widths, got {decoder_channels}."
            )
        self.encoder = stages
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.num_features = int(channels[-1])
        self.size_divisor = int(strides[-1])
        self.stage_strides: List[int] = list(strides)

        # decoder level i upsamples to stride strides[-1] / 2^(i+1); its skip is the last encoder stage at
        # that stride (index into the stage outputs), -1 for the input image, -2 for none
        widths = decoder_channels[len(decoder_channels) - num_levels :]
        blocks, skip_index, previous = nn.ModuleList(), [], self.num_features
        for level, width in enumerate(widths):
            stride = self.size_divisor >> (level + 1)
            if stride in strides[:-1]:
                index = strides.index(stride)
                skip, skip_channels = index, channels[index]
            elif stride == 1:
                skip, skip_channels = -1, self.in_channels
            else:
                skip, skip_channels = -2, 0
            blocks.append(CXRDecoderBlock(previous, skip_channels, width, blur, negative_slope))
            skip_index.append(skip)
            previous = width
        self.decoder = blocks
        self.skip_index: List[int] = skip_index
        self.reconstruction_head = nn.Conv2d(previous, self.in_channels, kernel_size=1)
        self.output_activation: nn.Module = nn.Sigmoid() if sigmoid_output else nn.Identity()

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, self.num_classes)
        self.classifier_reconstruction: Optional[nn.Linear] = (
            None if shared_head else nn.Linear(self.num_features, self.num_classes)
        )
        self.return_details = return_details

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"CXRNet expects images (B, {self.in_channels}, H, W), got shape {list(x.shape)}."
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % self.size_divisor != 0 or w % self.size_divisor != 0 or h == 0 or w == 0:
            raise InputError(
                f"CXRNet: input size {h}x{w} is not a multiple of {self.size_divisor} (the encoder's total stride, "
                f"one x2 pixel-shuffle level per halving); resize or pad the image, e.g. to "
                f"{max(1, round(h / self.size_divisor)) * self.size_divisor}x"
                f"{max(1, round(w / self.size_divisor)) * self.size_divisor}."
            )

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder stage outputs for images (B, C_in, H, W): one map per stride, the deepest last."""
        features: List[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        return features

    @torch.jit.export
    def decode(self, features: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, C_in, H, W) from the encoder outputs of ``x`` (eq. 3; ``x`` is the last skip)."""
        out = features[-1]
        for level, block in enumerate(self.decoder):
            index = self.skip_index[level]
            if index == -2:
                out = block(out, None)
            elif index == -1:
                out = block(out, x)
            else:
                out = block(out, features[index])
        return self.output_activation(self.reconstruction_head(out))

    @torch.jit.export
    def classify(self, feature_map: torch.Tensor, reconstruction: bool = False) -> torch.Tensor:
        """Logits (B, num_classes) of the deepest encoder map (B, K, h, w): average pooling + FC (sec. III-B-b).

        ``reconstruction=True`` uses the second encoder's classifier (the same one when ``shared_head``).
        """
        pooled = torch.flatten(self.pool(feature_map), 1)
        head = self.classifier_reconstruction
        if reconstruction and head is not None:
            return head(pooled)
        return self.classifier(pooled)

    @torch.jit.unused
    def _encode_keeping_norm_statistics(self, reconstruction: torch.Tensor) -> List[torch.Tensor]:
        """The second encoder pass in training: batch statistics normalise as usual (gradients unchanged), but
        the running statistics (BatchNorm buffers) keep those of the input images.

        See the class docstring (BatchNorm): the running statistics serve the prediction on input images.
        """
        # the second pass updates throw-away copies; the original buffer objects are put back untouched (no
        # in-place restore, which would invalidate tensors autograd saved, and DDP keeps its buffer handles)
        originals = []
        for module in self.encoder.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    originals.append((module, name, buffer))
                    module._buffers[name] = buffer.clone()
        try:
            features = self.encode(reconstruction)
        finally:
            for module, name, buffer in originals:
                module._buffers[name] = buffer
        return features

    @torch.jit.export
    def forward_details(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Both encoders' logits and the reconstruction (see the class docstring) for images (B, C_in, H, W)."""
        self._check_input(x)
        if not torch.jit.is_scripting():
            x = x.as_subclass(torch.Tensor)  # MONAI MetaTensor batches: the network needs only the values
        features = self.encode(x)
        reconstruction = self.decode(features, x)
        if self.training and not torch.jit.is_scripting():
            second = self._encode_keeping_norm_statistics(reconstruction)
        else:
            second = self.encode(reconstruction)  # the second encoder: the same modules, weights shared
        return {
            "logits": self.classify(features[-1], False),
            "logits_reconstruction": self.classify(second[-1], True),
            "reconstruction": reconstruction,
        }

    def forward(
        self, x: torch.Tensor, return_details: Optional[bool] = None
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits (B, num_classes) of the first encoder, or the :meth:`forward_details` dict when ``return_details``.

        ``return_details=None`` uses the ``return_details`` attribute. Without details only the encoder runs
        (the decoder and the second encoder are not needed for the prediction).
        """
        want = self.return_details if return_details is None else return_details
        if want:
            return self.forward_details(x)
        self._check_input(x)
        if not torch.jit.is_scripting():
            x = x.as_subclass(torch.Tensor)
        return self.classify(self.encode(x)[-1], False)
