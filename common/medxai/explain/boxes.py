"""Lesion boxes from an explanation map: threshold, connected components, one box each.

This is how seed 003 (Sec. 4.1.4, Fig. 13) and seed 000 (Fig. 5) derive "bounding boxes confined to the
infected areas" from the EDM class activation map: keep the salient part of the map, split it into
connected regions, and box each region. Works on 2D maps (H, W) and 3D maps (X, Y, Z) alike
(``scipy.ndimage.label`` for the components, ``skimage.measure.regionprops`` for boxes and scores).

A box is a plain, JSON-ready dict::

    {"min": [i0, j0(, k0)], "max": [i1, j1(, k1)],      # inclusive voxel indices of the first/last voxel
     "num_voxels": n, "score_max": float, "score_mean": float, "centroid": [...],
     # with an affine (voxel index -> world mm):
     "min_mm": [...], "max_mm": [...], "centroid_mm": [...], "area_mm2" (2D) or "volume_mm3" (3D)}

``min_mm``/``max_mm`` span the voxels' outer edges (index - 0.5 to index + 0.5), as the axis-aligned box
in world coordinates that contains the component's box; ``area_mm2``/``volume_mm3`` is the component's
own size (voxel count times voxel area/volume), not the box's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

from medxai.errors import InputError

__all__ = ["threshold_map", "boxes_from_map", "boxes_from_maps", "box_to_world"]

ThresholdMode = Literal["relative", "absolute", "otsu"]


def _to_numpy(array: Any, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().as_subclass(torch.Tensor).numpy()
    array = np.asarray(array)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} must be a numeric map, got dtype {array.dtype}.")
    if array.size == 0:
        raise InputError(f"{name} is empty, shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains {int((~np.isfinite(array)).sum())} NaN or Inf values.")
    return array.astype(np.float64, copy=False)


def _affine_of(value: Any) -> np.ndarray | None:
    """The affine of a MONAI MetaTensor (``.affine``), or ``None`` for plain tensors and arrays."""
    affine = getattr(value, "affine", None)
    if affine is None:
        return None
    return np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)


def threshold_map(
    saliency: np.ndarray | torch.Tensor, threshold: float = 0.5, mode: ThresholdMode = "relative"
) -> tuple[np.ndarray, float]:
    """Binary mask of the salient part of a map and the absolute threshold used.

    Parameters
    ----------
    saliency
        Map (H, W) or (X, Y, Z).
    threshold
        ``mode="relative"``: keep ``v >= threshold * max(v)`` (``threshold`` in (0, 1]; a map without a
        positive value keeps nothing). ``mode="absolute"``: keep ``v >= threshold``. ``mode="otsu"``:
        ``threshold`` is ignored and ``v > t_otsu`` is kept, with ``t_otsu`` from
        ``skimage.filters.threshold_otsu`` (Otsu, 1979); a constant map keeps nothing.

    Returns
    -------
    (mask, value)
        Boolean mask of the map's shape and the absolute threshold value.
    """
    values = _to_numpy(saliency, "saliency")
    if mode == "relative":
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"a relative threshold must be in (0, 1], got {threshold}.")
        peak = float(values.max())
        if peak <= 0.0:
            return np.zeros(values.shape, dtype=bool), float("inf")
        value = threshold * peak
        return values >= value, value
    if mode == "absolute":
        if not np.isfinite(threshold):
            raise InputError(f"an absolute threshold must be finite, got {threshold}.")
        return values >= threshold, float(threshold)
    if mode == "otsu":
        if float(values.max()) == float(values.min()):
            return np.zeros(values.shape, dtype=bool), float(values.max())
        value = float(threshold_otsu(values))
        return values > value, value
    raise InputError(f"unknown threshold mode '{mode}'; use 'relative', 'absolute' or 'otsu'.")


def _homogeneous_affine(affine: Any, spatial_dims: int) -> np.ndarray:
    """A 4x4 voxel-to-world affine from a (d+1, d+1) one; a 2D (3, 3) affine is embedded at k = 0."""
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if matrix.shape == (4, 4):
        return matrix
    if spatial_dims == 2 and matrix.shape == (3, 3):
        full = np.eye(4)
        full[:2, :2] = matrix[:2, :2]
        full[:2, 3] = matrix[:2, 2]
        return full
    raise InputError(f"affine must be 4x4 (or 3x3 for a 2D map), got shape {matrix.shape}.")


def box_to_world(
    box_min: Sequence[float], box_max: Sequence[float], affine: np.ndarray | torch.Tensor
) -> tuple[list[float], list[float]]:
    """World (mm) axis-aligned bounds of the voxel box ``[box_min, box_max]`` (inclusive indices).

    The box's outer voxel edges (``index - 0.5`` and ``index + 0.5``; all 2**d corners, so rotated or
    flipped affines are handled) are mapped through ``affine``; returns the element-wise minimum and
    maximum of the mapped corners, with as many coordinates as the map has dimensions (2 or 3).
    """
    dims = len(box_min)
    full = _homogeneous_affine(affine, dims)
    low = np.asarray(box_min, dtype=np.float64) - 0.5
    high = np.asarray(box_max, dtype=np.float64) + 0.5
    corners = np.array(list(itertools.product(*zip(low, high))))  # (2**d, d)
    padded = np.zeros((corners.shape[0], 4))
    padded[:, :dims] = corners
    padded[:, 3] = 1.0
    world = (full @ padded.T).T[:, :dims]
    return world.min(axis=0).tolist(), world.max(axis=0).tolist()


def _to_world_point(point: Sequence[float], full: np.ndarray) -> list[float]:
    dims = len(point)
    padded = np.zeros(4)
    padded[:dims] = point
    padded[3] = 1.0
    return (full @ padded)[:dims].tolist()


def boxes_from_map(
    saliency: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    mode: ThresholdMode = "relative",
    min_size: int = 1,
    affine: np.ndarray | torch.Tensor | None = None,
    connectivity: int | None = None,
) -> list[dict[str, Any]]:
    """Boxes around the connected components of the thresholded map, strongest first.

    Parameters
    ----------
    saliency
        One map (H, W) or (X, Y, Z); a MONAI MetaTensor brings its own affine.
    threshold, mode
        See :func:`threshold_map` (default: half of the map's maximum).
    min_size
        Components with fewer voxels are dropped (speckle).
    affine
        Voxel-index-to-world (mm) affine, 4x4 (or 3x3 for 2D). When given (or taken from a MetaTensor),
        each box also carries world coordinates and its area (mm^2) or volume (mm^3).
    connectivity
        Neighbourhood of the components: 1 = faces only, up to the number of dimensions (default) =
        faces, edges and corners (8-connectivity in 2D, 26 in 3D).

    Returns
    -------
    list of dict
        One box per component (see the module docstring), sorted by ``score_max`` then ``score_mean``,
        descending; empty when nothing passes the threshold.
    """
    values = _to_numpy(saliency, "saliency")
    dims = values.ndim
    if dims not in (2, 3):
        raise InputError(f"saliency must be a 2D (H, W) or 3D (X, Y, Z) map, got shape {values.shape}.")
    if min_size < 1:
        raise InputError(f"min_size must be >= 1, got {min_size}.")
    connectivity = dims if connectivity is None else connectivity
    if not 1 <= connectivity <= dims:
        raise InputError(f"connectivity must be in [1, {dims}] for a {dims}D map, got {connectivity}.")
    affine = _affine_of(saliency) if affine is None else affine
    full = _homogeneous_affine(affine, dims) if affine is not None else None

    mask, _ = threshold_map(values, threshold, mode)
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(dims, connectivity))
    if count == 0:
        return []
    voxel_measure = abs(float(np.linalg.det(full[:dims, :dims]))) if full is not None else None
    boxes = []
    for region in regionprops(labels, intensity_image=values):
        size = int(region.area)
        if size < min_size:
            continue
        box_min = [int(v) for v in region.bbox[:dims]]
        box_max = [int(v) - 1 for v in region.bbox[dims:]]
        box: dict[str, Any] = {
            "min": box_min,
            "max": box_max,
            "num_voxels": size,
            "score_max": float(region.intensity_max),
            "score_mean": float(region.intensity_mean),
            "centroid": [float(c) for c in region.centroid],
        }
        if full is not None:
            box["min_mm"], box["max_mm"] = box_to_world(box_min, box_max, full)
            box["centroid_mm"] = _to_world_point(box["centroid"], full)
            box["area_mm2" if dims == 2 else "volume_mm3"] = size * voxel_measure
        boxes.append(box)
    boxes.sort(key=lambda b: (-b["score_max"], -b["score_mean"], b["min"]))
    return boxes


def boxes_from_maps(
    maps: np.ndarray | torch.Tensor,
    threshold: float = 0.5,
    mode: ThresholdMode = "relative",
    min_size: int = 1,
    affine: np.ndarray | torch.Tensor | None = None,
    connectivity: int | None = None,
) -> list[list[dict[str, Any]]]:
    """:func:`boxes_from_map` for each sample of a batch of explainer maps (B, 1, *spatial).

    ``affine`` is one affine shared by the batch or one per sample (B, 4, 4); a batched MetaTensor brings
    its own (``maps.affine``).
    """
    if maps.ndim not in (4, 5) or maps.shape[1] != 1:
        raise InputError(f"maps must have shape (B, 1, H, W) or (B, 1, X, Y, Z), got {tuple(maps.shape)}.")
    affine = _affine_of(maps) if affine is None else affine
    affines: list[Any]
    if affine is None:
        affines = [None] * maps.shape[0]
    else:
        matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        if matrix.ndim == 3:
            if matrix.shape[0] != maps.shape[0]:
                raise InputError(f"got {matrix.shape[0]} affines for a batch of {maps.shape[0]} maps.")
            affines = list(matrix)
        else:
            affines = [matrix] * maps.shape[0]
    plain = maps.detach().cpu().as_subclass(torch.Tensor) if isinstance(maps, torch.Tensor) else maps
    return [
        boxes_from_map(plain[b, 0], threshold, mode, min_size, affines[b], connectivity)
        for b in range(maps.shape[0])
    ]
