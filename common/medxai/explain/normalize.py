"""Explicit, named normalisations of explanation maps, one sample at a time.

Explainers return raw maps (no hidden normalisation); whoever displays, thresholds or compares maps picks
one of these functions by name. Each takes maps of shape (B, 1, *spatial) (any (B, ...) works: every
non-batch element of a sample is normalised together), as a ``torch.Tensor`` or ``numpy.ndarray``, and
returns the same type and shape, floating point, computed per sample:

====================  ==========================================================  =================
name                  per sample                                                  range
====================  ==========================================================  =================
``minmax``            ``(v - min) / (max - min)``                                 [0, 1]
``max_abs``           ``v / max |v|`` (sign kept)                                 [-1, 1]
``relu_max``          ``max(v, 0) / max v``                                       [0, 1]
``percentile_clip``   clip to ``[-q, q]``, ``q`` = p-th percentile of ``|v|``,    [-1, 1]
                      then ``/ q`` (sign kept)
``rank``              ``(rank(v) - 1) / (n - 1)``, ties share their mean rank     [0, 1]
====================  ==========================================================  =================

A map that carries no information for a method (constant for ``minmax`` and ``rank``, all zero for
``max_abs`` and ``percentile_clip``, no positive value for ``relu_max``) becomes all zeros, never NaN.

Unlike ``monai.visualize.class_activation_maps.default_normalizer``, which maps (min, max) to (1, 0) and so
makes the most relevant pixel the least relevant one, every function here keeps the order of the values
(``rank`` and ``minmax`` are monotone increasing; the others keep signs and order within each sign).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.stats import rankdata

from medxai.errors import InputError

__all__ = [
    "minmax",
    "minmax_within",
    "max_abs",
    "relu_max",
    "percentile_clip",
    "rank",
    "normalize",
    "NORMALIZERS",
    "percentile",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _as_flat_tensor(maps: torch.Tensor | np.ndarray, name: str) -> tuple[torch.Tensor, bool]:
    """Validate ``maps`` and return it as a float tensor (B, N) plus whether the input was numpy."""
    is_numpy = isinstance(maps, np.ndarray)
    if not is_numpy and not isinstance(maps, torch.Tensor):
        raise InputError(f"{name}: maps must be a torch.Tensor or numpy.ndarray, got {type(maps).__name__}.")
    tensor = torch.from_numpy(np.array(maps, copy=True)) if is_numpy else maps
    if tensor.ndim < 2:
        raise InputError(f"{name}: maps must have shape (B, 1, *spatial), got {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        raise InputError(f"{name}: maps are empty, shape {tuple(tensor.shape)}.")
    if tensor.dtype == torch.bool or not (torch.is_floating_point(tensor) or tensor.dtype in _INT_DTYPES):
        raise InputError(f"{name}: maps must be real numbers, got dtype {tensor.dtype}.")
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(f"{name}: maps contain {bad} NaN or Inf values.")
    # MetaTensor and other subclasses: compute on a plain tensor, the result is rebuilt with the input's type
    tensor = tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor
    return tensor.reshape(tensor.shape[0], -1), is_numpy


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _restore(flat: torch.Tensor, like: torch.Tensor | np.ndarray, is_numpy: bool) -> Any:
    out = flat.reshape(like.shape)
    if is_numpy:
        return out.numpy()
    if isinstance(like, torch.Tensor) and type(like) is not torch.Tensor:
        # keep MetaTensor (or other subclass) metadata such as the affine
        result = like.clone().to(out.dtype)
        result.copy_(out)
        return result
    return out


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` row-wise, 0 where the denominator (B, 1) is not positive."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)


def _unit_scale(flat: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest absolute value, so that ``max - min`` cannot overflow (it is at most 2).

    Min-max scaling is invariant to this positive factor; without it, ``3e38 - (-1e38)`` is Inf in float32
    and the maximum became NaN.
    """
    return _safe_divide(flat, flat.abs().amax(dim=1, keepdim=True))


def minmax(maps: ArrayT) -> ArrayT:
    """Scale each sample linearly so its minimum becomes 0 and its maximum 1; a constant map gives zeros.

    Parameters
    ----------
    maps
        (B, 1, *spatial) tensor or array.

    Returns
    -------
    Same type and shape, floating point, in [0, 1].
    """
    flat, is_numpy = _as_flat_tensor(maps, "minmax")
    flat = _unit_scale(flat)
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    return _restore(_safe_divide(flat - low, high - low), maps, is_numpy)


def minmax_within(maps: ArrayT, masks: torch.Tensor | np.ndarray) -> ArrayT:
    """Min-max scale each sample over the pixels inside its mask to [0, 1], and set the pixels outside to 0.

    For a map that lives on the whole image but means something only where the input has content, e.g.
    CXRNet's representation image (seed 001 Fig. 12c) of a lung-segmented radiograph, which is zero outside
    the lungs: the map's spread *inside the lungs* becomes the displayed range. A sample whose mask is empty,
    or whose map is constant inside it, gives zeros.

    Parameters
    ----------
    maps
        (B, 1, *spatial) tensor or array.
    masks
        Same shape (or broadcastable per sample); any value > 0 is inside.
    """
    flat, is_numpy = _as_flat_tensor(maps, "minmax_within")
    flat = _unit_scale(flat)
    inside = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks)
    inside = inside.as_subclass(torch.Tensor).to(flat.device)
    if inside.numel() != flat.numel():
        raise InputError(f"minmax_within: masks of shape {tuple(inside.shape)} do not match maps {tuple(maps.shape)}.")
    inside = inside.reshape(flat.shape) > 0
    big = torch.finfo(flat.dtype).max
    low = torch.where(inside, flat, big).amin(dim=1, keepdim=True)
    high = torch.where(inside, flat, -big).amax(dim=1, keepdim=True)
    scaled = _safe_divide(flat - low, torch.where(inside.any(1, keepdim=True), high - low, 0.0))
    return _restore(torch.where(inside, scaled, 0.0), maps, is_numpy)


