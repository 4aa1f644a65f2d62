"""Writing explanations: NIfTI maps with the input's geometry, PNG overlays with boxes, and JSON records.

Every writer takes an output folder and a *case name* chosen by the caller (e.g. ``pseudonym(patient_id)``
from :mod:`medxai.data.privacy`, or a running index) and writes ``<output_dir>/<case_name><suffix>.<ext>``.
Case names must be plain file-name stems (letters, digits, ``.``, ``_``, ``-``; no path separators, no
``..``), so an output can never land outside its folder; an invalid name is refused with an error that
names the offending character but not the name itself, which may be a patient identifier.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from medxai.data.fault_tolerant import atomic_write
from medxai.errors import InputError

__all__ = [
    "check_case_name",
    "affine_from",
    "save_map_nifti",
    "render_overlay",
    "top_slices",
    "render_montage",
    "save_overlay_png",
    "to_jsonable",
    "save_json",
    "save_png",
]

_CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_CASE_NAME = 128
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_case_name(case_name: str) -> str:
    """Return ``case_name`` if it is a safe file-name stem, else raise :class:`InputError`.

    Allowed: 1 to 128 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, without
    ``..``. The error names the first offending character and its position, never the whole name.
    """
    if not isinstance(case_name, str):
        raise InputError(f"case name must be a string, got {type(case_name).__name__}.")
    if not case_name:
        raise InputError("case name is empty.")
    if len(case_name) > _MAX_CASE_NAME:
        raise InputError(f"case name has {len(case_name)} characters, at most {_MAX_CASE_NAME} are allowed.")
    if ".." in case_name:
        raise InputError(f"case name contains '..' at position {case_name.index('..')} (path traversal).")
    if not _CASE_NAME.fullmatch(case_name):
        for position, char in enumerate(case_name):
            allowed_here = char.isascii() and (char.isalnum() or (position > 0 and char in "._-"))
            if not allowed_here:
                kind = " (a path separator)" if char in ("/", "\\") else ""
                raise InputError(
                    f"case name contains {char!r}{kind} at position {position}; use letters, digits, '.', '_' "
                    f"and '-' only, starting with a letter or digit."
                )
    return case_name


def _output_path(output_dir: str | Path, case_name: str, suffix: str, extension: str) -> Path:
    check_case_name(case_name)
    if suffix and not re.fullmatch(r"[A-Za-z0-9._-]*", suffix):
        raise InputError(f"suffix {suffix!r} may contain letters, digits, '.', '_' and '-' only.")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{case_name}{suffix}{extension}"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(value)


def _spatial(value: Any, name: str) -> np.ndarray:
    """A single image/map as a spatial array: a leading channel of size 1 is dropped ((1, X, Y, Z) or
    (1, H, W)); the result must be 2D or 3D."""
    array = _numpy(value)
    if array.ndim in (3, 4) and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3) or array.size == 0:
        raise InputError(
            f"{name} must be 2D (H, W) or 3D (X, Y, Z), optionally with a channel of 1; got {array.shape}."
        )
    return array


def affine_from(reference: Any) -> np.ndarray | None:
    """The voxel-to-world RAS affine of a MONAI MetaTensor or metadata dict, or ``None`` if it has none.

    Reads ``reference.affine`` (MetaTensor) or ``reference["affine"]`` (a ``meta_dict`` / ``image_meta_dict``)
    and converts it from LPS to RAS when the metadata says ``space == "LPS"`` (NIfTI files are RAS).
    """
    if reference is None:
        return None
    if isinstance(reference, Mapping):
        affine, space = reference.get("affine"), reference.get("space")
    else:
        affine = getattr(reference, "affine", None)
        meta = getattr(reference, "meta", None)
        space = meta.get("space") if isinstance(meta, Mapping) else None
    if affine is None:
        return None
    matrix = np.asarray(_numpy(affine), dtype=np.float64)
    if matrix.ndim == 3 and matrix.shape[0] == 1:
        matrix = matrix[0]
    if str(space).upper() == "LPS":
        flip = _LPS_TO_RAS if matrix.shape == (4, 4) else np.diag([-1.0, -1.0, 1.0])
        matrix = flip @ matrix
    return matrix


def save_map_nifti(
    saliency: np.ndarray | torch.Tensor,
    output_dir: str | Path,
    case_name: str,
    affine: np.ndarray | torch.Tensor | None = None,
    reference: Any = None,
    suffix: str = "_map",
    dtype: Any = np.float32,
) -> Path:
    """Save one map (X, Y, Z) or (H, W) (or with a channel of 1) as NIfTI with the input image's geometry.

    The affine is, in this order: ``affine``; that of ``reference`` (the input MetaTensor or its metadata
    dict, see :func:`affine_from`); the map's own if it is a MetaTensor. Without any, the geometry is
    unknown and an :class:`InputError` is raised rather than writing a misplaced map. The values are
    written as they are (no normalisation), as ``dtype``.

    Returns
    -------
    Path
        ``<output_dir>/<case_name><suffix>.nii.gz``.
    """
    check_case_name(case_name)
    if affine is None:
        affine = affine_from(reference)
    if affine is None:
        affine = affine_from(saliency)
    if affine is None:
        raise InputError(
            f"no affine for case map '{case_name}': pass affine= or reference= (the input MetaTensor or its meta dict)."
        )
    matrix = np.asarray(_numpy(affine), dtype=np.float64)
    data = _spatial(saliency, "saliency")
    if matrix.shape == (3, 3) and data.ndim == 2:
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = matrix[:2, :2], matrix[:2, 2]
        matrix = full
    if matrix.shape != (4, 4):
        raise InputError(f"affine of case map '{case_name}' must be 4x4 (3x3 for 2D), got shape {matrix.shape}.")
    if not np.all(np.isfinite(data)):
        raise InputError(f"map of case '{case_name}' contains {int((~np.isfinite(data)).sum())} NaN or Inf values.")
    path = _output_path(output_dir, case_name, suffix, ".nii.gz")
    image = nib.Nifti1Image(data.astype(dtype), matrix)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def _draw_box(
    rgb: np.ndarray, box_min: Sequence[int], box_max: Sequence[int], color: Sequence[int], width: int
) -> None:
    """Outline of the inclusive pixel box [box_min, box_max] (row, col), ``width`` pixels thick, inward."""
    rows, cols = rgb.shape[:2]
    r0, c0 = max(int(box_min[0]), 0), max(int(box_min[1]), 0)
    r1, c1 = min(int(box_max[0]), rows - 1), min(int(box_max[1]), cols - 1)
    if r0 > r1 or c0 > c1:
        return
    colour = np.asarray(color, dtype=np.uint8)
    rgb[r0 : min(r0 + width, r1 + 1), c0 : c1 + 1] = colour
    rgb[max(r1 - width + 1, r0) : r1 + 1, c0 : c1 + 1] = colour
    rgb[r0 : r1 + 1, c0 : min(c0 + width, c1 + 1)] = colour
    rgb[r0 : r1 + 1, max(c1 - width + 1, c0) : c1 + 1] = colour


def render_overlay(
    image: np.ndarray | torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    boxes: Sequence[Mapping[str, Any]] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    map_range: tuple[float, float] | None = None,
    image_range: tuple[float, float] | None = None,
    box_color: Sequence[int] = (255, 0, 0),
    box_width: int = 1,
) -> np.ndarray:
    """A 2D grayscale image with the map blended over it in colour and boxes drawn: (H, W, 3) uint8.

    Parameters
    ----------
    image, saliency
        (H, W) arrays of the same shape (a leading channel of 1 is dropped).
    cmap
        Matplotlib colour map of the map.
    alpha
        Opacity where the map reaches the top of ``map_range``; it falls linearly to 0 at the bottom, so
        the image shows unchanged wherever the map is at or below ``map_range[0]`` (default ``(0, max)``).
    image_range
        Intensities shown black and white (e.g. a CT window in HU); default: the image's min and max.
    boxes
        Dicts with ``"min"``/``"max"`` inclusive (row, col) corners (as :mod:`medxai.explain.boxes` makes),
        drawn as ``box_width``-pixel outlines in ``box_color``.
    """
    gray = _spatial(image, "image")
    heat = _spatial(saliency, "saliency")
    if gray.ndim != 2 or heat.shape != gray.shape:
        raise InputError(f"render_overlay needs a 2D image and map of one shape, got {gray.shape} and {heat.shape}.")
    if not 0.0 <= alpha <= 1.0 or box_width < 1:
        raise InputError(f"need 0 <= alpha <= 1 and box_width >= 1, got {alpha} and {box_width}.")
    low, high = image_range if image_range is not None else (float(gray.min()), float(gray.max()))
    base = np.repeat(_scale(gray, low, high)[..., None], 3, axis=2)
    map_low, map_high = map_range if map_range is not None else (0.0, float(heat.max()))
    level = _scale(heat, map_low, map_high)
    colour = colormaps[cmap](level)[..., :3]
    weight = alpha * level[..., None]
    rgb = np.round(255.0 * ((1.0 - weight) * base + weight * colour)).astype(np.uint8)
    for box in boxes or []:
        _draw_box(rgb, box["min"], box["max"], box_color, box_width)
    return rgb


def top_slices(saliency: np.ndarray | torch.Tensor, count: int, axis: int = -1) -> list[int]:
    """Indices of the ``count`` slices along ``axis`` with the most positive map mass, in ascending order."""
    volume = _spatial(saliency, "saliency")
    if volume.ndim != 3:
        raise InputError(f"top_slices needs a 3D map, got shape {volume.shape}.")
    axis = axis % 3
    mass = np.clip(volume, 0, None).sum(axis=tuple(a for a in range(3) if a != axis))
    count = max(1, min(int(count), volume.shape[axis]))
    order = np.argsort(-mass, kind="stable")[:count]
    return sorted(int(i) for i in order)


def _slice_boxes(boxes: Sequence[Mapping[str, Any]] | None, index: int, axis: int) -> list[dict[str, Any]]:
    """3D boxes cut by slice ``index`` along ``axis``, as 2D boxes in the slice's remaining axes."""
    kept = []
    for box in boxes or []:
        if box["min"][axis] <= index <= box["max"][axis]:
            kept.append(
                {
                    "min": [v for a, v in enumerate(box["min"]) if a != axis],
                    "max": [v for a, v in enumerate(box["max"]) if a != axis],
                }
            )
    return kept


