"""Synthetic 3D head phantoms with labelled ventricles, as thin and thick slices of the same subject.

Built for the thick/thin semi-supervised ventricle segmentation of seed 003 (section 3.3): a subject is
rendered once on a thin-slice grid (1 mm along z by default), and its thick-slice version is made the way
a thick reconstruction relates to thin ones, by averaging consecutive slabs of ``thick_factor`` thin slices
along z (partial-volume effect); the thick label is the per-voxel majority over the slab.

Anatomy (head frame, mm; RAS: +x right, +y anterior, +z superior, origin near the thalami): scalp, skull
(cortical tables and diploe) closed by a skull base, subarachnoid and sulcal CSF, cortical and deep grey
matter, white matter, cerebellum and brainstem, and the ventricular system:

* label 1, lateral ventricles: paired C-shaped tubes (frontal horn, body, atrium, occipital and temporal
  horns) with butterfly-shaped coronal sections, separated by the septum pellucidum;
* label 2, third ventricle: thin midline slit between the thalami;
* label 3, fourth ventricle: tent-shaped cavity in the posterior fossa between brainstem and cerebellum.

The cerebral aqueduct is rendered as CSF but left unlabelled, as in FreeSurfer's ``aseg``. Subjects vary
by seed in head size, pose (a few degrees of rotation) and condition (normal, atrophy with widened sulci,
hydrocephalus with enlarged ventricles; Evans index in the metadata). Contrasts: ``"ct"`` (Hounsfield
units), ``"t1"`` and ``"t2"`` (spin-echo signal equation from relaxation times), each with its own noise and
bias / cupping field. ``docs/data.md`` lists every parameter with its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medxai.data.splits import patient_split
from medxai.data.synthetic.io import save_nifti, spacing_affine, write_datalist
from medxai.errors import InputError

__all__ = [
    "BRAIN_LABELS",
    "BRAIN_TISSUES",
    "BRAIN_CONTRASTS",
    "BRAIN_CONDITIONS",
    "CT_HU",
    "MR_RELAXATION",
    "MR_SEQUENCES",
    "BrainCase",
    "thick_from_thin",
    "thick_affine_from_thin",
    "tissue_intensities",
    "generate_brain_case",
    "generate_brain_dataset",
]

BRAIN_LABELS: dict[str, int] = {"background": 0, "lateral": 1, "third": 2, "fourth": 3}
"""Ventricle labels (same values as the shared FreeSurfer "bert" subset)."""

BRAIN_TISSUES: dict[str, int] = {
    "background": 0,
    "scalp": 1,
    "bone": 2,
    "marrow": 3,
    "csf": 4,
    "grey_matter": 5,
    "white_matter": 6,
    "ventricle": 7,
}
"""Tissue classes of :attr:`BrainCase.thin_tissue`; ``ventricle`` is CSF inside labels 1-3."""

BRAIN_CONTRASTS: tuple[str, ...] = ("ct", "t1", "t2")
BRAIN_CONDITIONS: tuple[str, ...] = ("normal", "atrophy", "hydrocephalus")

# Seed 003's cohort: 20 normal elderly, 20 cerebral atrophy, 64 normal-pressure + 51 acquired hydrocephalus.
_CONDITION_PRIOR = np.array([20.0, 20.0, 115.0]) / 155.0

CT_HU: dict[str, float] = {
    "background": -1000.0,
    "scalp": 20.0,  # skin, muscle and fat
    "bone": 1500.0,  # cortical tables
    "marrow": 450.0,  # diploe
    "csf": 8.0,  # 0-15 HU
    "grey_matter": 40.0,  # 35-45 HU
    "white_matter": 26.0,  # 20-30 HU
    "ventricle": 8.0,
}
"""Non-contrast head CT numbers (HU) per tissue."""

MR_RELAXATION: dict[str, tuple[float, float, float]] = {
    # (relative proton density, T1 ms, T2 ms) at 3 T
    "background": (0.0, 1000.0, 1.0),
    "scalp": (0.9, 400.0, 100.0),  # mostly subcutaneous fat
    "bone": (0.05, 1000.0, 1.0),  # cortical bone: almost no mobile protons, T2 well below TE
    "marrow": (0.9, 380.0, 130.0),  # fatty diploe
    "csf": (1.0, 4000.0, 2000.0),
    "grey_matter": (0.8, 1331.0, 110.0),  # Wansapura et al. 1999
    "white_matter": (0.7, 832.0, 80.0),  # Wansapura et al. 1999
    "ventricle": (1.0, 4000.0, 2000.0),
}
"""Proton density and relaxation times used by the spin-echo signal equation."""

MR_SEQUENCES: dict[str, dict[str, float]] = {
    "t1": {"tr_ms": 500.0, "te_ms": 10.0},
    "t2": {"tr_ms": 5000.0, "te_ms": 100.0},
}
"""Spin-echo repetition and echo times of the two MR contrasts."""

# Deep grey nuclei per hemisphere: (|x|, y, z) centre and semi-axes, mm: caudate head, thalamus, lentiform.
_DEEP_GREY = (
    ((16.0, 14.0, 14.0), (5.0, 14.0, 8.0)),
    ((10.0, -8.0, 4.0), (8.0, 14.0, 9.0)),
    ((24.0, 4.0, 2.0), (6.0, 15.0, 9.0)),
)

_NOISE = {"ct": 6.0, "t1": 12.0, "t2": 12.0}  # CT: HU; MR: Rician sigma in signal units (x1000 scale)


@dataclass
class BrainCase:
    """One subject rendered as thin and thick slices.

    Attributes
    ----------
    thin_image
        (X, Y, Z) float32 thin-slice volume (HU for CT, arbitrary signal units for MR).
    thin_label
        (X, Y, Z) uint8 ventricle labels (:data:`BRAIN_LABELS`).
    thick_image
        (X, Y, Z // thick_factor) float32: mean of each slab of ``thick_factor`` thin slices.
    thick_label
        (X, Y, Z // thick_factor) uint8: per-voxel majority label over each slab (ties: smallest label).
    thin_affine, thick_affine
        4x4 RAS voxel-to-mm affines; the thick z spacing is ``thick_factor`` times the thin one and its
        slice centres are the slab centres.
    contrast
        ``"ct"``, ``"t1"`` or ``"t2"``.
    thin_tissue
        (X, Y, Z) uint8 tissue classes (:data:`BRAIN_TISSUES`) before blur and noise.
    meta
        JSON-serialisable details: seed, condition, ventricle enlargement, Evans index, pose, noise and
        the noise-free intensity of every tissue.
    """

    thin_image: np.ndarray
    thin_label: np.ndarray
    thick_image: np.ndarray
    thick_label: np.ndarray
    thin_affine: np.ndarray
    thick_affine: np.ndarray
    contrast: str
    thin_tissue: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# thick slices


def thick_from_thin(volume: np.ndarray, factor: int, axis: int = -1, reduce: str = "mean") -> np.ndarray:
    """Combine consecutive slabs of ``factor`` thin slices along ``axis`` into thick slices.

    Parameters
    ----------
    volume
        Array of any dimension; ``volume.shape[axis] // factor`` complete slabs are used and trailing thin
        slices that do not fill a slab are dropped.
    factor
        Thin slices per thick slice (e.g. 5 for 5 mm from 1 mm).
    reduce
        ``"mean"``: partial-volume average (float64 accumulation, returned as float32 for float32 input,
        else float64); ``"majority"``: most frequent value per voxel over the slab, ties broken towards
        the smallest value (for label maps; output keeps the input dtype).

    Returns
    -------
    np.ndarray
        Same shape as ``volume`` except ``shape[axis] // factor`` along ``axis``.
    """
    volume = np.asarray(volume)
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise InputError(f"thick_from_thin factor must be a positive integer, got {factor!r}.")
    if volume.ndim == 0:
        raise InputError("thick_from_thin needs an array with at least one axis, got a scalar.")
    axis = int(axis) % volume.ndim
    n_thick = volume.shape[axis] // factor
    if n_thick < 1:
        raise InputError(
            f"thick_from_thin: axis {axis} has {volume.shape[axis]} slices, fewer than one slab of {factor}."
        )
    moved = np.moveaxis(volume, axis, -1)[..., : n_thick * factor]
    slabs = moved.reshape(moved.shape[:-1] + (n_thick, factor))
    if reduce == "mean":
        out = slabs.mean(axis=-1, dtype=np.float64)
        out = out.astype(np.float32 if volume.dtype == np.float32 else np.float64)
    elif reduce == "majority":
        values, inverse = np.unique(slabs, return_inverse=True)
        if len(values) > 256:
            raise InputError(
                f"thick_from_thin reduce='majority' is for label maps; got {len(values)} distinct values."
            )
        inverse = inverse.reshape(slabs.shape)
        counts = np.stack([(inverse == i).sum(axis=-1) for i in range(len(values))], axis=0)
        out = values[np.argmax(counts, axis=0)].astype(volume.dtype)  # argmax: first (smallest) of ties
    else:
        raise InputError(f"thick_from_thin reduce must be 'mean' or 'majority', got {reduce!r}.")
    return np.moveaxis(out, -1, axis)


def thick_affine_from_thin(affine: np.ndarray, factor: int, axis: int = 2) -> np.ndarray:
    """Affine of the thick volume: voxel size along ``axis`` times ``factor``, centred on each slab."""
    affine = np.asarray(affine, dtype=float)
    out = affine.copy()
    out[:3, axis] = affine[:3, axis] * factor
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * (factor - 1) / 2.0
    return out


# --------------------------------------------------------------------------------------------------
# geometry


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about z (yaw), x (pitch) and y (roll)."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class _Frame:
    """Head-frame coordinates of every voxel and the head-frame -> voxel-index mapping."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    head_to_voxel: np.ndarray  # 4x4
    shape: tuple[int, int, int]

    def box(self, lo: Sequence[float], hi: Sequence[float], margin: int = 1) -> tuple[slice, slice, slice]:
        """Voxel-index slices covering the head-frame box [lo, hi] (all 8 corners mapped)."""
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        idx = (self.head_to_voxel @ corners.T)[:3]
        out = []
        for d in range(3):
            start = int(max(np.floor(idx[d].min()) - margin, 0))
            stop = int(min(np.ceil(idx[d].max()) + margin + 1, self.shape[d]))
            out.append(slice(start, max(start, stop)))
        return tuple(out)  # type: ignore[return-value]


def _make_frame(shape: tuple[int, int, int], affine: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> _Frame:
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    world = [affine[d, 0] * ii + affine[d, 1] * jj + affine[d, 2] * kk + affine[d, 3] - shift[d] for d in range(3)]
    # head = R^T (world - shift)
    head = [sum(rotation[r, d] * world[r] for r in range(3)).astype(np.float32) for d in range(3)]
    head_to_world = np.eye(4)
    head_to_world[:3, :3] = rotation
    head_to_world[:3, 3] = shift
    head_to_voxel = np.linalg.inv(affine) @ head_to_world
    return _Frame(head[0], head[1], head[2], head_to_voxel, shape)


def _ellipsoid(f: _Frame, centre: Sequence[float], axes: Sequence[float], sl: Any = np.s_[:, :, :]) -> np.ndarray:
    """Normalised ellipsoid radius ``sqrt(sum(((p - c) / a)^2))`` on the voxels of ``sl``."""
    dx = (f.x[sl] - centre[0]) / axes[0]
    dy = (f.y[sl] - centre[1]) / axes[1]
    dz = (f.z[sl] - centre[2]) / axes[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lattice_noise(
    rng: np.random.Generator, f: _Frame, mask: np.ndarray, scale_mm: float, step_mm: float = 2.5
) -> np.ndarray:
    """Band-limited unit-variance noise attached to the head frame, sampled at the voxels in ``mask``.

    White noise on a head-frame lattice (``step_mm``) spanning the masked voxels is band-passed by a
    difference of Gaussians with sigma ``scale_mm`` and ``2 * scale_mm`` and interpolated (trilinear) at the
    voxel positions, so the pattern moves with the head when the pose changes.
    """
    pts = np.stack([f.x[mask], f.y[mask], f.z[mask]])
    if pts.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    margin = 4.0 * scale_mm + step_mm
    lo = np.floor((pts.min(axis=1) - margin) / step_mm) * step_mm
    n = np.ceil((pts.max(axis=1) + margin - lo) / step_mm).astype(int) + 1
    white = rng.standard_normal(tuple(n)).astype(np.float32)
    s = scale_mm / step_mm
    band = ndimage.gaussian_filter(white, s) - ndimage.gaussian_filter(white, 2.0 * s)
    band /= max(float(band.std()), 1e-12)
    coords = (pts - lo[:, None]) / step_mm
    return ndimage.map_coordinates(band, coords, order=1, mode="nearest")


# --------------------------------------------------------------------------------------------------
# anatomy


def _lateral_centreline(side: int, enlarge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centreline (n, 3) mm, half-widths (n,) lateral and (n,) vertical of one lateral ventricle.

    ``side`` +1 right (x > 0), -1 left. Key points follow the adult ventricle from the frontal horn tip to
    the occipital horn, with the temporal horn branching at the atrium.
    """
    spread = 1.0 + 0.3 * (enlarge - 1.0)
    # (x, y, z, half-width lateral, half-height)
    main = [
        (9.0, 31.0, 14.0, 2.5, 4.0),
        (10.0, 24.0, 16.0, 5.0, 7.0),
        (10.0, 12.0, 17.0, 5.5, 7.0),
        (11.0, 0.0, 20.0, 5.0, 5.0),
        (14.0, -14.0, 20.0, 5.0, 5.0),
        (20.0, -28.0, 13.0, 7.0, 7.5),
        (18.0, -40.0, 10.0, 4.0, 4.5),
        (14.0, -50.0, 10.0, 1.2, 1.5),
    ]
    temporal = [
        (20.0, -28.0, 13.0, 7.0, 7.5),
        (24.0, -26.0, 2.0, 4.0, 4.0),
        (28.0, -14.0, -10.0, 3.0, 3.0),
        (28.0, 0.0, -17.0, 2.5, 2.5),
        (26.0, 10.0, -20.0, 1.2, 1.2),
    ]
    points, wx, wz = [], [], []
    for key in (main, temporal):
        key_arr = np.asarray(key)
        seg = np.linalg.norm(np.diff(key_arr[:, :3], axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        fine = np.arange(0.0, s[-1] + 1e-6, 1.0)
        interp = np.stack([np.interp(fine, s, key_arr[:, c]) for c in range(5)], axis=1)
        points.append(interp[:, :3])
        wx.append(interp[:, 3])
        wz.append(interp[:, 4])
    pts = np.concatenate(points)
    pts[:, 0] *= side * spread
    return pts, np.concatenate(wx) * enlarge, np.concatenate(wz) * enlarge


def _sweep(f: _Frame, points: np.ndarray, wx: np.ndarray, wz: np.ndarray, tilt: np.ndarray, out: np.ndarray) -> None:
    """Mark voxels inside ellipsoids swept along ``points`` (coronal cross-section tilted by ``tilt`` rad)."""
    for (cx, cy, cz), ax, az, phi in zip(points, wx, wz, tilt):
        reach = max(ax, az) + 1.0
        sl = f.box((cx - reach, cy - reach, cz - reach), (cx + reach, cy + reach, cz + reach))
        dx, dy, dz = f.x[sl] - cx, f.y[sl] - cy, f.z[sl] - cz
        u = dx * np.cos(phi) + dz * np.sin(phi)
        w = -dx * np.sin(phi) + dz * np.cos(phi)
        ay = 0.5 * (ax + az) + 0.5
        out[sl] |= (u / ax) ** 2 + (dy / ay) ** 2 + (w / az) ** 2 <= 1.0


def _sample_subject(rng: np.random.Generator, condition: str | None) -> dict[str, Any]:
    if condition is None:
        condition = BRAIN_CONDITIONS[int(rng.choice(3, p=_CONDITION_PRIOR))]
    elif condition not in BRAIN_CONDITIONS:
        raise InputError(f"brain condition must be one of {BRAIN_CONDITIONS} or None, got {condition!r}.")
    enlarge_range = {"normal": (0.9, 1.15), "atrophy": (1.2, 1.45), "hydrocephalus": (1.65, 2.1)}[condition]
    return {
        "condition": condition,
        "ventricle_enlargement": float(rng.uniform(*enlarge_range)),
        "sulcal_widening": float(rng.uniform(1.6, 2.2) if condition == "atrophy" else 1.0),
        "brain_shrink_mm": float(rng.uniform(2.0, 4.0) if condition == "atrophy" else 0.0),
        "head_scale": float(rng.uniform(0.93, 1.04)),
        "rotation_deg": [float(v) for v in rng.uniform(-4.0, 4.0, size=3)],  # yaw, pitch, roll
        "shift_mm": [float(v) for v in rng.uniform(-3.0, 3.0, size=3)],
    }


def _anatomy(f: _Frame, rng: np.random.Generator, subj: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (:data:`BRAIN_TISSUES`) and ventricle labels on the thin grid (head frame in mm)."""
    k = subj["head_scale"]
    enlarge = subj["ventricle_enlargement"]
    tissue = np.zeros(f.shape, dtype=np.uint8)
    x, y, z = f.x, f.y, f.z

    # Cranial cavity: ellipsoid closed below by the skull base (anterior, middle and posterior fossae).
    centre = (0.0, -6.0 * k, 0.0)
    cavity_axes = np.array([66.0, 84.0, 68.0]) * k
    # Skull base: anterior fossa floor at -26 mm, bowl-shaped middle fossae on each side (down to -42 mm,
    # in front of the petrous ridges), posterior fossa sloping down behind the clivus to the foramen
    # magnum (the cavity ellipsoid closes it at -68 mm).
    xs, ys = np.abs(x) / k, y / k
    middle = np.exp(-(((xs - 40.0) / 16.0) ** 2) - ((ys - 6.0) / 16.0) ** 2)
    floor = k * np.minimum(-26.0 - 16.0 * middle, -26.0 - 44.0 * _smoothstep((6.0 - ys) / 30.0))
    r_cavity = _ellipsoid(f, centre, cavity_axes)
    # Brainstem: a tube down through the posterior fossa and the foramen magnum, pons bulging forward.
    stem_r = k * (11.0 + 3.0 * np.exp(-(((z / k) + 34.0) / 8.0) ** 2))
    stem_d2 = (x / stem_r) ** 2 + ((y - k * (-16.0 + 0.12 * (z / k))) / stem_r) ** 2
    stem_tube = (stem_d2 <= ((stem_r + 2.0) / stem_r) ** 2) & (z <= -4.0 * k) & (r_cavity <= 1.0)
    cavity = (r_cavity <= 1.0) & ((z >= floor) | stem_tube)
    r_skull = _ellipsoid(f, centre, cavity_axes + 7.0)
    r_head = _ellipsoid(f, centre, cavity_axes + 13.0)
    head = r_head <= 1.0
    tissue[head] = BRAIN_TISSUES["scalp"]
    # Vault between the cavity and 7 mm out; skull base: an 8 mm plate under the cavity floor (the face,
    # orbits and sinuses below it are not modelled and stay soft tissue).
    skull = ((r_skull <= 1.0) & (r_cavity > 1.0)) | ((r_skull <= 1.0) & (z < floor) & (z >= floor - 8.0) & ~cavity)
    tissue[skull] = BRAIN_TISSUES["bone"]
    # Diploe: the marrow between 2 mm inner and outer cortical tables.
    diploe = skull & (_ellipsoid(f, centre, cavity_axes + 2.0) > 1.0)
    diploe &= _ellipsoid(f, centre, cavity_axes + 5.0) <= 1.0
    tissue[diploe] = BRAIN_TISSUES["marrow"]
    tissue[cavity] = BRAIN_TISSUES["csf"]

    # Brain: cerebrum, cerebellum and brainstem inside a CSF layer (thicker with atrophy).
    gap = 3.0 + subj["brain_shrink_mm"]
    r_cerebrum = _ellipsoid(f, centre, cavity_axes - gap)
    cerebrum = cavity & (r_cerebrum <= 1.0) & (z >= floor + gap) & ~((y < -20.0 * k) & (z < -22.0 * k))
    cb_centre, cb_axes = (0.0, -50.0 * k, -43.0 * k), np.array([54.0, 33.0, 22.0]) * k - 0.5 * subj["brain_shrink_mm"]
    r_cb = _ellipsoid(f, cb_centre, cb_axes)
    cerebellum = cavity & (r_cb <= 1.0)
    brainstem = cavity & (stem_d2 <= 1.0) & (z <= -4.0 * k)
    brain = cerebrum | cerebellum | brainstem

    # Cortex and sulci: sulcal CSF sheets (zero set of band-limited noise) in the outer 15 mm, lined by
    # grey matter; the cortex is ~3 mm thick.
    depth = (1.0 - r_cerebrum) * float(np.mean(cavity_axes - gap))
    shell = cerebrum & (depth < 18.0)
    n = _lattice_noise(rng, f, shell, 4.0)
    sulcus = np.zeros(f.shape, dtype=bool)
    lined = np.zeros(f.shape, dtype=bool)
    w_sulcus = 0.10 * subj["sulcal_widening"]
    sulcus[shell] = (np.abs(n) < w_sulcus) & (depth[shell] < 15.0)
    lined[shell] = (np.abs(n) < w_sulcus + 0.35) & (depth[shell] < 17.0)
    # Interhemispheric fissure: midline CSF cleft everywhere outside the callosal arch and the deep nuclei.
    callosal = ((y / k + 4.0) / 36.0) ** 2 + ((z / k - 2.0) / 24.0) ** 2 <= 1.0
    midline = np.zeros(f.shape, dtype=np.float32)
    midline[cerebrum] = 1.2 * _lattice_noise(rng, f, cerebrum, 6.0)  # the medial surfaces undulate
    fissure = cerebrum & ~callosal & (np.abs(x - midline) < 1.0 * subj["sulcal_widening"])
    grey = cerebrum & ((depth < 3.0) | lined)
    tissue[brain] = BRAIN_TISSUES["white_matter"]
    tissue[grey] = BRAIN_TISSUES["grey_matter"]
    tissue[(sulcus | fissure) & cerebrum] = BRAIN_TISSUES["csf"]
    # Cerebellar cortex (folia) around the white-matter core, brainstem mostly white matter.
    folia = np.zeros(f.shape, dtype=bool)
    folia[cerebellum] = r_cb[cerebellum] > 0.55
    tissue[cerebellum & folia] = BRAIN_TISSUES["grey_matter"]
    cb_n = _lattice_noise(rng, f, cerebellum, 2.0, step_mm=1.5)
    fold = np.zeros(f.shape, dtype=bool)
    fold[cerebellum] = (np.abs(cb_n) < 0.12) & (r_cb[cerebellum] > 0.75)
    tissue[fold] = BRAIN_TISSUES["csf"]
    tissue[brainstem] = BRAIN_TISSUES["white_matter"]

    # Deep grey matter: caudate heads, thalami, lentiform nuclei (scaled with the head).
    for sx in (-1.0, 1.0):
        for c, a in _DEEP_GREY:
            cc = (sx * c[0] * k * (1.0 + 0.25 * (enlarge - 1.0)), c[1] * k, c[2] * k)
            lo, hi = np.subtract(cc, np.multiply(a, k) + 2), np.add(cc, np.multiply(a, k) + 2)
            sl = f.box(lo, hi)
            tissue[sl][_ellipsoid(f, cc, np.multiply(a, k), sl) <= 1.0] = BRAIN_TISSUES["grey_matter"]

    # Ventricles.
    labels = np.zeros(f.shape, dtype=np.uint8)
    lateral = np.zeros(f.shape, dtype=bool)
    for side in (1, -1):
        pts, wx, wz = _lateral_centreline(side, enlarge)
        # Butterfly coronal section: the wings slope down laterally in the frontal horn and body.
        tilt = np.where(pts[:, 1] > -20.0, -side * np.deg2rad(25.0), 0.0)
        _sweep(f, pts * k, wx * k, wz * k, tilt, lateral)
    lateral &= np.abs(x) > 1.2  # septum pellucidum
    labels[lateral] = BRAIN_LABELS["lateral"]

    w3 = min(1.6 * enlarge**2, 5.0) * k  # half-width of the third ventricle
    c3, a3 = (0.0, 2.0 * k, 2.0 * k), (w3, 13.0 * k * np.sqrt(enlarge), 8.5 * k * np.sqrt(enlarge))
    sl = f.box(np.subtract(c3, a3) - 2, np.add(c3, a3) + 2)
    third = np.zeros(f.shape, dtype=bool)
    third[sl] = (
        (np.abs(f.x[sl]) <= w3)
        & (((f.y[sl] - c3[1]) / a3[1]) ** 2 + ((f.z[sl] - c3[2]) / a3[2]) ** 2 <= 1.0)
        & (f.z[sl] <= c3[2] + 0.6 * a3[2])  # flat roof under the fornix / tela choroidea
    )
    labels[third & ~lateral] = BRAIN_LABELS["third"]

    # Aqueduct (CSF, unlabelled) from the back of the third ventricle to the top of the fourth.
    aq = np.zeros(f.shape, dtype=bool)
    a0, a1 = np.array([0.0, -9.0, -4.0]) * k, np.array([0.0, -24.0, -24.0]) * k
    for t in np.linspace(0.0, 1.0, 25):
        c = a0 + t * (a1 - a0)
        sl = f.box(c - 2.5, c + 2.5)
        aq[sl] |= _ellipsoid(f, c, (1.1 * k, 1.1 * k, 1.1 * k), sl) <= 1.0

    # Fourth ventricle: tent with its floor on the brainstem and its apex (fastigium) pointing back.
    sq = np.sqrt(enlarge)
    c4 = np.array([0.0, -22.0, -36.0]) * k
    h4, l4, w4 = 10.0 * k * sq, 9.0 * k * sq, 8.0 * k * sq
    sl = f.box(c4 - np.array([w4, l4 + 2, h4]) - 2, c4 + np.array([w4, 2.0, h4]) + 2)
    v = np.abs(f.z[sl] - c4[2]) / h4
    u = c4[1] - f.y[sl]
    taper = np.clip(1.0 - v, 0.0, None)
    fourth = np.zeros(f.shape, dtype=bool)
    fourth[sl] = (v <= 1.0) & (u >= -1.0) & (u <= l4 * taper) & (np.abs(f.x[sl]) <= w4 * taper**0.6)
    labels[fourth & ~lateral & ~third] = BRAIN_LABELS["fourth"]

    inside = cavity
    labels[~inside] = 0
    tissue[labels > 0] = BRAIN_TISSUES["ventricle"]
    tissue[aq & inside & (labels == 0)] = BRAIN_TISSUES["csf"]
    return tissue, labels


def _evans_index(labels: np.ndarray, tissue: np.ndarray, spacing: Sequence[float], frame: _Frame) -> float:
    """Evans index: maximal frontal-horn width over the inner skull width on the same axial slice.

    Widths are measured along the voxel x axis; frontal horns are the lateral-ventricle voxels anterior
    to the foramen of Monro and above the temporal horns (head frame y > 8 mm, z > 5 mm). Evans (1942);
    an index above 0.3 indicates ventricular enlargement (Relkin et al. 2005).
    """
    inner = np.isin(tissue, [BRAIN_TISSUES[t] for t in ("csf", "grey_matter", "white_matter", "ventricle")])
    frontal = (labels == BRAIN_LABELS["lateral"]) & (frame.y > 8.0) & (frame.z > 5.0)
    best_horn, best_ratio = 0.0, 0.0
    for kz in range(labels.shape[2]):
        cols = np.nonzero(frontal[:, :, kz].any(axis=1))[0]
        if not cols.size:
            continue
        horn = (cols.max() - cols.min() + 1) * spacing[0]
        skull_cols = np.nonzero(inner[:, :, kz].any(axis=1))[0]
        if horn > best_horn and skull_cols.size:
            best_horn = horn
            best_ratio = horn / ((skull_cols.max() - skull_cols.min() + 1) * spacing[0])
    return float(best_ratio)


# --------------------------------------------------------------------------------------------------
# contrast


def tissue_intensities(contrast: str) -> dict[str, float]:
    """Noise-free intensity of every tissue for ``contrast``.

    CT: Hounsfield units from :data:`CT_HU`. MR: spin-echo signal ``1000 * PD * (1 - exp(-TR / T1)) *
    exp(-TE / T2)`` with :data:`MR_RELAXATION` and the sequence's TR / TE from :data:`MR_SEQUENCES`.
    """
    if contrast == "ct":
        return dict(CT_HU)
    if contrast not in MR_SEQUENCES:
        raise InputError(f"brain contrast must be one of {BRAIN_CONTRASTS}, got {contrast!r}.")
    tr, te = MR_SEQUENCES[contrast]["tr_ms"], MR_SEQUENCES[contrast]["te_ms"]
    return {
        name: float(1000.0 * pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2))
        for name, (pd, t1, t2) in MR_RELAXATION.items()
    }


def _render(
    tissue: np.ndarray, contrast: str, spacing: Sequence[float], frame: _Frame, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue map -> image: intensities, point-spread blur, bias (MR) or cupping (CT), noise."""
    values = tissue_intensities(contrast)
    lut = np.zeros(len(BRAIN_TISSUES), dtype=np.float32)
    for name, index in BRAIN_TISSUES.items():
        lut[index] = values[name]
    image = lut[tissue]
    # Scanner point-spread function (sigma ~0.5 mm in-plane, 0.4 mm through-plane).
    image = ndimage.gaussian_filter(image, sigma=[0.5 / spacing[0], 0.5 / spacing[1], 0.4 / spacing[2]])
    r2 = (frame.x / 70.0) ** 2 + (frame.y / 90.0) ** 2 + (frame.z / 70.0) ** 2
    info: dict[str, Any] = {"noise_sigma": _NOISE[contrast]}
    if contrast == "ct":
        # Beam hardening cupping: the centre of the skull reads a few HU low relative to the periphery.
        cupping = float(rng.uniform(2.0, 5.0))
        inside = tissue >= BRAIN_TISSUES["csf"]
        image = image + np.where(inside, cupping * (np.clip(r2, 0, 1) - 0.5), 0.0).astype(np.float32)
        image = image + rng.normal(0.0, _NOISE["ct"], size=image.shape).astype(np.float32)
        info["cupping_hu"] = cupping
    else:
        # Smooth multiplicative receive-coil / B1 bias field (low-order polynomial in the head frame),
        # then Rician magnitude noise.
        coeffs = rng.uniform(-0.12, 0.12, size=6)
        xn, yn, zn = frame.x / 90.0, frame.y / 90.0, frame.z / 90.0
        basis = (xn, yn, zn, xn * yn, zn**2 - 0.3, xn**2 - 0.3)
        log_bias = sum(c * b for c, b in zip(coeffs, basis))
        image = image * np.exp(log_bias).astype(np.float32)
        sigma = _NOISE[contrast]
        real = image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
        imag = rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
        image = np.sqrt(real * real + imag * imag)
        info["bias_log_coefficients"] = [round(float(c), 4) for c in coeffs]
    info["tissue_values"] = {name: round(v, 3) for name, v in values.items()}
    return image.astype(np.float32), info


# --------------------------------------------------------------------------------------------------
# public API


def generate_brain_case(
    seed: int,
    contrast: str = "ct",
    shape: tuple[int, int, int] = (128, 128, 120),
    thick_factor: int = 5,
    spacing_mm: tuple[float, float, float] = (1.6, 1.6, 1.0),
    condition: str | None = None,
) -> BrainCase:
    """Render one subject on the thin grid and derive its thick-slice volume.

    Parameters
    ----------
    seed
        Seeds anatomy (condition, size, pose, sulcal pattern) and noise through separate streams: the same
        seed gives the same head in every contrast.
    contrast
        ``"ct"``, ``"t1"`` or ``"t2"``.
    shape
        Thin grid (X, Y, Z); Z should be a multiple of ``thick_factor`` (trailing slices are dropped from
        the thick volume otherwise). The field of view is ``shape * spacing_mm`` centred on the ventricles.
    thick_factor
        Thin slices averaged per thick slice (5 for 5 mm from 1 mm).
    spacing_mm
        Thin voxel size (mm); the default fits an adult head (~160 x 195 mm) in 128 x 128 and covers the
        posterior fossa to the high convexity with 120 slices of 1 mm.
    condition
        ``"normal"``, ``"atrophy"``, ``"hydrocephalus"`` or None to draw it from seed 003's cohort mix.
    """
    if contrast not in BRAIN_CONTRASTS:
        raise InputError(f"brain contrast must be one of {BRAIN_CONTRASTS}, got {contrast!r}.")
    if len(shape) != 3 or min(int(s) for s in shape) < 16:
        raise InputError(f"brain shape must be three sizes of at least 16 voxels, got {tuple(shape)}.")
    if len(spacing_mm) != 3 or min(float(s) for s in spacing_mm) <= 0:
        raise InputError(f"brain spacing_mm must be three positive sizes (mm), got {tuple(spacing_mm)}.")
    if not isinstance(thick_factor, (int, np.integer)) or thick_factor < 1 or thick_factor > shape[2]:
        raise InputError(f"thick_factor must be an integer in [1, Z={shape[2]}], got {thick_factor!r}.")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing = tuple(float(s) for s in spacing_mm)
    anatomy_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    subj = _sample_subject(anatomy_rng, condition)

    field_centre = np.array([0.0, -6.0, -5.0])  # head frame: between the fourth and the lateral ventricles
    origin = field_centre - (np.array(shape) - 1) / 2.0 * np.array(spacing)
    thin_affine = spacing_affine(spacing, origin)
    rotation = _rotation(*subj["rotation_deg"])
    frame = _make_frame(shape, thin_affine, rotation, np.array(subj["shift_mm"]))
    tissue, labels = _anatomy(frame, anatomy_rng, subj)
    image, render_info = _render(tissue, contrast, spacing, frame, noise_rng)

    thick_image = thick_from_thin(image, thick_factor, axis=2, reduce="mean")
    thick_label = thick_from_thin(labels, thick_factor, axis=2, reduce="majority")
    thick_affine = thick_affine_from_thin(thin_affine, thick_factor, axis=2)
    volumes_ml = {
        name: float((labels == value).sum() * np.prod(spacing) / 1000.0)
        for name, value in BRAIN_LABELS.items()
        if value
    }
    meta = {
        "seed": int(seed),
        "generator": "medxai.data.synthetic.brain",
        "contrast": contrast,
        "thin_spacing_mm": list(spacing),
        "thick_spacing_mm": [spacing[0], spacing[1], spacing[2] * thick_factor],
        "thick_factor": int(thick_factor),
        "thick_reduction": "image: slab mean; label: slab majority, ties to the smallest label",
        **subj,
        "evans_index": round(_evans_index(labels, tissue, spacing, frame), 4),
        "ventricle_volume_ml": {k: round(v, 3) for k, v in volumes_ml.items()},
        **render_info,
    }
    return BrainCase(
        thin_image=image,
        thin_label=labels,
        thick_image=thick_image,
        thick_label=thick_label,
        thin_affine=thin_affine,
        thick_affine=thick_affine,
        contrast=contrast,
        thin_tissue=tissue,
        meta=meta,
    )


def generate_brain_dataset(
    output_dir: str | Path,
    num_subjects: int = 12,
    seed: int = 0,
    contrasts: Sequence[str] = ("ct", "t1"),
    shape: tuple[int, int, int] = (128, 128, 120),
    thick_factor: int = 5,
    spacing_mm: tuple[float, float, float] = (1.6, 1.6, 1.0),
    fractions: dict[str, float] | None = None,
) -> Path:
    """Write thin and thick volumes of synthetic subjects and a MONAI datalist; returns its path.

    Subject ``i`` is imaged in ``contrasts[i % len(contrasts)]``. Files: ``images/brain_XXXX_thin.nii.gz``,
    ``images/brain_XXXX_thick.nii.gz`` (float32) and ``labels/brain_XXXX_thin.nii.gz``,
    ``labels/brain_XXXX_thick.nii.gz`` (uint8). Entries: ``image``, ``label``, ``thickness`` (``"thin"`` or
    ``"thick"``), ``contrast``, ``patient_id`` (``synthetic-brain-XXXX``), ``slice_thickness_mm``,
    ``condition``. Splits are patient-disjoint and stratified by contrast, so the thin and the thick
    volume of a subject always share a split.
    """
    if num_subjects < 1:
        raise InputError(f"num_subjects must be at least 1, got {num_subjects}.")
    bad = [c for c in contrasts if c not in BRAIN_CONTRASTS]
    if not contrasts or bad:
        raise InputError(f"brain contrasts must be a non-empty subset of {BRAIN_CONTRASTS}, got {list(contrasts)}.")
    output_dir = Path(output_dir)
    case_seeds = np.random.SeedSequence(int(seed)).generate_state(num_subjects)
    records = []
    for i in range(num_subjects):
        contrast = contrasts[i % len(contrasts)]
        case = generate_brain_case(int(case_seeds[i]), contrast, shape, thick_factor, spacing_mm)
        stem = f"brain_{i:04d}"
        for thickness, image, label, affine in (
            ("thin", case.thin_image, case.thin_label, case.thin_affine),
            ("thick", case.thick_image, case.thick_label, case.thick_affine),
        ):
            save_nifti(image, affine, output_dir / "images" / f"{stem}_{thickness}.nii.gz", dtype=np.float32)
            save_nifti(label, affine, output_dir / "labels" / f"{stem}_{thickness}.nii.gz", dtype=np.uint8)
            records.append(
                {
                    "image": f"images/{stem}_{thickness}.nii.gz",
                    "label": f"labels/{stem}_{thickness}.nii.gz",
                    "thickness": thickness,
                    "contrast": contrast,
                    "patient_id": f"synthetic-brain-{i:04d}",
                    "slice_thickness_mm": float(abs(affine[2, 2])),
                    "condition": case.meta["condition"],
                }
            )
    splits = patient_split(records, fractions, label_key="contrast", patient_key="patient_id", seed=int(seed))
    metadata = {
        "name": "medxai synthetic brain ventricles, thin and thick slices",
        "generator": "medxai.data.synthetic.brain.generate_brain_dataset",
        "seed": int(seed),
        "num_subjects": int(num_subjects),
        "labels": dict(BRAIN_LABELS),
        "contrasts": list(contrasts),
        "thin_shape": [int(s) for s in shape],
        "thin_spacing_mm": [float(s) for s in spacing_mm],
        "thick_factor": int(thick_factor),
        "thick_reduction": "image: slab mean; label: slab majority, ties to the smallest label",
    }
    return write_datalist(splits, output_dir / "datalist.json", metadata)
