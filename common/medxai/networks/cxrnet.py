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
The stage split and the decoder (:func:`~medxai.networks.subpixel.split_trunk_stages`,
:class:`~medxai.networks.subpixel.SubpixelDecoder`) live in :mod:`medxai.networks.subpixel`, shared with the
segmentation U-Net of seed 003 (:class:`~medxai.networks.subpixel.SubpixelUNet`); ``CXRDecoderBlock`` is
:class:`~medxai.networks.subpixel.SubpixelDecoderBlock`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from medxai.errors import InputError
from medxai.networks.backbones import create_backbone
from medxai.networks.subpixel import (
    DEFAULT_DECODER_CHANNELS,
    SubpixelDecoder,
    SubpixelDecoderBlock,
    check_image_input,
    split_trunk_stages,
)
from medxai.networks.wrappers import plain_tensor

__all__ = ["CXRNet", "CXRDecoderBlock", "split_trunk_stages"]

#: The decoder level of CXRNet, now shared with :class:`~medxai.networks.subpixel.SubpixelUNet` (seed 003).
CXRDecoderBlock = SubpixelDecoderBlock


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
        stages, strides, channels = split_trunk_stages(trunk, in_channels, backbone, owner="CXRNet")
        self.encoder = stages
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.num_features = int(channels[-1])
        self.size_divisor = int(strides[-1])
        self.stage_strides: List[int] = list(strides)
        # an nn.ModuleList of the levels: state-dict keys stay decoder.<level>.*
        self.decoder = SubpixelDecoder(
            strides, channels, self.in_channels, decoder_channels, blur, negative_slope, "CXRNet", backbone
        )
        self.skip_index: List[int] = list(self.decoder.skip_index)
        self.reconstruction_head = nn.Conv2d(self.decoder.out_channels, self.in_channels, kernel_size=1)
        self.output_activation: nn.Module = nn.Sigmoid() if sigmoid_output else nn.Identity()

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, self.num_classes)
        self.classifier_reconstruction: Optional[nn.Linear] = (
            None if shared_head else nn.Linear(self.num_features, self.num_classes)
        )
        self.return_details = return_details

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_channels, self.size_divisor, "CXRNet")

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
        return self.output_activation(self.reconstruction_head(self.decoder(features, x)))

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
            x = plain_tensor(x)  # MONAI MetaTensor batches: the network needs only the values
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
            x = plain_tensor(x)
        return self.classify(self.encode(x)[-1], False)
