"""Class activation maps: CAM, the EDM activation map, Grad-CAM and Grad-CAM++, in 2D and 3D.

All four weight the channels of one feature map ``A`` (B, K, *spatial') and sum them:
``map_c = ReLU(sum_k w_ck A_k)``, then upsample the map to the input's spatial size (bilinear in 2D,
trilinear in 3D, ``align_corners=False``). Upsampling is the only post-processing: maps are not
normalised (see :mod:`medxai.explain.normalize` for explicit normalisation).

Batches carry one target class per sample. Gradient-based maps take one backward pass per batch, of
``sum_b y_b[target_b]``: in ``eval`` mode samples are independent, so this equals explaining each sample on
its own. The maps are computed in whatever mode the caller put the model in; in ``train`` mode BatchNorm
couples the samples of a batch (and dropout is random), so explain in ``eval`` mode.

Library traps these classes avoid (tested in ``tests/explain/test_cam.py``): ``monai.visualize.GradCAM``
with ``class_idx=None`` on a batch back-propagates the sum over *all* predicted classes of the batch
(``logits[:, class_idx]`` with a (B,) index is a (B, B) matrix), mixing classes across samples; its
default post-processing maps (min, max) to (1, 0), flipping the map; and its hooks stay registered on the
model forever.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medxai.errors import InputError
from medxai.explain.base import Explainer, check_batch, resolve_targets
from medxai.explain.hooks import LayerCapture, resolve_layer, select_output
from medxai.explain.registry import register_explainer

__all__ = ["upsample_map", "CAM", "EDMActivationMap", "GradCAM", "GradCAMPlusPlus"]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample_map(maps: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Resize maps (B, C, *spatial') to (B, C, *size) by (bi/tri)linear interpolation, ``align_corners=False``.

    Maps already of the target size are returned unchanged. This is the only post-processing CAM-family
    explainers apply: the interpolated map stays within the feature map's (min, max) range.
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[2:]) == size:
        return maps
    if len(size) != maps.ndim - 2 or len(size) not in _INTERPOLATION:
        raise InputError(f"cannot upsample maps of shape {tuple(maps.shape)} to spatial size {size}.")
    return F.interpolate(maps, size=size, mode=_INTERPOLATION[len(size)], align_corners=False)


def _check_feature_map(features: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """Check ``features`` is (B, K, *spatial') with as many spatial dims as ``x``."""
    if features.ndim != x.ndim or features.shape[0] != x.shape[0]:
        raise InputError(
            f"{what} has shape {tuple(features.shape)}; expected (B={x.shape[0]}, K, *spatial) with "
            f"{x.ndim - 2} spatial dims like the input {tuple(x.shape)}."
        )
    return features


def _spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.ndim))


