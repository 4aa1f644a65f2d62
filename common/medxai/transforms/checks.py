"""Sanity checks of CT volumes before preprocessing, with errors that name the case.

A volume that is 2D, RGB, a time series, empty, shorter than the model's section length, holds NaN/Inf,
is constant or is not in Hounsfield units would otherwise fail deep inside a network (or, worse, give a
confident prediction). :class:`CheckVolume` and :class:`CheckVolumed` stop it at the door with a
:class:`medxai.errors.InputError` that names the case by the base name of the file it came from (the
``filename_or_obj`` meta key set by ``LoadImage``); folders and patient names in the path never reach the
message.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey

from medxai.errors import InputError

__all__ = ["case_name", "check_resample_range", "CheckVolume", "CheckVolumed", "CheckLabelMapd"]


def case_name(img: Any, default: str = "<unnamed>") -> str:
    """Base name of the file a volume was loaded from, for error messages.

    Parameters
    ----------
    img
        A :class:`monai.data.MetaTensor` (its ``filename_or_obj`` meta entry is used), or anything else.
    default
        Returned when there is no file name (plain tensors and arrays, in-memory volumes).

    Returns
    -------
    str
        E.g. ``"ct_0003.nii.gz"`` for ``/data/site/patient/ct_0003.nii.gz``; the base name of the folder for a
        DICOM series; ``default`` when unknown.
    """
    source = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
    if isinstance(source, (list, tuple)):  # a collated batch: the first case
        source = source[0] if source else None
    if source is None or not isinstance(source, (str, PurePath)) or not str(source).strip():
        return default
    name = PurePath(str(source).replace("\\", "/").rstrip("/")).name
    return name or default


def check_resample_range(img: Any, where: str, window: int = 1) -> None:
    """Refuse values that a float32 resampling cannot carry: NaN/Inf, or magnitudes that overflow.

    Interpolating transforms compute in float32 (MONAI's ``Resize(..., dtype=torch.float32)``). An average of
    up to ``window`` pixels (``"area"`` mode sums them first) overflows to Inf when ``window * max |v|``
    exceeds the float32 maximum (3.4e38), and float64 values beyond it become Inf when cast.

    Parameters
    ----------
    img
        Array or tensor of any shape.
    where
        How to name the case in the message (e.g. ``"case 'ct_01.nii.gz' (key 'image')"``).
    window
        Largest number of input pixels that one output pixel is computed from.

    Raises
    ------
    InputError
        Naming the case and the offending count or value.
    """
    values = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
    if not values.is_floating_point() or values.numel() == 0:
        return
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise InputError(f"{where}: {int((~finite).sum())} NaN/Inf value(s) of {values.numel()} cannot be resampled.")
    largest = float(values.abs().max())
    limit = float(torch.finfo(torch.float32).max) / max(int(window), 1)
    if largest > limit:
        raise InputError(
            f"{where}: values up to {largest:g} in magnitude overflow float32 resampling (limit {limit:g}); "
            "rescale the intensities first."
        )


class CheckVolume(Transform):
    """Validate one channel-first CT volume ``(C, H, W, D)`` in Hounsfield units; return it unchanged.

    Checks, in order (each can be switched off with ``None`` where noted):

    1. dimensionality: ``expected_ndim`` dimensions including the channel (4 for a 3D volume); a 2D slice
       (``(1, H, W)``) or a 5D array is refused.
    2. channels: ``expected_channels`` (1 for CT; 3 means an RGB screenshot, more a time series or a
       multi-phase study loaded as channels). ``None`` skips.
    3. empty: no voxels (a zero-length axis).
    4. depth: at least ``min_slices`` slices along the last axis (e.g. the MIL section length).
    5. finite: no NaN or infinite voxel.
    6. constant: maximum above minimum (a blank or failed reconstruction).
    7. Hounsfield units: a chest CT holds air (about -1000 HU) and tissue (about 0 HU and above), so the
       maximum must be at least ``min_max_hu`` (-500: a volume with nothing denser than -500 HU is not in HU,
       e.g. shifted by a rescale intercept applied twice, or only air) and the minimum at most ``max_min_hu``
       (-500: a volume without air was most likely windowed or normalised already, or holds raw stored values
       with the DICOM rescale intercept not applied); all values must lie in ``hu_limits`` (the int16 range
       by default: values beyond it are not HU). ``None`` skips each.

    Parameters
    ----------
    min_slices
        Minimum number of slices (size of the last axis).
    expected_ndim
        Number of dimensions including the channel.
    expected_channels
        Number of channels, or ``None`` to accept any.
    min_max_hu, max_min_hu, hu_limits
        Hounsfield-unit plausibility bounds (see above), or ``None``.

    Raises
    ------
    InputError
        Naming the case (base name of ``filename_or_obj``), the check and the offending value.
    """

    def __init__(
        self,
        min_slices: int = 1,
        expected_ndim: int = 4,
        expected_channels: int | None = 1,
        min_max_hu: float | None = -500.0,
        max_min_hu: float | None = -500.0,
        hu_limits: tuple[float, float] | None = (-32768.0, 32767.0),
    ) -> None:
        if isinstance(min_slices, bool) or not isinstance(min_slices, (int, np.integer)) or min_slices < 1:
            raise InputError(f"min_slices must be a positive integer, got {min_slices!r}.")
        if isinstance(expected_ndim, bool) or not isinstance(expected_ndim, (int, np.integer)) or expected_ndim < 2:
            raise InputError(f"expected_ndim must be an integer >= 2 (channel + spatial), got {expected_ndim!r}.")
        if expected_channels is not None and (isinstance(expected_channels, bool) or expected_channels < 1):
            raise InputError(f"expected_channels must be a positive integer or None, got {expected_channels!r}.")
        if hu_limits is not None and not (len(hu_limits) == 2 and float(hu_limits[0]) < float(hu_limits[1])):
            raise InputError(f"hu_limits must be (low, high) with low < high, got {hu_limits!r}.")
        self.min_slices = int(min_slices)
        self.expected_ndim = int(expected_ndim)
        self.expected_channels = None if expected_channels is None else int(expected_channels)
        self.min_max_hu = None if min_max_hu is None else float(min_max_hu)
        self.max_min_hu = None if max_min_hu is None else float(max_min_hu)
        self.hu_limits = None if hu_limits is None else (float(hu_limits[0]), float(hu_limits[1]))

    def __call__(self, img: Any, name: str | None = None, key: Hashable | None = None) -> Any:
        """Check ``img`` and return it unchanged.

        Parameters
        ----------
        img
            Tensor, MetaTensor or array ``(C, H, W, D)``.
        name
            Case name for messages; default: :func:`case_name` of ``img``.
        key
            Dictionary key the volume came from, added to messages when given.
        """
        case = f"case '{name if name is not None else case_name(img)}'"
        if key is not None:
            case += f" (key '{key}')"
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != self.expected_ndim:
            raise InputError(f"{case}: {self._dimension_problem(shape)}")
        if self.expected_channels is not None and shape[0] != self.expected_channels:
            raise InputError(f"{case}: {self._channel_problem(shape)}")
        if math.prod(shape) == 0:
            raise InputError(f"{case}: empty volume of shape {shape} (no voxels).")
        if shape[-1] < self.min_slices:
            raise InputError(
                f"{case}: {shape[-1]} slice(s) along the last axis, fewer than min_slices = {self.min_slices} "
                f"(shape {shape})."
            )
        values = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        if values.is_floating_point():
            finite = torch.isfinite(values)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(values).sum())
                n_inf = int((~finite).sum()) - n_nan
                raise InputError(f"{case}: {n_nan} NaN and {n_inf} infinite voxel(s) of {values.numel()}.")
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise InputError(f"{case}: constant volume (every voxel is {lo:g}); blank or failed reconstruction?")
        if self.hu_limits is not None and (lo < self.hu_limits[0] or hi > self.hu_limits[1]):
            raise InputError(
                f"{case}: values in [{lo:g}, {hi:g}] exceed the Hounsfield-unit limits {self.hu_limits}; "
                "not a CT in HU?"
            )
        if self.min_max_hu is not None and hi < self.min_max_hu:
            raise InputError(
                f"{case}: maximum {hi:g} is below {self.min_max_hu:g} HU, so no voxel is denser than fat; "
                "not in Hounsfield units (already windowed or normalised?)."
            )
        if self.max_min_hu is not None and lo > self.max_min_hu:
            raise InputError(
                f"{case}: minimum {lo:g} is above {self.max_min_hu:g} HU, so the volume holds no air; not a chest "
                "CT in Hounsfield units (already windowed or normalised, or DICOM rescale intercept not applied?)."
            )
        return img

    def _dimension_problem(self, shape: tuple[int, ...]) -> str:
        spatial = self.expected_ndim - 1
        got = len(shape) - 1
        if got < spatial:
            return (
                f"{got}D image of shape {shape} where a {spatial}D volume (C, H, W, D) is expected; a single "
                "slice or a 2D picture?"
            )
        if self.expected_ndim == 3 and got == 3 and shape[0] == 1:
            return (
                f"4 dimensions, shape {shape}: a 3D volume where a 2D image (C, H, W) is expected; a CT or MRI "
                "volume, or a stack of slices?"
            )
        axes = "(C, H, W)" if self.expected_ndim == 3 else "(C, H, W, D)" if self.expected_ndim == 4 else "(C, ...)"
        return (
            f"{len(shape)} dimensions, shape {shape}, where {self.expected_ndim} {axes} are expected; a time "
            "series or a multi-phase study?"
        )

    def _channel_problem(self, shape: tuple[int, ...]) -> str:
        hint = "an RGB picture" if shape[0] in (3, 4) else "a time series or multi-phase study loaded as channels"
        return f"{shape[0]} channels, shape {shape}, where {self.expected_channels} is expected; {hint}?"


class CheckVolumed(MapTransform):
    """Dictionary version of :class:`CheckVolume`: validate ``data[key]`` for every key.

    Errors name the case (base name of the key's ``filename_or_obj``) and the key.

    Parameters
    ----------
    keys
        Keys of the volumes to check.
    min_slices, expected_ndim, expected_channels, min_max_hu, max_min_hu, hu_limits
        See :class:`CheckVolume`. Switch the HU checks off (``None``) for mask keys.
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_slices: int = 1,
        expected_ndim: int = 4,
        expected_channels: int | None = 1,
        min_max_hu: float | None = -500.0,
        max_min_hu: float | None = -500.0,
        hu_limits: tuple[float, float] | None = (-32768.0, 32767.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckVolume(min_slices, expected_ndim, expected_channels, min_max_hu, max_min_hu, hu_limits)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], key=key)
        return d


class CheckLabelMapd(MapTransform):
    """Check that label maps hold integer class indices in ``[0, num_classes)``; return the data unchanged.

    A mask saved with another label convention (e.g. FreeSurfer's raw ``aseg`` codes 4, 43, ... instead of
    1-3), with interpolated (fractional) values, or with a label the network has no output for would
    otherwise train silently on wrong targets or fail inside the loss.

    Raises
    ------
    InputError
        Naming the case, the key and the offending values.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            values = torch.as_tensor(label.as_tensor() if isinstance(label, MetaTensor) else label)
            case = f"case '{case_name(label)}' (key '{key}')"
            if values.numel() == 0:
                raise InputError(f"{case}: empty label map of shape {tuple(values.shape)}.")
            if values.is_floating_point() and not bool(torch.isfinite(values).all()):
                raise InputError(f"{case}: the label map holds NaN or infinite values.")
            if values.is_floating_point() and not bool((values == values.round()).all()):
                fractional = torch.unique(values[values != values.round()])[:5].tolist()
                raise InputError(f"{case}: the label map holds fractional values {fractional}, not class indices.")
            found = torch.unique(values).tolist()
            outside = [v for v in found if not 0 <= v < self.num_classes]
            if outside:
                raise InputError(
                    f"{case}: labels {[int(v) for v in outside][:10]} are outside the class range "
                    f"[0, {self.num_classes}); labels found: {[int(v) for v in found][:20]}."
                )
        return d