def render_montage(
    image: np.ndarray | torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    boxes: Sequence[Mapping[str, Any]] | None = None,
    slices: int | Sequence[int] | None = None,
    count: int = 4,
    axis: int = -1,
    columns: int | None = None,
    **overlay_kwargs: Any,
) -> np.ndarray:
    """Overlays of slices of a 3D image (X, Y, Z) and map, tiled in a grid: (rows * h, columns * w, 3) uint8.

    Parameters
    ----------
    slices
        One slice index, a list of them, or ``None`` for the ``count`` slices with the most map mass
        (:func:`top_slices`). Slices are shown as stored (rows = the first remaining axis); orient the
        volume beforehand (e.g. MONAI ``Orientation``) for a radiological view.
    boxes
        3D boxes (:func:`medxai.explain.boxes.boxes_from_map`); each is drawn on the slices it crosses.
    columns
        Grid width; default ``ceil(sqrt(number of slices))``. Unused tiles are black.
    overlay_kwargs
        Passed to :func:`render_overlay`. Image and map ranges default to the whole volume's, so all
        tiles share one scale.
    """
    volume = _spatial(image, "image")
    heat = _spatial(saliency, "saliency")
    if volume.ndim != 3 or heat.shape != volume.shape:
        raise InputError(f"render_montage needs a 3D image and map of one shape, got {volume.shape} and {heat.shape}.")
    axis = axis % 3
    if slices is None:
        indices = top_slices(heat, count, axis)
    else:
        indices = [int(slices)] if isinstance(slices, (int, np.integer)) else [int(i) for i in slices]
    if not indices:
        raise InputError("render_montage got an empty list of slices.")
    for i in indices:
        if not 0 <= i < volume.shape[axis]:
            raise InputError(f"slice {i} is outside [0, {volume.shape[axis]}) along axis {axis}.")
    overlay_kwargs.setdefault("image_range", (float(volume.min()), float(volume.max())))
    overlay_kwargs.setdefault("map_range", (0.0, float(heat.max())))
    tiles = [
        render_overlay(np.take(volume, i, axis=axis), np.take(heat, i, axis=axis), _slice_boxes(boxes, i, axis),
                       **overlay_kwargs)
        for i in indices
    ]
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles[0].shape[:2]
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return canvas


