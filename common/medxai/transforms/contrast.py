"""Contrast and edge enhancement of chest X-rays.

- CLAHE on the lung-segmented image (CXRNet, seed 001 sec. III-A-2): :class:`CLAHE`, :class:`CLAHEd`.
- Unsharp masking edge enhancement (DeepCOVIDExplainer, seed 002 sec. II-A): :class:`UnsharpMask`,
  :class:`UnsharpMaskd`. Its global histogram equalisation is MONAI's ``HistogramNormalized`` and its noise
  elimination MONAI's ``MedianSmoothd``; the bundle chains the three.

CXRNet's preprocessing extracts the lungs (sec. III-A-1) and then applies Contrast Limited Adaptive
Histogram Equalization (CLAHE, Zuiderveld 1994): histograms of local tiles are clipped at a limit before
their cumulative distribution functions map intensities, so contrast rises without amplifying noise in
near-constant regions. The equalisation itself is scikit-image's
:func:`skimage.exposure.equalize_adapthist`; these transforms scale the image into its [0, 1] input range,
keep MONAI metadata, and set the background outside a lung mask back to exactly 0 (with a fixed
``image_range`` in which 0 is not the lowest value, CLAHE maps the removed background above 0).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from skimage.exposure import equalize_adapthist
from skimage.filters import unsharp_mask

from medxai.errors import InputError
from medxai.transforms.checks import case_name

__all__ = ["CLAHE", "CLAHEd", "UnsharpMask", "UnsharpMaskd"]


def _checked_2d(img: Any, transform: str) -> tuple[np.ndarray, str]:
    """``img`` as a numpy (C, H, W) array of finite values, and how to name it in an error."""
    where = f"case '{case_name(img)}'" if isinstance(img, MetaTensor) else "image"
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if array.ndim != 3:
        raise InputError(f"{transform}: {where} must be a channel-first 2D image (C, H, W), got shape {array.shape}.")
    if array.size == 0:
        raise InputError(f"{transform}: {where} is empty, shape {array.shape}.")
    if not np.isfinite(array).all():
        raise InputError(f"{transform}: {where} holds {int((~np.isfinite(array)).sum())} NaN/Inf pixels.")
    return array, where


def _like(out: np.ndarray, img: Any) -> Any:
    """``out`` as the type of ``img``: a MetaTensor keeps its metadata, a tensor its device."""
    if isinstance(img, MetaTensor):
        return MetaTensor(torch.from_numpy(out), meta=dict(img.meta), applied_operations=img.applied_operations)
    if isinstance(img, torch.Tensor):
        return torch.from_numpy(out).to(img.device)
    return out


class CLAHE(Transform):
    """CLAHE of a channel-first 2D image (C, H, W), each channel on its own, returned in [0, 1] as float32.

    Parameters
    ----------
    clip_limit
        Clipping limit of the tile histograms, normalised to [0, 1] (scikit-image's ``clip_limit``; higher
        gives more contrast). The paper does not state its value; 0.01 is scikit-image's default.
    kernel_size
        Tile size in pixels (int or (H, W)); ``None``: 1/8 of the image height and width (scikit-image's
        default, the usual 8x8 tile grid).
    nbins
        Histogram bins (256: the paper's 8-bit intensity domain).
    image_range
        Intensities mapped to 0 and 1 before equalisation (e.g. ``(0, 255)`` for 8-bit PNGs); ``None``: the
        channel's minimum and maximum. Values outside are clipped.

    Raises
    ------
    InputError
        For an image that is not (C, H, W), holds NaN/Inf, or is constant (nothing to equalise), naming the
        case (its file name) and the value.
    """

    backend = [MetaTensor.__name__, "torch", "numpy"]

    def __init__(
        self,
        clip_limit: float = 0.01,
        kernel_size: int | Sequence[int] | None = None,
        nbins: int = 256,
        image_range: Sequence[float] | None = None,
    ) -> None:
        if not 0.0 < clip_limit <= 1.0:
            raise InputError(f"CLAHE: clip_limit must be in (0, 1], got {clip_limit}.")
        if nbins < 2:
            raise InputError(f"CLAHE: nbins must be at least 2, got {nbins}.")
        if image_range is not None and (len(image_range) != 2 or not image_range[0] < image_range[1]):
            raise InputError(f"CLAHE: image_range must be (low, high) with low < high, got {image_range}.")
        self.clip_limit = float(clip_limit)
        self.kernel_size = kernel_size
        self.nbins = int(nbins)
        self.image_range = None if image_range is None else (float(image_range[0]), float(image_range[1]))

    def _unit_range(self, channel: np.ndarray, where: str) -> np.ndarray:
        if self.image_range is not None:
            low, high = self.image_range
        else:
            low, high = float(channel.min()), float(channel.max())
            if high <= low:
                raise InputError(f"CLAHE: {where} is constant ({low:g}); there is no contrast to enhance.")
        return np.clip((channel - low) / (high - low), 0.0, 1.0)

    def __call__(self, img: Any, mask: Any = None) -> Any:
        """Equalise ``img`` (C, H, W); with ``mask`` (1 or C, H, W), pixels where it is 0 are set to 0 afterwards."""
        array, where = _checked_2d(img, "CLAHE")
        out = np.stack(
            [
                equalize_adapthist(
                    self._unit_range(channel.astype(np.float64), where),
                    kernel_size=self.kernel_size,
                    clip_limit=self.clip_limit,
                    nbins=self.nbins,
                )
                for channel in array
            ]
        ).astype(np.float32)
        if mask is not None:
            keep = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if keep.ndim != 3 or keep.shape[1:] != out.shape[1:] or keep.shape[0] not in (1, out.shape[0]):
                raise InputError(f"CLAHE: {where}: mask of shape {keep.shape} does not match the image {out.shape}.")
            out = out * (keep > 0)
        return _like(out, img)


class CLAHEd(MapTransform):
    """Dictionary version of :class:`CLAHE`; ``mask_key`` names a lung mask whose background is kept at 0.

    Typical CXRNet order (seed 001 Fig. 1): load the image and lung mask (ground truth, or
    :class:`~medxai.transforms.LungSegmentationd`), ``MaskIntensityd`` (lung extraction), then ``CLAHEd``
    with the same mask.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = None,
        clip_limit: float = 0.01,
        kernel_size: int | Sequence[int] | None = None,
        nbins: int = 256,
        image_range: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.clahe = CLAHE(clip_limit, kernel_size, nbins, image_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise InputError(f"CLAHEd: mask key '{self.mask_key}' is missing (keys: {sorted(map(str, d))}).")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key], mask)
        return d


