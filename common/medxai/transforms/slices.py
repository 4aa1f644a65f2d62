"""Slice-consistent in-plane transforms for CT volumes treated as stacks of 2D slices.

Seed 003 (sec. 4.1.2) trains its slice-level network on whole volumes: each volume is cropped to a random
rectangle (area 90-100 %, aspect ratio in [3/4, 4/3]), resized to 224 x 224 and flipped horizontally
with probability 0.5, and these operations must be the same for every slice of the volume, or the slices
of one patient no longer line up. Volumes are channel-first ``(C, H, W, D)``, ``D`` indexing slices:

* :class:`RandResizedCropSlicesd`: one crop box drawn as torchvision's ``RandomResizedCrop`` draws it,
  applied to every slice of every key, then an in-plane resize (depth kept).
* :class:`ResizeSlicesd`: the deterministic in-plane resize for validation and inference.
* Horizontal flip needs no code of ours: ``monai.transforms.RandFlipd(keys, prob=0.5, spatial_axis=0)``
  flips axis ``H`` (``X``, patient left-right in RAS) of the whole volume, so every slice alike
  (asserted in ``tests/transforms/test_slices.py``).
* :class:`SampleSlicesd`: volumes of different depth cannot be collated into one batch. For training with
  batches of several volumes, resample the depth to a fixed number of slices by nearest-slice selection
  (real slices are kept or repeated, never blended; the slice order is kept). At inference keep every
  slice and use batch size 1. We do not pad: padded slices would form sections of their own in the slice
  integration module (seed 003 eq. 4-6) and change the patient probability.

Interpolation: ``"area"`` (default for images, MONAI's default) averages the pixels under each output
pixel, the right filter when downsampling (a 512-pixel slice cropped to the lungs and resized to 224);
``"bilinear"`` is smoother when upsampling small slices. Use ``"nearest-exact"`` for masks: it samples
pixel centres consistently with the affine MONAI writes (torch's legacy ``"nearest"`` is shifted by up
to half a pixel) and keeps label values. MONAI's ``anti_aliasing=True`` is not used: its Gaussian filter
pads with zeros and darkens the image border (a uniform slice of ones resized from 512 to 224 comes back
at 0.92 along its edges and 0.84 in its corners).

Every transform here refuses, with an :class:`~medxai.errors.InputError` naming the case and key, a key that
is not a non-empty ``(C, H, W, D)`` volume or that holds NaN/Inf or values the float32 resampling would
overflow (:func:`~medxai.transforms.checks.check_resample_range`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Crop, InvertibleTransform, MapTransform, Randomizable, Resize, Resized
from monai.utils import convert_to_tensor, ensure_tuple_rep

from medxai.errors import InputError
from medxai.transforms.checks import case_name, check_resample_range

__all__ = ["sample_crop_box", "RandResizedCropSlicesd", "ResizeSlicesd", "SampleSlicesd"]


def _check_range(name: str, value: Sequence[float], low: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not (low < pair[0] <= pair[1]) or not all(math.isfinite(v) for v in pair):
        raise InputError(f"{name} must be (min, max) with {low} < min <= max, got {value!r}.")
    return pair  # type: ignore[return-value]


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    pair = tuple(size) if isinstance(size, Sequence) else (size, size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in pair):
        raise InputError(f"size must be two positive integers (H, W), got {size!r}.")
    return int(pair[0]), int(pair[1])


def _check_volume(img: Any, key: Hashable, what: str) -> None:
    if len(img.shape) != 4:
        raise InputError(
            f"case '{case_name(img)}' (key '{key}'): {what} expects a channel-first volume (C, H, W, D), got shape "
            f"{tuple(img.shape)}."
        )
    if min(int(v) for v in img.shape) < 1:
        raise InputError(
            f"case '{case_name(img)}' (key '{key}'): {what} got an empty volume of shape {tuple(img.shape)} "
            "(a zero-length axis)."
        )


def _check_resample(img: Any, key: Hashable, what: str, window: int) -> None:
    check_resample_range(img, f"case '{case_name(img)}' (key '{key}'): {what}", window)


def sample_crop_box(
    rng: np.random.RandomState,
    height: int,
    width: int,
    scale: Sequence[float] = (0.9, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Draw a crop box as ``torchvision.transforms.RandomResizedCrop.get_params`` does, from ``rng``.

    Up to ten tries draw an area fraction uniformly in ``scale`` and an aspect ratio (width / height)
    log-uniformly in ``ratio``; the first box that fits is placed uniformly at random. When none fits,
    the central crop whose aspect ratio is clamped to ``ratio`` is returned (the whole image when its
    aspect ratio is within ``ratio``). Here ``height`` is the ``H`` axis (dim 1 of ``(C, H, W, D)``) and
    ``width`` the ``W`` axis.

    Parameters
    ----------
    rng
        Random state (a MONAI transform's ``self.R``).
    height, width
        In-plane size of the image.
    scale
        Range of the crop area as a fraction of the image area.
    ratio
        Range of the crop aspect ratio ``width / height``.

    Returns
    -------
    (top, left, h, w)
        Box start along ``H`` and ``W`` and its size.
    """
    scale = _check_range("scale", scale, 0.0)
    ratio = _check_range("ratio", ratio, 0.0)
    if height < 1 or width < 1:
        raise InputError(f"cannot crop an empty image of size ({height}, {width}).")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.randint(0, height - h + 1))
            left = int(rng.randint(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class RandResizedCropSlicesd(Randomizable, MapTransform, InvertibleTransform):
    """One random in-plane crop for all slices and keys, then an in-plane resize; depth unchanged.

    The box is drawn by :func:`sample_crop_box` (torchvision's ``RandomResizedCrop`` sampling) once per
    call and applied to every slice of every key (MONAI's :class:`~monai.transforms.Crop`, affine
    translated), then every key is resized in-plane to ``size`` (MONAI's :class:`~monai.transforms.Resize`,
    affine scaled). This is seed 003's augmentation (sec. 4.1.2) made consistent across the volume.
    :meth:`inverse` undoes both (resize back, pad with zeros).

    Parameters
    ----------
    keys
        Keys of ``(C, H, W, D)`` volumes with the same in-plane size.
    size
        Output in-plane size ``(H, W)``.
    scale
        Range of the crop area as a fraction of the slice area.
    ratio
        Range of the crop aspect ratio (``W`` extent over ``H`` extent).
    mode
        Interpolation per key (see the module docstring): ``"area"`` or ``"bilinear"`` for images,
        ``"nearest-exact"`` for masks.
    align_corners
        Per key, for the linear modes only (``None`` otherwise).
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.

    Returns
    -------
    dict
        Keys as float32 MetaTensors ``(C, size[0], size[1], D)``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: Sequence[int] = (224, 224),
        scale: Sequence[float] = (0.9, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        mode: str | Sequence[str] = "area",
        align_corners: bool | None | Sequence[bool | None] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.size = _check_size(size)
        self.scale = _check_range("scale", scale, 0.0)
        self.ratio = _check_range("ratio", ratio, 0.0)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.align_corners = ensure_tuple_rep(align_corners, len(self.keys))
        self.cropper = Crop()
        self.resizer = Resize(spatial_size=(*self.size, -1))
        self.box: tuple[int, int, int, int] | None = None

    def randomize(self, data: Sequence[int]) -> None:
        """Draw the crop box ``(top, left, h, w)`` for an in-plane size ``data = (H, W)``."""
        self.box = sample_crop_box(self.R, int(data[0]), int(data[1]), self.scale, self.ratio)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        _check_volume(d[first], first, type(self).__name__)
        in_plane = tuple(int(s) for s in d[first].shape[1:3])
        self.randomize(in_plane)
        top, left, h, w = self.box  # type: ignore[misc]
        slices = (slice(top, top + h), slice(left, left + w), slice(None))
        for key, mode, align_corners in self.key_iterator(d, self.mode, self.align_corners):
            _check_volume(d[key], key, type(self).__name__)
            _check_resample(d[key], key, type(self).__name__, in_plane[0] * in_plane[1])
            if tuple(int(s) for s in d[key].shape[1:3]) != in_plane:
                raise InputError(
                    f"case '{case_name(d[key])}': key '{key}' has in-plane size {tuple(d[key].shape[1:3])}, key "
                    f"'{first}' {in_plane}; every key must share the crop box."
                )
            cropped = self.cropper(convert_to_tensor(d[key], track_meta=True), slices)
            d[key] = self.resizer(cropped, mode=mode, align_corners=align_corners, dtype=torch.float32)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Resize back to the crop size and pad to the input size (zeros outside the box)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(self.resizer.inverse(d[key]))  # type: ignore[arg-type]
        return d


class ResizeSlicesd(Resized):
    """Resize every slice in-plane to ``size``, keeping the number of slices (validation, inference).

    MONAI's :class:`~monai.transforms.Resized` with ``spatial_size=(*size, -1)``, restricted to volumes
    ``(C, H, W, D)`` (MONAI would silently add a depth axis to a 2D input). Invertible, affine scaled.

    Parameters
    ----------
    keys
        Keys of ``(C, H, W, D)`` volumes.
    size
        Output in-plane size ``(H, W)``.
    mode
        Interpolation per key: ``"area"`` or ``"bilinear"`` for images, ``"nearest-exact"`` for masks.
    align_corners
        Per key, for the linear modes only.
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: Sequence[int] = (224, 224),
        mode: str | Sequence[str] = "area",
        align_corners: bool | None | Sequence[bool | None] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        self.size = _check_size(size)
        super().__init__(
            keys,
            spatial_size=(*self.size, -1),
            mode=mode,
            align_corners=align_corners,
            dtype=torch.float32,
            allow_missing_keys=allow_missing_keys,
        )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            _check_volume(data[key], key, type(self).__name__)
            _check_resample(data[key], key, type(self).__name__, int(data[key].shape[1]) * int(data[key].shape[2]))
        return super().__call__(data, lazy=lazy)


class SampleSlicesd(Resized):
    """Resample the depth to ``num_slices`` by nearest-slice selection, in-plane size unchanged.

    Output slice ``i`` is input slice ``floor((i + 0.5) * D / num_slices)`` (torch's ``"nearest-exact"``):
    evenly spread real slices in their original order, each repeated about ``num_slices / D`` times when
    the volume is shorter. Every key gets the same slices, so masks stay aligned. The affine is scaled
    along the depth as MONAI's :class:`~monai.transforms.Resize` does (exact up to half an input slice,
    the nature of nearest-neighbour resampling). Invertible.

    Parameters
    ----------
    keys
        Keys of ``(C, H, W, D)`` volumes.
    num_slices
        Number of output slices.
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.
    """

    def __init__(self, keys: KeysCollection, num_slices: int, allow_missing_keys: bool = False) -> None:
        if isinstance(num_slices, bool) or not isinstance(num_slices, (int, np.integer)) or num_slices < 1:
            raise InputError(f"num_slices must be a positive integer, got {num_slices!r}.")
        self.num_slices = int(num_slices)
        super().__init__(
            keys,
            spatial_size=(-1, -1, self.num_slices),
            mode="nearest-exact",
            dtype=torch.float32,
            allow_missing_keys=allow_missing_keys,
        )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            _check_volume(data[key], key, type(self).__name__)
            _check_resample(data[key], key, type(self).__name__, 1)
        return super().__call__(data, lazy=lazy)