def save_overlay_png(
    image: np.ndarray | torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    output_dir: str | Path,
    case_name: str,
    boxes: Sequence[Mapping[str, Any]] | None = None,
    suffix: str = "_overlay",
    **render_kwargs: Any,
) -> Path:
    """Save the overlay of a 2D image (:func:`render_overlay`) or of slices of a 3D one
    (:func:`render_montage`; ``slices``, ``count``, ``axis``, ``columns``) as an RGB PNG.

    Returns
    -------
    Path
        ``<output_dir>/<case_name><suffix>.png``; the PNG has one pixel per image pixel.
    """
    check_case_name(case_name)
    if _spatial(image, "image").ndim == 2:
        rgb = render_overlay(image, saliency, boxes, **render_kwargs)
    else:
        rgb = render_montage(image, saliency, boxes, **render_kwargs)
    path = _output_path(output_dir, case_name, suffix, ".png")
    Image.fromarray(rgb).save(path, format="PNG")
    return path


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy/torch scalars and arrays, paths, sets and dataclasses turned into JSON types.

    Non-finite floats become ``None`` (JSON has no NaN or Infinity); mapping keys become strings; objects
    with an ``as_dict()`` method (e.g. :class:`medxai.explain.text.TextExplanation`) are converted by it.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().as_subclass(torch.Tensor).numpy())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict") and callable(value.as_dict):
        return to_jsonable(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)) if not isinstance(k, str) else k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    raise InputError(f"cannot write a {type(value).__name__} to JSON.")


def save_json(
    record: Mapping[str, Any], output_dir: str | Path, case_name: str, suffix: str = "_explanation"
) -> Path:
    """Save a record (boxes, sentence, probabilities, ...) as JSON (indented, strict: no NaN).

    The file is written atomically (a temporary file, then :func:`os.replace`): it is either absent or
    complete, so handlers that write a case's JSON last can take its presence as "this case is done".

    Returns
    -------
    Path
        ``<output_dir>/<case_name><suffix>.json``.
    """
    check_case_name(case_name)
    content = json.dumps(to_jsonable(record), indent=2, allow_nan=False)
    path = _output_path(output_dir, case_name, suffix, ".json")
    atomic_write(path, content + "\n")
    return path


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, 3) uint8 image as PNG at ``path``, atomically (see :func:`save_json`)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return atomic_write(path, buffer.getvalue())