class _UpsampledMaps(Explainer):
    """CAM-family base: :meth:`feature_maps` at feature resolution, upsampled to the input by :meth:`attribute`."""

    def feature_maps(self, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        """The maps (B, 1, *spatial') at the resolution the method computes them (input validated)."""
        check_batch(x)
        return self._feature_maps(x, target)

    @abstractmethod
    def _feature_maps(self, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        """:meth:`feature_maps` on an input already validated (by ``__call__`` or :meth:`feature_maps`)."""

    def attribute(self, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        # __call__ has validated x already: validating again would cost a full isfinite pass per call
        return upsample_map(self._feature_maps(x, target), x.shape[2:]).to(x.device)


@register_explainer("cam")
class CAM(_UpsampledMaps):
    """Class activation mapping (Zhou et al., CVPR 2016, eq. 2 of seed 000 and of seed 003).

    For a network ending in ``A = target_layer(...)`` (B, K, *spatial'), global average pooling and a
    linear layer (or a 1x1 convolution) ``fc`` with weights W (C, K), the map of class c is
    ``M_c = sum_k W_ck A_k``; the class score is ``s_c = mean(M_c) + b_c``. The bias is not part of the map.

    Parameters
    ----------
    model
        Maps (B, C_in, *spatial) to logits (B, C) (or to a tuple/dict holding them, see ``output_key``).
    target_layer
        The layer whose output is pooled into ``fc`` (module or dotted name, e.g. ``"layer4"``).
    fc_layer
        The classification layer: ``torch.nn.Linear(K, C)`` or a convolution with a 1x1(x1) kernel.
    relu
        Clip the map at zero (CAM-family convention, default). Raw CAM is signed: ``relu=False`` keeps it.
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).

    Notes
    -----
    One forward pass, no backward. ``target=None`` explains each sample's predicted class.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layer: torch.nn.Module | str,
        fc_layer: torch.nn.Module | str,
        relu: bool = True,
        output_key: str | int | None = None,
    ) -> None:
        super().__init__(model)
        self.target_layer = resolve_layer(model, target_layer)
        self.fc_layer = resolve_layer(model, fc_layer)
        self.relu = relu
        self.non_negative = relu
        self.output_key = output_key
        self._layer_name = target_layer if isinstance(target_layer, str) else type(target_layer).__name__

    def class_weights(self) -> torch.Tensor:
        """The classification weights as a (C, K) matrix."""
        fc = self.fc_layer
        weight = getattr(fc, "weight", None)
        if isinstance(fc, torch.nn.Linear):
            return weight
        convolutions = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
        if isinstance(fc, convolutions) and all(k == 1 for k in fc.kernel_size) and fc.groups == 1:
            return weight.flatten(1)
        raise InputError(
            f"fc_layer must be a torch.nn.Linear or an ungrouped 1x1 convolution, got {type(fc).__name__}"
            + (f" with kernel {tuple(weight.shape[2:])}" if weight is not None and weight.ndim > 2 else "")
            + "."
        )

    def _feature_maps(self, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        """The maps (B, 1, *spatial') at the target layer's resolution, before upsampling."""
        with torch.no_grad(), LayerCapture(self.model, self.target_layer) as capture:
            logits = select_output(self.model(x), self.output_key)
            features = _check_feature_map(capture.activation(0), x, f"target layer '{self._layer_name}' output")
        weights = self.class_weights().detach()
        if weights.shape[1] != features.shape[1]:
            raise InputError(
                f"fc_layer has {weights.shape[1]} input features but target layer '{self._layer_name}' has "
                f"{features.shape[1]} channels."
            )
        targets = resolve_targets(target, x.shape[0], logits).to(features.device)
        maps = torch.einsum("bk...,bk->b...", features, weights[targets].to(features.dtype)).unsqueeze(1)
        return F.relu(maps) if self.relu else maps


@register_explainer("edm")
class EDMActivationMap(_UpsampledMaps):
    """The activation map of the explainable diagnosis module (EDM; seed 000 eq. 3, seed 003 eq. 3).

    The EDM replaces the fully connected classifier by a 1x1 convolution applied *before* pooling, so the
    network itself computes the class activation maps ``A_c = sum_k W_kc F^k`` (B, C, *spatial'; with the
    convolution's bias, if any, added) and the class score is their spatial mean, ``s_c = mean_ij (A_c)_ij``. This explainer returns ``A_c`` of the
    target class, upsampled to the input size: it costs one forward pass and no backward ("free at
    inference").

    Parameters
    ----------
    model
        The network. Its output must hold the maps (B, C, *spatial'): the output itself (``map_key=None``),
        or an entry of a dict / tuple output selected by ``map_key`` (e.g. ``"cam"``).
    map_key
        Where the maps are in the model's output; ignored when ``activation_map_fn`` is given.
    activation_map_fn
        Optional callable ``x -> (B, C, *spatial')`` returning the maps (e.g. ``model.activation_map``);
        used instead of ``model(x)``.
    relu
        Clip the map at zero (CAM-family convention, default). ``relu=False`` returns the signed
        convolution output itself.

    Notes
    -----
    ``target=None`` explains the class with the largest score ``mean(A_c)`` (eq. 3), i.e. the predicted
    class of a network whose logits are the pooled maps.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        map_key: str | int | None = None,
        activation_map_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        relu: bool = True,
    ) -> None:
        super().__init__(model)
        if activation_map_fn is not None and not callable(activation_map_fn):
            raise InputError(f"activation_map_fn must be callable, got {type(activation_map_fn).__name__}.")
        self.map_key = map_key
        self.activation_map_fn = activation_map_fn
        self.relu = relu
        self.non_negative = relu

    def activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """All class maps (B, C, *spatial') at the network's feature resolution (one forward pass)."""
        with torch.no_grad():
            if self.activation_map_fn is not None:
                maps = self.activation_map_fn(x)
                if not isinstance(maps, torch.Tensor):
                    raise InputError(f"activation_map_fn returned a {type(maps).__name__}, not a tensor.")
            else:
                maps = select_output(self.model(x), self.map_key)
        return _check_feature_map(maps, x, "the EDM activation map")

    def _feature_maps(self, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        """The target class's map (B, 1, *spatial') at the network's resolution, before upsampling."""
        maps = self.activation_maps(x)
        scores = maps.mean(dim=_spatial_dims(maps))  # eq. 3: the class score is the map's spatial mean
        targets = resolve_targets(target, x.shape[0], scores).to(maps.device)
        index = targets.view(-1, 1, *([1] * (maps.ndim - 2))).expand(-1, 1, *maps.shape[2:])
        selected = maps.gather(1, index)
        return F.relu(selected) if self.relu else selected


class _GradientCAM(_UpsampledMaps):
    """Shared part of Grad-CAM and Grad-CAM++: one forward, one backward of ``sum_b y_b[target_b]``."""

    non_negative = True

    def __init__(
        self,
        model: torch.nn.Module,
        target_layer: torch.nn.Module | str,
        relu: bool = True,
        output_key: str | int | None = None,
        layer_call: int = 0,
    ) -> None:
        super().__init__(model)
        self.target_layer = resolve_layer(model, target_layer)
        self.relu = relu
        self.non_negative = relu
        self.output_key = output_key
        self.layer_call = layer_call
        self._layer_name = target_layer if isinstance(target_layer, str) else type(target_layer).__name__

    @abstractmethod
    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Channel weights (B, K, 1, ..., 1) from A (B, K, *s), dS/dA (B, K, *s) and the scores S (B,)."""

    def feature_map_and_gradient(
        self, x: torch.Tensor, target: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The target layer's output A, dS/dA and the explained scores S (B,), from one forward and backward."""
        with torch.enable_grad(), LayerCapture(self.model, self.target_layer) as capture:
            logits = select_output(self.model(x), self.output_key)
            targets = resolve_targets(target, x.shape[0], logits).to(logits.device)
            scores = logits.gather(1, targets[:, None])[:, 0]
            activation = _check_feature_map(
                capture.activation(self.layer_call), x, f"target layer '{self._layer_name}' output"
            )
            gradient = capture.gradient(scores.sum(), self.layer_call)
        return activation.detach(), gradient.detach(), scores.detach()

    def _feature_maps(self, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        """The maps (B, 1, *spatial') at the target layer's resolution, before upsampling."""
        activation, gradient, scores = self.feature_map_and_gradient(x, target)
        weights = self.channel_weights(activation, gradient, scores)
        maps = (weights * activation).sum(dim=1, keepdim=True)
        return F.relu(maps) if self.relu else maps


@register_explainer("gradcam")
class GradCAM(_GradientCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, eqs. 1-2), per-sample targets, 2D and 3D.

    ``alpha_k = mean_ij dS/dA_k,ij`` and ``map = ReLU(sum_k alpha_k A_k)``, upsampled to the input size.

    Parameters
    ----------
    model
        Maps (B, C_in, *spatial) to logits (B, C) (or a tuple/dict holding them, see ``output_key``).
    target_layer
        Module or dotted name of the feature layer (e.g. ``"layer4"`` for torchvision ResNets,
        ``"features"`` for VGG / DenseNet, ``"class_layers.relu"`` for MONAI's DenseNet).
    relu
        Clip the map at zero (default, as in the paper).
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).
    layer_call
        Which call of the layer to explain when the model uses it more than once per forward (weight-shared
        encoders); 0 is the first.
    """

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return gradient.mean(dim=_spatial_dims(gradient), keepdim=True)


@register_explainer("gradcampp")
@register_explainer("gradcam++")
class GradCAMPlusPlus(_GradientCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eqs. 10 and 19), per-sample targets, 2D and 3D.

    With ``Y = exp(S)`` the higher derivatives have the closed form ``d^n Y / dA^n = Y g^n`` where
    ``g = dS/dA`` (exact for networks piecewise linear in A, e.g. ReLU heads), giving (eq. 19)::

        alpha_k,ij = g_ij^2 / (2 g_ij^2 + sum_ab A_k,ab g_ij^3)
        w_k        = sum_ij alpha_k,ij ReLU(g_ij)
        map        = ReLU(sum_k w_k A_k)

    Sums run over all spatial positions, so the same code serves 2D and 3D. Where ``g = 0`` (or the
    denominator vanishes) alpha is 0. Unlike pytorch-grad-cam, no epsilon is added to the denominator.

    Parameters
    ----------
    model, target_layer, relu, output_key, layer_call
        As for :class:`GradCAM`.
    exp_score
        Multiply the weights by ``exp(S)`` as in ``ReLU(dY/dA)`` of eq. 10 taken literally (MONAI's
        ``GradCAMpp`` does). It rescales each sample's map by a positive constant and overflows float32
        for scores above about 88, so it is off by default (as in pytorch-grad-cam).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        target_layer: torch.nn.Module | str,
        relu: bool = True,
        output_key: str | int | None = None,
        layer_call: int = 0,
        exp_score: bool = False,
    ) -> None:
        super().__init__(model, target_layer, relu=relu, output_key=output_key, layer_call=layer_call)
        self.exp_score = exp_score

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        spatial = _spatial_dims(gradient)
        grad_2 = gradient.pow(2)
        grad_3 = grad_2 * gradient
        activation_sum = activation.sum(dim=spatial, keepdim=True)
        denominator = 2 * grad_2 + activation_sum * grad_3
        safe = denominator != 0
        alpha = torch.where(safe, grad_2 / torch.where(safe, denominator, torch.ones_like(denominator)), 0.0)
        weights = (alpha * F.relu(gradient)).sum(dim=spatial, keepdim=True)
        if self.exp_score:
            weights = weights * scores.exp().view(-1, *([1] * (weights.ndim - 1)))
        return weights
