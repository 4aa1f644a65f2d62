"""Lung zones from a lung mask, and how an explanation map's mass is shared among them.

Radiologists say where a finding is by lung and zone ("lower zone of the left lung"), not in pixels. From
a lung mask this module builds, for every pixel/voxel, its side (right/left lung of the *patient*), zone
(upper/middle/lower third of that lung's cranio-caudal extent) and depth (peripheral: the lateral third of
that lung's width on each line across the body; central: the medial two thirds), then measures which
share of a map's positive mass falls in each region or outside the lungs. :mod:`medxai.explain.text` turns
the shares into a sentence (seed 002, Figs. 2-4).

Conventions
-----------
* Masks: labelled, with ``right_label`` (default 1) for the patient's right lung and ``left_label``
  (default 2) for the left lung, or binary (any non-zero value is lung), which is split at the midline:
  the middle of the lungs' extent along the left-right axis.
* 2D chest X-ray masks are (H, W) arrays as displayed: row 0 is cranial (top), and the patient's right is
  on the image left, the standard display of frontal radiographs (PA, and AP too). Set
  ``patient_right_on_image_left=False`` for a mirrored image. MONAI's ``PILReader`` returns PNGs
  transposed, (W, H): transpose those first.
* 3D CT masks are (X, Y, Z) voxel arrays whose orientation is read from ``affine`` (a 4x4 voxel-to-world
  RAS+ matrix as nibabel and MONAI use; a MetaTensor mask brings its own) or given as ``axcodes`` such
  as ``"RAS"`` or ``"LPS"`` (the letter is the direction in which each voxel axis *increases*, nibabel's
  ``aff2axcodes``). Without either, ``"RAS"`` is assumed: the orientation of the project's synthetic
  volumes (``medxai.data.synthetic.io.spacing_affine``) and of MONAI's ``Orientation(axcodes="RAS")``.
  In radiological display of such a volume the patient's right is on the screen's left, as in a CXR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medxai.errors import InputError

__all__ = ["SIDES", "ZONES", "LungZones", "lung_zones", "region_shares"]

#: side codes of :attr:`LungZones.side` (index = code)
SIDES = ("outside", "right", "left")
#: zone codes of :attr:`LungZones.zone` (index = code)
ZONES = ("outside", "upper", "middle", "lower")


@dataclass(frozen=True)
class LungZones:
    """Per-pixel anatomy of a lung mask, each array of the mask's shape.

    Attributes
    ----------
    side
        int8: 0 outside the lungs, 1 the patient's right lung, 2 the left lung (see :data:`SIDES`).
    zone
        int8: 0 outside, 1 upper, 2 middle, 3 lower third of that lung's cranio-caudal extent (:data:`ZONES`).
    peripheral
        bool: inside a lung and in the lateral third of that lung's width along its line across the body.
    """

    side: np.ndarray
    zone: np.ndarray
    peripheral: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.side.shape)


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().as_subclass(torch.Tensor).numpy()
    array = np.asarray(value)
    if array.size == 0:
        raise InputError(f"{name} is empty, shape {array.shape}.")
    return array


def _orientation(
    spatial_dims: int, affine: Any, axcodes: str | None, patient_right_on_image_left: bool
) -> tuple[int, bool, int, bool]:
    """(cranio-caudal axis, cranial at high index?, left-right axis, patient's right at high index?)."""
    if spatial_dims == 2:
        return 0, False, 1, not patient_right_on_image_left
    if affine is not None:
        matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise InputError(f"a 3D lung mask needs a 4x4 affine, got shape {matrix.shape}.")
        codes = tuple(nib.aff2axcodes(matrix))
    else:
        codes = tuple((axcodes or "RAS").upper())
    lr = [i for i, c in enumerate(codes) if c in ("R", "L")]
    si = [i for i, c in enumerate(codes) if c in ("S", "I")]
    ap = [i for i, c in enumerate(codes) if c in ("A", "P")]
    if len(lr) != 1 or len(si) != 1 or len(ap) != 1:
        raise InputError(f"axcodes must contain one of R/L, A/P and S/I each, got {''.join(map(str, codes))!r}.")
    return si[0], codes[si[0]] == "S", lr[0], codes[lr[0]] == "R"


def _looks_labelled(mask: np.ndarray, right_label: int, left_label: int) -> bool:
    """Whether a mask holds right/left labels (both present) rather than one lung value (binary)."""
    if mask.dtype == bool:
        return False
    values = set(np.unique(mask[mask != 0]).tolist())
    if {right_label, left_label} <= values:
        return True
    if len(values) <= 1:
        return False
    raise InputError(
        f"cannot tell whether the lung mask is labelled (right {right_label}, left {left_label}) or binary: "
        f"it holds the values {sorted(values)}; pass labelled=True or labelled=False."
    )


def _split_sides(
    mask: np.ndarray, right_label: int, left_label: int, labelled: bool | None, lr_axis: int, right_high: bool
) -> np.ndarray:
    """Side codes (0/1 right/2 left) from a labelled mask, or from a binary one split at the midline."""
    if labelled is None:
        labelled = _looks_labelled(mask, right_label, left_label)
    side = np.zeros(mask.shape, dtype=np.int8)
    if labelled:
        side[mask == right_label] = 1
        side[mask == left_label] = 2
        return side
    lung = mask != 0
    if not lung.any():
        return side
    other_axes = tuple(a for a in range(mask.ndim) if a != lr_axis)
    occupied = np.nonzero(lung.any(axis=other_axes))[0]
    midline = (occupied[0] + occupied[-1]) / 2.0
    coords = np.arange(mask.shape[lr_axis], dtype=np.float64).reshape(
        [-1 if a == lr_axis else 1 for a in range(mask.ndim)]
    )
    right = (coords > midline) if right_high else (coords < midline)
    right = np.broadcast_to(right, mask.shape)
    side[lung & right] = 1
    side[lung & ~right] = 2
    return side


def _thirds_along(inside: np.ndarray, axis: int, from_high: bool) -> tuple[np.ndarray, np.ndarray]:
    """Relative position (0 at the chosen end, 1 at the other) of each pixel along ``axis`` within the
    per-line extent of ``inside`` and the number of pixels in that extent; NaN where not ``inside``."""
    n = inside.shape[axis]
    index = np.arange(n, dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(inside.ndim)])
    index = np.broadcast_to(index, inside.shape)
    low = np.where(inside, index, np.inf).min(axis=axis, keepdims=True)
    high = np.where(inside, index, -np.inf).max(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        width = high - low + 1.0
        offset = (high - index) if from_high else (index - low)
        position = np.where(inside, (offset + 0.5) / width, np.nan)
    return position, width


def lung_zones(
    mask: np.ndarray | torch.Tensor,
    right_label: int = 1,
    left_label: int = 2,
    labelled: bool | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    axcodes: str | None = None,
    patient_right_on_image_left: bool = True,
) -> LungZones:
    """Side, zone and depth of every pixel of a lung mask.

    Parameters
    ----------
    mask
        2D (H, W) chest X-ray mask or 3D (X, Y, Z) CT mask, labelled or binary (see the module conventions);
        a leading channel of size 1 is dropped. A MetaTensor brings its affine.
    right_label, left_label
        Values of the patient's right and left lung in a labelled mask.
    labelled
        ``True``: use the labels; ``False``: binary (any non-zero value is lung), split at the midline;
        ``None`` (default): labelled when both labels occur, binary when the mask is boolean or holds a
        single non-zero value (so a labelled mask showing one lung only needs ``labelled=True``), an
        error otherwise. A lung pixel exactly on the midline counts as left lung.
    affine, axcodes
        Orientation of a 3D mask (see the module docstring); ignored for 2D.
    patient_right_on_image_left
        2D only: ``True`` for the standard display of frontal chest radiographs.

    Returns
    -------
    LungZones
        The upper/middle/lower zones are the thirds of each lung's own cranio-caudal extent (pixel centres
        at relative height < 1/3, < 2/3, rest, measured from the apex). Peripheral pixels lie in the
        lateral third of their lung's extent along the same line across the body (per row in 2D, per
        left-right line in 3D), an operational version of the outer-third rule of chest radiograph reports.
    """
    if affine is None and axcodes is None:
        affine = getattr(mask, "affine", None)  # a MetaTensor's own geometry (used for 3D masks only)
    array = _to_numpy(mask, "mask")
    if array.ndim in (3, 4) and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise InputError(f"lung mask must be 2D (H, W) or 3D (X, Y, Z), got shape {array.shape}.")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.all(array == np.round(array))):
        raise InputError("lung mask must hold integer labels (or be boolean), got non-integer values.")
    if right_label == left_label:
        raise InputError(f"right_label and left_label must differ, both are {right_label}.")
    si_axis, cranial_high, lr_axis, right_high = _orientation(array.ndim, affine, axcodes, patient_right_on_image_left)

    side = _split_sides(array, right_label, left_label, labelled, lr_axis, right_high)
    zone = np.zeros(array.shape, dtype=np.int8)
    peripheral = np.zeros(array.shape, dtype=bool)
    for code in (1, 2):
        inside = side == code
        if not inside.any():
            continue
        # cranio-caudal thirds over the whole lung (extent of the lung projected on the cranio-caudal axis)
        other_axes = tuple(a for a in range(array.ndim) if a != si_axis)
        rows = np.nonzero(inside.any(axis=other_axes))[0]
        top, bottom = (rows[-1], rows[0]) if cranial_high else (rows[0], rows[-1])
        extent = abs(bottom - top) + 1.0
        index = np.arange(array.shape[si_axis], dtype=np.float64).reshape(
            [-1 if a == si_axis else 1 for a in range(array.ndim)]
        )
        height = (np.abs(index - top) + 0.5) / extent
        level = np.where(height < 1.0 / 3.0, 1, np.where(height < 2.0 / 3.0, 2, 3)).astype(np.int8)
        zone[inside] = np.broadcast_to(level, array.shape)[inside]
        # lateral third along each left-right line; the lateral end of the right lung is the patient's right
        lateral_high = right_high if code == 1 else not right_high
        position, _ = _thirds_along(inside, lr_axis, from_high=lateral_high)
        peripheral |= inside & (np.nan_to_num(position, nan=1.0) < 1.0 / 3.0)
    return LungZones(side=side, zone=zone, peripheral=peripheral)


