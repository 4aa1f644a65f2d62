"""Aspect-preserving canvas inputs for 2D CNNs (Alshazly et al. 2021, seed 004 sec. 4).

CT slices come in many sizes (119 x 104 to 1485 x 1853 pixels in the paper's datasets, sec. 5.1), while a
CNN is trained on one input size. Rather than stretch every slice to that size, or crop it heavily, the
paper "embed[s] the image into a fixed-sized canvas. The aspect ratio of the original image is not altered
and padding is applied to match the target shape" (sec. 4). :class:`AspectCanvas` (array) and
:class:`AspectCanvasd` (dictionary) do this for a channel-first 2D image ``(C, H, W)`` and a canvas
``(H_c, W_c)``:

1. Scale uniformly by ``s = min(H_c / H, W_c / W)``, the largest factor at which the image still fits
   (images smaller than the canvas are enlarged). The content size is
   ``(h, w) = (round(H * s), round(W * s))`` with halves rounded up (``floor(x + 0.5)``), clipped to
   ``[1, H_c]`` and ``[1, W_c]`` (:func:`fit_size`). One side fills the canvas exactly; the other is within
   half a pixel of the exact aspect-preserving length.
2. Resize to ``(h, w)`` with MONAI's :class:`~monai.transforms.Resize` (default ``"bilinear"`` with MONAI's
   ``anti_aliasing=True``: a Gaussian of sigma ``(1 / s - 1) / 2`` before downsampling, nothing when
   enlarging). MONAI's Gaussian pads with zeros, so when the image is shrunk its outermost pixel or two
   are dimmed (a constant image of ones shrunk by 2 reads about 0.92 on its edge rows and 0.85 in its
   corners); CT slices have air there, and ``anti_aliasing=False`` avoids the effect at the price of aliasing
   when shrinking by large factors.
3. Pad to exactly ``(H_c, W_c)`` with the constant ``pad_value`` using MONAI's
   :class:`~monai.transforms.SpatialPad`: ``method="symmetric"`` centres the content (``floor(d / 2)``
   pixels before, the rest after, for a difference ``d``), ``method="end"`` pads after the content only.

Both MONAI steps update a MetaTensor's affine, so canvas pixels keep their world coordinates, and the two
are recorded as one invertible operation: :meth:`AspectCanvas.inverse`, ``AspectCanvasd.inverse`` and
MONAI's ``Invertd`` crop the padding and resize back to the original size (with the recorded
interpolation mode, as MONAI's ``Resize.inverse`` does; values come back only approximately, exactly
only where the resize was the identity). This maps predictions or explanation maps made on the canvas
back onto the original slice.

The stretch baseline that the paper argues against needs no class of ours: it is MONAI's
``Resize((H_c, W_c), mode="bilinear", anti_aliasing=True)``, which scales ``H`` by ``H_c / H`` and ``W``
by ``W_c / W`` and so changes the aspect ratio by ``(W_c / W) / (H_c / H)`` (a disc becomes an ellipse,
asserted in ``tests/transforms/test_canvas.py``). Per-architecture canvas sizes (Table 1) are in
:mod:`medxai.networks.input_sizes`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Resize, SpatialPad
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from medxai.errors import InputError
from medxai.transforms.checks import case_name, check_resample_range

__all__ = ["CANVAS_MODES", "fit_size", "AspectCanvas", "AspectCanvasd"]

#: Interpolation modes of :class:`monai.transforms.Resize` that apply to 2D images.
CANVAS_MODES = ("bilinear", "bicubic", "area", "nearest", "nearest-exact")
_METHODS = ("symmetric", "end")


def _check_canvas(spatial_size: Any) -> tuple[int, int]:
    """``spatial_size`` as two positive ints ``(H_c, W_c)``, or an :class:`InputError` naming it."""
    pair = tuple(spatial_size) if isinstance(spatial_size, (Sequence, np.ndarray)) else None
    if (
        pair is None
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair)
    ):
        raise InputError(f"AspectCanvas: spatial_size must be two positive integers (H_c, W_c), got {spatial_size!r}.")
    return int(pair[0]), int(pair[1])


def _check_mode(mode: str) -> str:
    if mode not in CANVAS_MODES:
        raise InputError(f"AspectCanvas: mode must be one of {CANVAS_MODES}, got {mode!r}.")
    return mode


def _check_pad_value(pad_value: float) -> float:
    if (
        isinstance(pad_value, bool)
        or not isinstance(pad_value, (int, float, np.number))
        or not math.isfinite(pad_value)
    ):
        raise InputError(f"AspectCanvas: pad_value must be a finite number, got {pad_value!r}.")
    return float(pad_value)


def _check_image(img: Any, key: Hashable | None = None) -> tuple[int, int]:
    """Spatial size ``(H, W)`` of a channel-first 2D image, or an :class:`InputError` naming the case/key."""
    shape = tuple(int(s) for s in getattr(img, "shape", np.shape(img)))
    if len(shape) != 3 or min(shape) < 1:
        where = f"case '{case_name(img)}'" + ("" if key is None else f" (key '{key}')")
        raise InputError(
            f"AspectCanvas: {where} must be a non-empty channel-first 2D image (C, H, W), got shape {shape}."
        )
    return shape[1], shape[2]


def fit_size(image_size: Sequence[int], spatial_size: Sequence[int]) -> tuple[int, int]:
    """Size ``(h, w)`` of an ``(H, W)`` image scaled uniformly to fit a canvas ``(H_c, W_c)``.

    ``s = min(H_c / H, W_c / W)``; ``h = floor(H * s + 0.5)`` and ``w = floor(W * s + 0.5)`` (round half
    up), each clipped to ``[1, H_c]`` and ``[1, W_c]``.

    Parameters
    ----------
    image_size
        ``(H, W)``, positive.
    spatial_size
        Canvas ``(H_c, W_c)``, positive.

    Returns
    -------
    (h, w)
        E.g. ``(200, 100)`` for a 100 x 50 image on a 200 x 200 canvas.

    Raises
    ------
    InputError
        For a non-positive or malformed size, naming it.
    """
    canvas = _check_canvas(spatial_size)
    height, width = (int(v) for v in image_size) if len(image_size) == 2 else (0, 0)
    if height < 1 or width < 1:
        raise InputError(f"AspectCanvas: image size must be two positive integers (H, W), got {image_size!r}.")
    scale = min(canvas[0] / height, canvas[1] / width)
    return (
        min(canvas[0], max(1, math.floor(height * scale + 0.5))),
        min(canvas[1], max(1, math.floor(width * scale + 0.5))),
    )


class AspectCanvas(InvertibleTransform):
    """Scale a 2D image ``(C, H, W)`` uniformly to fit a canvas ``(H_c, W_c)`` and pad the rest (seed 004 sec. 4).

    See the module docstring for the rounding rule, the interpolation and the inverse.

    Parameters
    ----------
    spatial_size
        Canvas ``(H_c, W_c)`` in MONAI's axis order (rows, columns); e.g.
        ``medxai.networks.input_sizes.canvas_size("resnet50")``.
    mode
        Interpolation of :class:`monai.transforms.Resize`, one of :data:`CANVAS_MODES`: ``"bilinear"``
        (default) or ``"area"`` for images, ``"nearest-exact"`` for masks.
    anti_aliasing
        MONAI's Gaussian pre-filter when shrinking (ignored when enlarging); use ``False`` for masks.
    pad_value
        Constant written into the padding (0: black for images scaled to [0, 1]; use the air value, e.g.
        -1000, for images still in Hounsfield units).
    method
        ``"symmetric"`` (content centred) or ``"end"`` (content at the top left, padding after it).

    Returns
    -------
    The image on the canvas, ``(C, H_c, W_c)`` float32: a MetaTensor (affine updated, the operation recorded
    for :meth:`inverse`) for a MetaTensor, otherwise the input's type (numpy array or tensor on its device).

    Raises
    ------
    InputError
        For a canvas that is not two positive integers, an unknown mode or method, a non-finite pad value, an
        image that is not a non-empty ``(C, H, W)``, or one holding NaN/Inf or values that overflow the float32
        resampling (:func:`~medxai.transforms.checks.check_resample_range`), naming the value or the case.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        spatial_size: Sequence[int],
        mode: str = "bilinear",
        anti_aliasing: bool = True,
        pad_value: float = 0.0,
        method: str = "symmetric",
    ) -> None:
        self.spatial_size = _check_canvas(spatial_size)
        self.mode = _check_mode(mode)
        self.anti_aliasing = bool(anti_aliasing)
        self.pad_value = _check_pad_value(pad_value)
        if method not in _METHODS:
            raise InputError(f"AspectCanvas: method must be one of {_METHODS}, got {method!r}.")
        self.method = method
        self.padder = SpatialPad(self.spatial_size, method=method, mode="constant")

    def __call__(
        self,
        img: Any,
        mode: str | None = None,
        anti_aliasing: bool | None = None,
        pad_value: float | None = None,
    ) -> Any:
        """Put ``img`` ``(C, H, W)`` on the canvas; ``mode``, ``anti_aliasing``, ``pad_value`` override the defaults."""
        mode_ = self.mode if mode is None else _check_mode(mode)
        anti_aliasing_ = self.anti_aliasing if anti_aliasing is None else bool(anti_aliasing)
        pad_value_ = self.pad_value if pad_value is None else _check_pad_value(pad_value)
        image_size = _check_image(img)
        check_resample_range(img, f"AspectCanvas: case '{case_name(img)}'", image_size[0] * image_size[1])
        content = fit_size(image_size, self.spatial_size)
        track = get_track_meta() and isinstance(img, MetaTensor)
        img_t = convert_to_tensor(img, track_meta=track)
        resized = Resize(content, mode=mode_, anti_aliasing=anti_aliasing_)(img_t, dtype=torch.float32, lazy=False)
        out = self.padder(resized, lazy=False, value=pad_value_)
        if track:
            # record the two MONAI operations as one, so that `inverse` (and `Invertd`) undo both
            pad_info = out.applied_operations.pop()
            resize_info = out.applied_operations.pop()
            self.push_transform(
                out,
                orig_size=resize_info.get(TraceKeys.ORIG_SIZE),
                extra_info={"resize_info": resize_info, "pad_info": pad_info},
                lazy=False,
            )
            return out
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Crop the padding and resize back to the original ``(H, W)`` (a MetaTensor made by this transform)."""
        transform = self.pop_transform(data)
        return self.inverse_transform(data, transform)

    def inverse_transform(self, data: torch.Tensor, transform: Mapping) -> torch.Tensor:
        """Undo the recorded operation ``transform``: the padding first, then the resize."""
        extra = transform[TraceKeys.EXTRA_INFO]
        pad_info, resize_info = dict(extra["pad_info"]), dict(extra["resize_info"])
        pad_info[TraceKeys.ID] = id(self.padder)  # the padder that wrote the entry may have been a copy
        data.applied_operations.append(pad_info)  # type: ignore[attr-defined]
        cropped = self.padder.inverse(data)
        resizer = Resize(spatial_size=resize_info[TraceKeys.ORIG_SIZE])
        return resizer.inverse_transform(cropped, resize_info)


class AspectCanvasd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`AspectCanvas`; invertible with ``inverse`` or MONAI's ``Invertd``.

    Each key is fitted on its own; keys of the same size (an image and its mask) get the same content box.
    Only MetaTensors (as ``LoadImaged`` or ``EnsureTyped`` make them) record the operation; numpy arrays and
    plain tensors come back as such and cannot be inverted.

    Parameters
    ----------
    keys
        Keys of channel-first 2D images ``(C, H, W)``.
    spatial_size
        Canvas ``(H_c, W_c)``.
    mode, anti_aliasing, pad_value
        As in :class:`AspectCanvas`, one value or one per key (e.g. ``mode=("bilinear", "nearest-exact")``,
        ``anti_aliasing=(True, False)`` for an image and its mask).
    method
        ``"symmetric"`` or ``"end"``, for every key.
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.
    """

    backend = AspectCanvas.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: str | Sequence[str] = "bilinear",
        anti_aliasing: bool | Sequence[bool] = True,
        pad_value: float | Sequence[float] = 0.0,
        method: str = "symmetric",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.canvas = AspectCanvas(spatial_size, method=method)
        self.mode = tuple(_check_mode(m) for m in ensure_tuple_rep(mode, len(self.keys)))
        self.anti_aliasing = tuple(bool(a) for a in ensure_tuple_rep(anti_aliasing, len(self.keys)))
        self.pad_value = tuple(_check_pad_value(v) for v in ensure_tuple_rep(pad_value, len(self.keys)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode, anti_aliasing, pad_value in self.key_iterator(d, self.mode, self.anti_aliasing, self.pad_value):
            _check_image(d[key], key)
            d[key] = self.canvas(d[key], mode=mode, anti_aliasing=anti_aliasing, pad_value=pad_value)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.canvas.inverse(d[key])
        return d
