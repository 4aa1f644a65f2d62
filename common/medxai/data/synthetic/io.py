"""Writing synthetic cases: NIfTI volumes, PNG images and MONAI datalist JSON files.

Shared by the CT, CXR and brain phantom generators so that every demo set has the same layout::

    <output_dir>/
      datalist.json          {"training": [...], "validation": [...], "test": [...], "metadata": {...}}
      images/<case>.nii.gz   (or .png)
      labels/<case>.nii.gz   masks, same geometry as the image

Paths inside the datalist are relative to its folder, as ``monai.data.load_decathlon_datalist``
expects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = ["save_nifti", "save_png", "write_datalist", "spacing_affine"]


def spacing_affine(spacing: Sequence[float], origin: Sequence[float] | None = None) -> np.ndarray:
    """A 4x4 RAS affine with the given voxel ``spacing`` (mm) along (x, y, z) and ``origin`` (mm)."""
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}.")
    affine = np.diag([float(s) for s in spacing] + [1.0])
    if origin is not None:
        affine[:3, 3] = np.asarray(origin, dtype=float)
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: Any = None) -> Path:
    """Save ``array`` (X, Y, Z) with ``affine`` as NIfTI, creating parent folders; returns the path.

    Integer label maps should be passed with an integer ``dtype`` so they are stored exactly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array if dtype is None else array.astype(dtype))
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    # A fixed header (no timestamps) keeps equal seeds byte-identical.
    nib.save(img, str(path))
    return path


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save a 2D ``uint8`` or ``uint16`` array (rows, columns) as a grayscale PNG; returns the path."""
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"save_png expects a 2D uint8/uint16 array, got shape {array.shape} dtype {array.dtype}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def write_datalist(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a MONAI datalist JSON with one list per split and an optional ``metadata`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {name: [dict(r) for r in records] for name, records in splits.items()}
    if metadata:
        content["metadata"] = dict(metadata)
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n")
    return path
