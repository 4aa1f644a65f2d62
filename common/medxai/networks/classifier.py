"""A single-image classifier: a registered trunk, global average pooling and one linear layer (seed 002 sec. II-B).

DeepCOVIDExplainer (Karim et al. 2020) trains VGG-16/19, ResNet-18/34 and DenseNet-161/201 from scratch on
grey chest X-rays with three classes (normal, pneumonia, COVID-19) and explains the best one with Grad-CAM,
Grad-CAM++ and LRP (sec. II-D). :class:`ImageClassifier` builds these networks from the backbone registry
(:func:`~medxai.networks.backbones.create_backbone`) with the head::

    logits = Linear(Dropout(flatten(AdaptiveAvgPool2d(1)(trunk(x)))))

- ResNet: the trunk ends with ``layer4``; the head is torchvision's (``avgpool`` + ``fc``) exactly.
- DenseNet: the registered trunk is ``features`` (ending with ``norm5``) followed by a ``ReLU`` module, the
  ``F.relu`` of torchvision's ``DenseNet.forward``; the head is torchvision's (ReLU -> adaptive average
  pooling -> ``classifier``) exactly, with the ReLU and the pooling as modules (so LRP rules attach to them).
- VGG: *documented deviation*. torchvision's head is a 7x7 adaptive average pooling and three fully
  connected layers (25088-4096-4096-K, about 120 M parameters, 89 % of VGG-16); here it is global average
  pooling and one linear layer (512 K + K parameters), which keeps VGG trainable on a CPU and gives
  Grad-CAM and CAM the same head as the other families.

With ``dropout == 0`` (default) and the same weights the logits equal torchvision's ResNet / DenseNet
(tested to 1e-5). :attr:`ImageClassifier.gradcam_layer` names the module whose output Grad-CAM should use,
the trunk's last feature map: ``create_explainer("gradcam", model, target_layer=model.gradcam_layer)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from medxai.errors import InputError
from medxai.networks.backbones import create_backbone

__all__ = ["ImageClassifier"]


def _check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int >= 2 (softmax cross-entropy over at least two classes)."""
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise InputError(f"ImageClassifier: num_classes must be an integer >= 2, got {num_classes!r}.")
    return int(num_classes)


def _check_dropout(dropout: float) -> float:
    """``dropout`` as a float in [0, 1)."""
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"ImageClassifier: dropout must be in [0, 1), got {dropout!r}.")
    return float(dropout)


class ImageClassifier(nn.Module):
    """Trunk + global average pooling + optional dropout + linear layer: images (B, C_in, H, W) to logits (B, K).

    Parameters
    ----------
    backbone
        A registered trunk name (:func:`~medxai.networks.backbones.list_backbones`, case-insensitive) or
        ``"timm:<name>"``; seed 002 uses ``vgg16``, ``vgg19``, ``resnet18``, ``resnet34``, ``densenet161``
        and ``densenet201``.
    num_classes
        Number of classes ``K`` (>= 2; seed 002: 3, normal / pneumonia / COVID-19).
    in_channels
        Input channels ``C_in`` (1 for grey radiographs).
    dropout
        Dropout probability before the linear layer, in [0, 1) (0: none, as in torchvision's ResNet / DenseNet).
    pretrained
        ImageNet weights for the trunk (torchvision's ``DEFAULT`` enum, from the local cache; see
        :func:`~medxai.networks.backbones.create_backbone`); ``"auto"``: those weights if they are in the
        local cache, else random initialisation with a WARNING (never downloads). The linear layer is always
        freshly initialised.
    pretrained_path
        A local state dict of the *full* classification model; its trunk keys are loaded (strict), its
        classifier keys ignored, and the first convolution is channel-adapted (RGB filters summed for one
        channel). Takes precedence over ``pretrained``.

    Attributes
    ----------
    trunk
        The feature extractor, (B, C_in, H, W) -> (B, num_features, h, w).
    pool, dropout, classifier
        ``AdaptiveAvgPool2d(1)``, ``Dropout(dropout)`` and ``Linear(num_features, num_classes)``.
    gradcam_layer
        ``"trunk"``: the module whose output (the last feature map) Grad-CAM / Grad-CAM++ should hook.

    Raises
    ------
    InputError
        ``num_classes < 2``, ``dropout`` outside [0, 1), an unknown backbone, or weights that do not fit.

    Examples
    --------
    >>> model = ImageClassifier("resnet18", num_classes=3, in_channels=1).eval()
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 3])
    """

    gradcam_layer: ClassVar[str] = "trunk"

    def __init__(
        self,
        backbone: str = "densenet161",
        num_classes: int = 3,
        in_channels: int = 1,
        dropout: float = 0.0,
        pretrained: bool | str = False,
        pretrained_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        drop = _check_dropout(dropout)
        self.backbone = backbone
        self.in_channels = int(in_channels)
        self.trunk, self.num_features = create_backbone(
            backbone, in_channels=in_channels, pretrained=pretrained, pretrained_path=pretrained_path
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop)
        self.classifier = nn.Linear(self.num_features, self.num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"ImageClassifier ({self.backbone}) expects images (B, {self.in_channels}, H, W), "
                f"got shape {list(x.shape)}."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature maps (B, num_features, h, w) of images (B, C_in, H, W)."""
        self._check_input(x)
        return self.trunk(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of feature maps (B, num_features, h, w): pool, flatten, dropout, linear."""
        return self.classifier(self.dropout(torch.flatten(self.pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C_in, H, W)."""
        return self.head(self.features(x))