def region_shares(saliency: np.ndarray | torch.Tensor, zones: LungZones) -> dict[str, Any]:
    """How the positive mass of a map is shared among the lung regions and the outside of the lungs.

    Only positive values count: a map's positive part is the evidence *for* the explained class (signed
    maps such as LRP also carry evidence against it).

    Parameters
    ----------
    saliency
        Map of the mask's shape (or with a leading channel of size 1).
    zones
        From :func:`lung_zones`.

    Returns
    -------
    dict
        ``{"total_mass": float, "outside": share, "regions": [{"side", "zone", "share",
        "peripheral_share"}, ...]}`` with the six regions (right/left x upper/middle/lower) sorted by share,
        descending (ties: right before left, upper before lower). Shares are fractions of the total
        positive mass (all zero when there is none); ``peripheral_share`` is the fraction of that region's
        mass in its peripheral part (0 for an empty region).
    """
    values = _to_numpy(saliency, "saliency").astype(np.float64)
    if values.ndim == len(zones.shape) + 1 and values.shape[0] == 1:
        values = values[0]
    if values.shape != zones.shape:
        raise InputError(f"saliency shape {values.shape} differs from the lung mask shape {zones.shape}.")
    if not np.all(np.isfinite(values)):
        raise InputError(f"saliency contains {int((~np.isfinite(values)).sum())} NaN or Inf values.")
    mass = np.clip(values, 0.0, None)
    total = float(mass.sum())
    scale = 1.0 / total if total > 0 else 0.0
    regions = []
    for side_code in (1, 2):
        for zone_code in (1, 2, 3):
            inside = (zones.side == side_code) & (zones.zone == zone_code)
            region_mass = float(mass[inside].sum())
            peripheral_mass = float(mass[inside & zones.peripheral].sum())
            regions.append(
                {
                    "side": SIDES[side_code],
                    "zone": ZONES[zone_code],
                    "share": region_mass * scale,
                    "peripheral_share": peripheral_mass / region_mass if region_mass > 0 else 0.0,
                }
            )
    regions.sort(key=lambda r: -r["share"])  # stable: keeps right-before-left, upper-before-lower on ties
    outside = float(mass[zones.side == 0].sum()) * scale
    return {"total_mass": total, "outside": outside, "regions": regions}