def max_abs(maps: ArrayT) -> ArrayT:
    """Divide each sample by its largest absolute value, keeping signs (zero stays zero); range [-1, 1].

    The usual scaling for signed attributions (LRP, gradient x input, SHAP) where the sign is evidence for
    or against the class.
    """
    flat, is_numpy = _as_flat_tensor(maps, "max_abs")
    return _restore(_safe_divide(flat, flat.abs().amax(dim=1, keepdim=True)), maps, is_numpy)


def relu_max(maps: ArrayT) -> ArrayT:
    """Clip negative values to 0 and divide by the maximum; range [0, 1] (Grad-CAM's ReLU then scale).

    A map without any positive value gives zeros.
    """
    flat, is_numpy = _as_flat_tensor(maps, "relu_max")
    positive = flat.clamp(min=0)
    return _restore(_safe_divide(positive, positive.amax(dim=1, keepdim=True)), maps, is_numpy)


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Row-wise ``q``-th percentile of (B, N) ``values`` with linear interpolation (numpy's default).

    Uses ``torch.kthvalue`` rather than ``torch.quantile``, which refuses inputs of more than 2**24
    elements (a 256**3 volume).
    """
    if not 0.0 <= q <= 100.0:
        raise InputError(f"percentile must be in [0, 100], got {q}.")
    n = values.shape[1]
    position = q / 100.0 * (n - 1)
    lower = int(np.floor(position))
    upper = min(lower + 1, n - 1)
    low_value = values.kthvalue(lower + 1, dim=1, keepdim=True).values
    if upper == lower or position == lower:
        return low_value
    high_value = values.kthvalue(upper + 1, dim=1, keepdim=True).values
    return low_value + (high_value - low_value) * (position - lower)


def percentile_clip(maps: ArrayT, q: float = 99.0) -> ArrayT:
    """Clip each sample to ``[-c, c]`` with ``c`` the ``q``-th percentile of ``|v|``, then divide by ``c``.

    Gradient maps are dominated by a few extreme pixels; capping them at a high percentile of the
    absolute value before scaling is the display rule of SmoothGrad (Smilkov et al., 2017, "SmoothGrad:
    removing noise by adding noise", Sec. 3: "cap at 99th percentile"). Signs are kept, range [-1, 1];
    a map whose ``q``-th percentile of ``|v|`` is 0 gives zeros.

    Parameters
    ----------
    maps
        (B, 1, *spatial) tensor or array.
    q
        Percentile in [0, 100] of the absolute values, with linear interpolation as ``numpy.percentile``.
    """
    flat, is_numpy = _as_flat_tensor(maps, "percentile_clip")
    cap = percentile(flat.abs(), q)
    clipped = torch.maximum(torch.minimum(flat, cap), -cap)
    return _restore(_safe_divide(clipped, cap), maps, is_numpy)


def rank(maps: ArrayT) -> ArrayT:
    """Replace each value by its rank within the sample, scaled to [0, 1]: ``(rank - 1) / (n - 1)``.

    Ties share their average rank (``scipy.stats.rankdata(method="average")``, as for Spearman's
    correlation); a constant map, which has no ranking, gives zeros. Rank maps make methods with very
    different value distributions comparable (e.g. in the randomisation sanity checks of Adebayo et al.,
    2018).
    """
    flat, is_numpy = _as_flat_tensor(maps, "rank")
    n = flat.shape[1]
    values = flat.detach().cpu().double().numpy()
    ranks = torch.from_numpy(rankdata(values, method="average", axis=1)).to(device=flat.device, dtype=flat.dtype)
    scaled = (ranks - 1.0) / max(n - 1, 1)
    constant = flat.amax(dim=1, keepdim=True) == flat.amin(dim=1, keepdim=True)
    return _restore(torch.where(constant, 0.0, scaled), maps, is_numpy)


NORMALIZERS: dict[str, Callable[..., Any]] = {
    "minmax": minmax,
    "max_abs": max_abs,
    "relu_max": relu_max,
    "percentile_clip": percentile_clip,
    "rank": rank,
}


def normalize(maps: ArrayT, method: str, **kwargs: Any) -> ArrayT:
    """Apply the normalisation named ``method`` (a key of :data:`NORMALIZERS`), e.g. from a bundle config.

    Extra keyword arguments go to the function (``q`` for ``percentile_clip``).
    """
    if method not in NORMALIZERS:
        raise InputError(f"unknown normalisation '{method}'; available: {', '.join(sorted(NORMALIZERS))}.")
    return NORMALIZERS[method](maps, **kwargs)