class UnsharpMask(Transform):
    """Unsharp-mask edge enhancement of a channel-first 2D image (C, H, W) in [0, 1] (seed 002 sec. II-A).

    ``out = clip(x + amount * (x - G_radius * x), 0, 1)``, each channel on its own, where ``G_radius`` is a
    Gaussian blur of standard deviation ``radius`` pixels: scikit-image's
    :func:`skimage.filters.unsharp_mask`. Edges (where the image differs from its blur) are steepened,
    flat regions are unchanged. The paper names the method but not its parameters; scikit-image's
    defaults (radius 1, amount 1) are ours.

    Parameters
    ----------
    radius
        Standard deviation of the Gaussian blur, in pixels (> 0).
    amount
        Strength of the enhancement (>= 0; 0 returns the image unchanged).

    Raises
    ------
    InputError
        For an image that is not (C, H, W) or holds NaN/Inf, or values outside [0, 1] (scale it first, e.g.
        with ``ScaleIntensityd``), naming the case.
    """

    backend = CLAHE.backend

    def __init__(self, radius: float = 1.0, amount: float = 1.0) -> None:
        if not float(radius) > 0.0:
            raise InputError(f"UnsharpMask: radius must be > 0 pixels, got {radius}.")
        if not float(amount) >= 0.0:
            raise InputError(f"UnsharpMask: amount must be >= 0, got {amount}.")
        self.radius, self.amount = float(radius), float(amount)

    def __call__(self, img: Any) -> Any:
        """Sharpen ``img`` (C, H, W) with values in [0, 1]; returns float32 in [0, 1] of the same type."""
        array, where = _checked_2d(img, "UnsharpMask")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1.0 + 1e-6:
            raise InputError(f"UnsharpMask: {where} has values in [{low:g}, {high:g}]; expected [0, 1].")
        unit = np.clip(array.astype(np.float64), 0.0, 1.0)
        out = np.stack([unsharp_mask(channel, radius=self.radius, amount=self.amount) for channel in unit])
        return _like(out.astype(np.float32), img)


class UnsharpMaskd(MapTransform):
    """Dictionary version of :class:`UnsharpMask`."""

    backend = UnsharpMask.backend

    def __init__(
        self, keys: KeysCollection, radius: float = 1.0, amount: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.sharpen = UnsharpMask(radius, amount)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.sharpen(d[key])
        return d
