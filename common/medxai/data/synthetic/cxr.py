"""Synthetic frontal (PA) chest radiographs with lung and lesion masks.

A case is rendered the way a radiograph is formed: the line integral ``p(x, y) = integral mu dz`` of the
linear attenuation coefficient along the postero-anterior beam is built from analytic models of the body,
lungs, heart and mediastinum, diaphragm domes, spine, ribs, clavicles, trachea, gastric air bubble and
pulmonary vessels; disease replaces aerated lung by denser material over part of the lung depth. The
detector counts ``N = N0 * exp(-p)`` get quantum noise and detector blur, and the processed display image
is ``255 * clip((p_hat - lo) / (hi - lo), 0, 1) ** gamma`` with ``p_hat = -ln(N / N0)``, so bone and dense
tissue are bright and aerated lung dark, as on a real radiograph.

Attenuation is taken at an effective energy of 60 keV (typical of a 110-125 kVp chest beam); soft
materials are described by their CT number, ``mu = mu_water * (1 + HU / 1000)``, with the same HU values as
the CT phantom (lung -850 HU, ground-glass -500 HU, consolidation +30 HU). ``docs/data.md``
lists every parameter with its source and what is not modelled.

Coordinates: images are (rows, columns) = (H, W); the patient's right is on the image left (PA view).
Lung mask: 0 background, 1 right lung, 2 left lung. Lesion mask: 0 none, 1 ground-glass / interstitial,
2 consolidation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medxai.data.splits import patient_split
from medxai.data.synthetic.io import save_png, write_datalist
from medxai.errors import InputError

__all__ = [
    "CXR_CLASS_NAMES",
    "CXR_CLASS3_NAMES",
    "CXR_SEVERITIES",
    "CXR_LUNG_LABELS",
    "CXR_LESION_LABELS",
    "CXR_MATERIALS_HU",
    "MU_WATER_PER_MM",
    "CXRCentre",
    "CXR_CENTRES",
    "CXRCase",
    "mu_from_hu",
    "decode_line_integral",
    "generate_cxr_case",
    "generate_cxr_dataset",
]

CXR_CLASS_NAMES: tuple[str, ...] = ("normal", "bacterial", "viral", "covid19")
"""Four classes of CXRNet (seed 001); index = label."""

CXR_CLASS3_NAMES: tuple[str, ...] = ("normal", "pneumonia", "covid19")
"""Three classes of DeepCOVIDExplainer (seed 002): bacterial and viral merge into ``pneumonia``."""

_LABEL3 = (0, 1, 1, 2)

CXR_SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")
CXR_LUNG_LABELS: dict[str, int] = {"background": 0, "right": 1, "left": 2}
CXR_LESION_LABELS: dict[str, int] = {"background": 0, "ground_glass": 1, "consolidation": 2}

MU_WATER_PER_MM = 0.02059
"""Linear attenuation coefficient of water at 60 keV, 1/mm (NIST XCOM: mu/rho = 0.2059 cm^2/g)."""

MU_CORTICAL_BONE_PER_MM = 0.0604
"""Cortical bone (ICRU-44, 1.92 g/cm^3) at 60 keV, 1/mm (NIST XCOM: mu/rho = 0.3148 cm^2/g)."""

CXR_MATERIALS_HU: dict[str, float] = {
    "air": -1000.0,
    "body": 0.0,  # water-equivalent mean of muscle (+40 HU) and fat (-100 HU)
    "lung": -850.0,  # aerated parenchyma
    "blood": 40.0,  # pulmonary vessels
    "trabecular_bone": 300.0,  # vertebral bodies, rib marrow
    "ground_glass": -500.0,  # CT ground-glass: -700 to -300 HU
    "interstitial": -300.0,  # thickened interstitium / peribronchial cuffing (viral)
    "consolidation": 30.0,  # airless lung, near soft tissue
}
"""CT numbers of the materials (HU); converted to attenuation with :func:`mu_from_hu`."""

# Lesion extent as a fraction of the total lung area, per severity (RALE-style extent scoring:
# Warren et al., Thorax 2018); bacterial consolidation uses the fraction of its lobe instead.
_AREA_FRACTION = {"mild": 0.08, "moderate": 0.2, "severe": 0.38}
_LOBE_FRACTION = {"mild": 0.35, "moderate": 0.65, "severe": 1.0}
_VIRAL_EXTENT_MM = {"mild": 28.0, "moderate": 40.0, "severe": 56.0}

# Lobes as seen in projection (normalised lung height u: 0 apex, 1 costophrenic angle) and their
# prior probability for lobar pneumonia (lower lobes favoured).
_LOBES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")
_LOBE_PRIOR = (0.15, 0.15, 0.33, 0.12, 0.25)


def mu_from_hu(hu: float | np.ndarray) -> float | np.ndarray:
    """Linear attenuation (1/mm) at 60 keV of a material with CT number ``hu``.

    Inverts the Hounsfield definition ``HU = 1000 * (mu - mu_water) / mu_water`` (air ~ 0).
    """
    return MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=float) / 1000.0)


def _delta_mu(material: str, base: str) -> float:
    """Attenuation excess (1/mm) of ``material`` over ``base``."""
    return float(mu_from_hu(CXR_MATERIALS_HU[material]) - mu_from_hu(CXR_MATERIALS_HU[base]))


@dataclass(frozen=True)
class CXRCentre:
    """Acquisition and processing settings of one imaging centre.

    Attributes
    ----------
    name, description
        Short key and a sentence.
    quanta_per_mm2
        Detected x-ray quanta per mm^2 behind an unattenuated path (fluence times detector efficiency);
        sets the quantum noise, relative sigma ``1 / sqrt(N)`` per pixel.
    exposure_factor
        Delivered over nominal exposure; the displayed line integral shifts by ``-ln(exposure_factor)``
        (over-exposure darkens the image).
    window
        Line-integral range ``(lo, hi)`` mapped to grey levels 0 and 255.
    gamma
        Exponent of the tone curve: ``(p - lo) / (hi - lo)`` raised to ``gamma`` (> 1 darker mid-tones).
    detector_blur_mm
        Gaussian sigma (mm) of the detector point-spread function (scintillator light spread).
    field_of_view_mm
        Width covered by the image; pixel spacing is ``field_of_view_mm / max(H, W)``.
    """

    name: str
    description: str
    quanta_per_mm2: float
    exposure_factor: float
    window: tuple[float, float]
    gamma: float
    detector_blur_mm: float
    field_of_view_mm: float


CXR_CENTRES: dict[str, CXRCentre] = {
    "A": CXRCentre(
        "A", "fixed digital radiography room, grid, sharp detector", 2.0e5, 1.0, (0.5, 5.4), 0.85, 0.5, 400.0
    ),
    "B": CXRCentre(
        "B", "low-dose computed radiography, soft plate, flat tone curve", 6.0e3, 1.25, (0.3, 5.8), 0.75, 1.3, 430.0
    ),
    "C": CXRCentre(
        "C", "other vendor, high-contrast processing, tighter collimation", 4.0e4, 0.85, (0.6, 5.2), 1.0, 0.8, 380.0
    ),
}
"""Named centres; the shift between them is the domain shift the bundles are evaluated against."""


@dataclass
class CXRCase:
    """One synthetic radiograph.

    Attributes
    ----------
    image
        (H, W) uint8 display image.
    lung_mask
        (H, W) uint8: 0 background, 1 right lung (image left), 2 left lung.
    lesion_mask
        (H, W) uint8: 0 none, 1 ground-glass / interstitial, 2 consolidation; inside the lungs.
    label, class_name
        Index into :data:`CXR_CLASS_NAMES` and its name.
    severity
        ``"mild"``, ``"moderate"``, ``"severe"``, or ``"none"`` for normal cases.
    centre
        Key of :data:`CXR_CENTRES`.
    pixel_spacing_mm
        (row, column) spacing in mm.
    meta
        JSON-serialisable details: seed, anatomy, lesion claims (mean line-integral increase per lesion
        label), display mapping, centre settings.
    """

    image: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    label: int
    class_name: str
    severity: str
    centre: str
    pixel_spacing_mm: tuple[float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label3(self) -> int:
        """DeepCOVIDExplainer label: 0 normal, 1 pneumonia (bacterial or viral), 2 covid19."""
        return _LABEL3[self.label]


# --------------------------------------------------------------------------------------------------
# geometry helpers


@dataclass(frozen=True)
class _Grid:
    """Patient coordinates (mm) of every pixel centre and the pixel <-> patient mapping."""

    x: np.ndarray  # (H, W) mm, + towards the image right (patient's left)
    y: np.ndarray  # (H, W) mm, + caudal, 0 at the lung apices
    spacing: float
    shape: tuple[int, int]
    centre_mm: tuple[float, float]  # patient coordinates of the image centre
    angle: float  # in-plane patient rotation, radians

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of patient points."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = np.asarray(x) - self.centre_mm[0], np.asarray(y) - self.centre_mm[1]
        u, v = c * dx - s * dy, s * dx + c * dy
        h, w = self.shape
        return v / self.spacing + (h - 1) / 2.0, u / self.spacing + (w - 1) / 2.0


def _make_grid(shape: tuple[int, int], spacing: float, centre_mm: tuple[float, float], angle: float) -> _Grid:
    h, w = shape
    v = (np.arange(h) - (h - 1) / 2.0) * spacing
    u = (np.arange(w) - (w - 1) / 2.0) * spacing
    vv, uu = np.meshgrid(v, u, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    x = c * uu + s * vv + centre_mm[0]
    y = -s * uu + c * vv + centre_mm[1]
    return _Grid(x, y, spacing, (h, w), centre_mm, angle)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_chord(d_across: np.ndarray, half_height: float, half_depth: float) -> np.ndarray:
    """Beam path length (mm) through an elliptic cross-section at distance ``d_across`` from its axis."""
    return 2.0 * half_depth * np.sqrt(np.clip(1.0 - (d_across / half_height) ** 2, 0.0, None))


def _bone_band(d_across: np.ndarray, half_height: float, half_depth: float, cortex_mm: float) -> np.ndarray:
    """Line-integral excess over soft tissue of a bone with a cortical shell and trabecular core."""
    d_cort = MU_CORTICAL_BONE_PER_MM - mu_from_hu(CXR_MATERIALS_HU["body"])
    d_trab = _delta_mu("trabecular_bone", "body")
    outer = _ellipse_chord(d_across, half_height, half_depth)
    inner = _ellipse_chord(d_across, half_height - cortex_mm, half_depth - cortex_mm)
    return d_cort * outer + (d_trab - d_cort) * inner


def _tube_map(
    grid: _Grid,
    segments: Sequence[tuple[float, float, float, float, float, float]],
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Projected path length (mm) through cylinders given as (x0, y0, x1, y1, r0, r1) in patient mm.

    Each segment is sampled every half pixel; a sample carries its volume ``pi r^2 ds`` (mm^3), deposited
    bilinearly per pixel area, and the deposit is blurred with the cross-section's projected profile (a
    Gaussian with the disc chord's variance ``r^2 / 4``, grouped in a few radius bins). The result is a
    path-length map (mm) that conserves each tube's volume, so vessels thinner than a pixel keep their
    integrated attenuation instead of aliasing away.
    """
    out = np.zeros(grid.shape, dtype=np.float64)
    if len(segments) == 0:
        return out
    x0, y0, x1, y1, r0, r1 = np.asarray(segments, dtype=float).T
    length = np.hypot(x1 - x0, y1 - y0)
    steps = np.maximum(1, np.ceil(length / (0.5 * grid.spacing))).astype(int)
    seg = np.repeat(np.arange(len(steps)), steps)
    k = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    t = (k + 0.5) / steps[seg]
    px = x0[seg] + t * (x1 - x0)[seg]
    py = y0[seg] + t * (y1 - y0)[seg]
    radius = r0[seg] + t * (r1 - r0)[seg]
    volume = np.pi * radius**2 * (length / steps)[seg] / grid.spacing**2
    rows, cols = grid.to_pixel(px, py)
    sigma_px = radius / 2.0 / grid.spacing
    h, w = grid.shape
    edges = (0.0, 0.5, 1.0, 2.0, 4.0, np.inf)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (sigma_px >= lo) & (sigma_px < hi)
        if not sel.any():
            continue
        deposit = _bilinear_deposit(rows[sel], cols[sel], volume[sel], (h, w))
        sigma = float(np.average(sigma_px[sel], weights=volume[sel]))
        out += ndimage.gaussian_filter(deposit, sigma) if sigma > 0.25 else deposit
    if valid is not None:
        out *= valid
    return out


def _bilinear_deposit(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scatter ``weights`` at fractional (row, col) positions onto a grid with bilinear weights."""
    h, w = shape
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    flat = np.zeros(h * w)
    for dr, dc, wt in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        flat += np.bincount(rr[ok] * w + cc[ok], weights=(weights * wt)[ok], minlength=h * w)
    return flat.reshape(h, w)


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance band-limited noise (difference of Gaussians)."""
    white = rng.standard_normal(shape)
    band = ndimage.gaussian_filter(white, sigma_px) - ndimage.gaussian_filter(white, 2.0 * sigma_px)
    return band / max(float(band.std()), 1e-12)


# --------------------------------------------------------------------------------------------------
# anatomy


@dataclass
class _Anatomy:
    grid: _Grid
    p_base: np.ndarray  # line integral of the lesion-free chest
    lung_mask: np.ndarray  # uint8 0/1/2
    lung_depth: np.ndarray  # mm of aerated lung along the beam
    vessel_bronchus: np.ndarray  # mm of vessels + bronchi inside the lung along the beam
    lung_u: np.ndarray  # normalised height in the lung, 0 apex .. 1 costophrenic angle
    lung_v: np.ndarray  # normalised lateral position in the lung, 0 medial .. 1 lateral
    edge_dist: np.ndarray  # mm to the lung boundary (inside the lungs)
    hila: dict[str, tuple[float, float]]  # patient mm
    params: dict[str, float]


def _sample_params(rng: np.random.Generator) -> dict[str, float]:
    """Subject-level anatomy (mm) around an adult reference; per-seed variation in size and posture."""
    lung_height = rng.uniform(220.0, 255.0)
    return {
        "lung_height": lung_height,  # apex to right costophrenic angle
        "thorax_half_width": rng.uniform(128.0, 150.0),  # inner rib cage at the bases
        "body_half_depth": rng.uniform(95.0, 118.0),  # AP half thickness
        "mediastinum_half_width": rng.uniform(30.0, 36.0),
        "ctr": rng.uniform(0.38, 0.48),  # cardiothoracic ratio (normal < 0.5)
        "heart_tilt_deg": rng.uniform(30.0, 45.0),
        "dome_drop": rng.uniform(28.0, 40.0),  # dome peak above the costophrenic sulcus
        "left_dome_lower": rng.uniform(10.0, 25.0),  # right hemidiaphragm higher (liver)
        "rib_pitch": lung_height / rng.uniform(9.0, 10.0),
        "rotation_deg": rng.uniform(-3.0, 3.0),
        "shift_x": rng.uniform(-10.0, 10.0),
        "shift_y": rng.uniform(-10.0, 10.0),
        "gastric_bubble": float(rng.uniform() < 0.8),
    }


def _lung_masks(
    g: _Grid, q: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Right/left lung masks, normalised coordinates (u, v), and the mediastinal silhouette."""
    x, y = g.x, g.y
    ax = np.abs(x)
    height = q["lung_height"]
    width = q["thorax_half_width"]
    m_up = q["mediastinum_half_width"]
    dome_r = height - q["dome_drop"]  # right dome peak (y)
    dome_l = dome_r + q["left_dome_lower"]

    # Heart: tilted ellipse sitting on the diaphragm, sized by the cardiothoracic ratio.
    tilt = np.deg2rad(q["heart_tilt_deg"])
    heart_half_extent = q["ctr"] * width  # half of the transverse cardiac diameter
    a_h, b_h = 1.25 * heart_half_extent, 0.85 * heart_half_extent
    scale = heart_half_extent / np.sqrt((a_h * np.cos(tilt)) ** 2 + (b_h * np.sin(tilt)) ** 2)
    a_h, b_h = a_h * scale, b_h * scale
    hx = 0.35 * heart_half_extent  # centred left of the midline: ~2/3 of the heart on the left
    hy = dome_r + 8.0 - b_h * 0.8
    cx, cy = x - hx, y - hy
    along = cx * np.cos(tilt) + cy * np.sin(tilt)  # long axis: upper right to the apex, lower left
    across = -cx * np.sin(tilt) + cy * np.cos(tilt)
    heart = (along / a_h) ** 2 + (across / b_h) ** 2 <= 1.0
    # Aortic knob on the left, above the heart.
    knob = ((x - (m_up + 2.0)) / 14.0) ** 2 + ((y - 0.25 * height) / 24.0) ** 2 <= 1.0
    mediastinum = (ax <= m_up) | heart | knob

    apex_y = 0.0
    u = np.clip((y - apex_y) / height, 0.0, 1.5)
    lateral = m_up + (width - m_up) * np.sqrt(np.clip(1.0 - (1.0 - np.clip(u * 1.15, 0, 1)) ** 2, 0.0, 1.0))
    peak = 0.45 * width
    dome = np.where(ax >= peak, q["dome_drop"] * ((ax - peak) / (width - peak)) ** 2, 14.0 * ((peak - ax) / peak) ** 2)
    below_dome_r = y <= dome_r + dome
    below_dome_l = y <= dome_l + dome
    envelope = (y >= apex_y) & (ax < lateral) & ~mediastinum
    # Keep one connected field per lung (drops specks pinched off between heart, knob and diaphragm).
    right = _largest_component(envelope & (x < 0) & below_dome_r)
    left = _largest_component(envelope & (x > 0) & below_dome_l)
    v = np.clip((ax - m_up) / np.maximum(lateral - m_up, 1.0), 0.0, 1.0)
    geometry = {"dome_right": dome_r, "dome_left": dome_l, "heart_centre": (hx, hy)}
    return right, left, u, v, mediastinum, geometry


def _body_half_axes(y: np.ndarray, q: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Half width and half depth (mm) of the body's elliptic cross-section at height ``y``: neck,
    shoulders, chest, and a slightly narrower abdomen below the costophrenic angles."""
    chest_half_width = q["thorax_half_width"] + 22.0
    neck, shoulder = 55.0, chest_half_width + 25.0
    to_shoulder = _smoothstep((y + 45.0) / 35.0)
    to_chest = _smoothstep((y - 10.0) / 60.0)
    half_width = neck + (shoulder - neck) * to_shoulder + (chest_half_width - shoulder) * to_chest
    half_width = half_width * (1.0 - 0.06 * _smoothstep((y - q["lung_height"]) / 80.0))
    half_depth = 50.0 + (q["body_half_depth"] - 50.0) * _smoothstep((y + 45.0) / 60.0)
    return half_width, half_depth


def _body_chord(g: _Grid, q: dict[str, float]) -> np.ndarray:
    """Path length (mm) through the soft-tissue body."""
    half_width, half_depth = _body_half_axes(g.y, q)
    return _ellipse_chord(g.x, half_width, half_depth)


def _skeleton(g: _Grid, q: dict[str, float], body_half_width: np.ndarray) -> np.ndarray:
    """Line-integral excess of spine, posterior and anterior ribs and clavicles over soft tissue."""
    x, y = g.x, g.y
    ax = np.abs(x)
    p = np.zeros(g.shape)
    # Spine: vertebral bodies (trabecular cylinders with a cortical rim) separated by discs, pedicles.
    pitch_v = 26.0
    phase = np.mod(y + 13.0, pitch_v)
    in_body = (phase > 2.5) & (phase < pitch_v - 2.5)
    p += np.where(in_body, _bone_band(x, 21.0, 16.0, 1.0), 0.0)
    ped_y = np.mod(y + 13.0 - 7.0, pitch_v) - pitch_v / 2.0
    ped_d = np.sqrt(((ax - 15.0) / 4.5) ** 2 + (ped_y / 6.5) ** 2)
    p += np.where(ped_d < 1.0, _bone_band(ped_d * 4.5, 4.5, 3.5, 1.0), 0.0)
    # Ribs: posterior arcs rise slightly from the spine, then curve down to the lateral chest wall;
    # anterior arcs run from the lateral wall obliquely down towards the sternum.
    width = q["thorax_half_width"] + 12.0
    qn = (ax - 12.0) / (width - 12.0)
    inside_wall = ax <= body_half_width - 4.0
    for k in range(11):
        y0 = -14.0 + k * q["rib_pitch"]
        y_post = y0 - 18.0 * qn + 58.0 * qn**2
        slope = (-18.0 + 116.0 * qn) / (width - 12.0)
        d = (y - y_post) / np.sqrt(1.0 + slope**2)
        fade = _smoothstep(qn / 0.05) * _smoothstep((1.08 - qn) / 0.08)
        # The beam runs along the rib where it turns round the lateral chest wall: longer path there.
        half_depth = 7.0 + 18.0 * np.clip(qn, 0.0, 1.0) ** 4
        p += np.where(inside_wall & (np.abs(d) < 6.0), _bone_band(d, 6.0, half_depth, 1.5) * fade, 0.0)
        y_ant = y0 + 40.0 + 55.0 * (1.0 - np.clip(qn, 0.0, 1.0)) ** 1.2
        slope_a = 55.0 * 1.2 * (1.0 - np.clip(qn, 0.0, 1.0)) ** 0.2 / (width - 12.0)
        d_a = (y - y_ant) / np.sqrt(1.0 + slope_a**2)
        fade_a = _smoothstep((qn - 0.3) / 0.15) * _smoothstep((1.02 - qn) / 0.05)
        p += np.where(inside_wall & (np.abs(d_a) < 5.0), 0.6 * _bone_band(d_a, 5.0, 4.5, 1.0) * fade_a, 0.0)
    # Clavicles: gently S-shaped, sternal end to acromion.
    qc = (ax - 18.0) / 140.0
    y_cl = -8.0 - 22.0 * qc + 7.0 * np.sin(2.0 * np.pi * np.clip(qc, 0, 1))
    d_cl = y - y_cl
    fade_c = _smoothstep(qc / 0.05) * _smoothstep((1.0 - qc) / 0.05)
    p += np.where(np.abs(d_cl) < 7.5, _bone_band(d_cl, 7.5, 8.0, 2.0) * fade_c, 0.0)
    return p


def _vessel_tree(
    rng: np.random.Generator,
    origin: tuple[float, float],
    side: int,
    root_angles: Sequence[float],
    root_radius: float,
    max_generation: int,
    inside: Any,
) -> list[tuple[float, float, float, float, float, float]]:
    """Branching vessels from one origin (``side`` -1 right lung, +1 left lung).

    Child radii follow Murray's law for a symmetric bifurcation, ``r_child = r / 2 ** (1/3)``; roots
    pointing down are wider than those pointing up (gravity-dependent perfusion of the upright lung,
    West zones). ``root_angles`` are degrees from +x with y down, given for the right lung (lateral = -x)
    and mirrored for the left.
    """
    segments: list[tuple[float, float, float, float, float, float]] = []
    stack = []
    for angle in root_angles:
        a = angle + rng.uniform(-8.0, 8.0)
        if side > 0:
            a = 180.0 - a
        downward = np.sin(np.deg2rad(a)) > 0.3
        radius = root_radius * rng.uniform(0.9, 1.1) * (1.15 if downward else 0.85)
        stack.append((origin[0], origin[1], a, radius, 0))
    while stack:
        x0, y0, a, r, gen = stack.pop()
        length = 30.0 * 0.8**gen * rng.uniform(0.8, 1.2)
        x1 = x0 + length * np.cos(np.deg2rad(a))
        y1 = y0 + length * np.sin(np.deg2rad(a))
        r_end = r * 0.85  # taper along the segment
        segments.append((x0, y0, x1, y1, r, r_end))
        if gen + 1 >= max_generation or not inside(x1, y1):
            continue
        spread = rng.uniform(18.0, 34.0)
        for sign in (-1.0, 1.0):
            child_r = r_end * 2.0 ** (-1.0 / 3.0) * rng.uniform(0.9, 1.1)
            stack.append((x1, y1, a + sign * spread * rng.uniform(0.7, 1.0), child_r, gen + 1))
    return segments


def _build_anatomy(rng: np.random.Generator, shape: tuple[int, int], centre: CXRCentre) -> _Anatomy:
    q = _sample_params(rng)
    spacing = centre.field_of_view_mm / max(shape)
    centre_mm = (q["shift_x"], 0.5 * q["lung_height"] + 25.0 + q["shift_y"])
    g = _make_grid(shape, spacing, centre_mm, np.deg2rad(q["rotation_deg"]))
    right, left, u, v, mediastinum, geometry = _lung_masks(g, q)
    lungs = right | left
    lung_mask = np.zeros(shape, dtype=np.uint8)
    lung_mask[right] = 1
    lung_mask[left] = 2

    # Aerated lung depth: rounded at the margins (tangential pleura), deeper at the bases. Computed on a
    # 2x finer grid and averaged over each pixel (the detector's pixel aperture), so margins anti-alias.
    edge = ndimage.distance_transform_edt(lungs) * spacing
    depth_scale = q["body_half_depth"] / 105.0
    fine = _make_grid((2 * shape[0], 2 * shape[1]), spacing / 2.0, centre_mm, g.angle)
    f_right, f_left, f_u, _, _, _ = _lung_masks(fine, q)
    f_lungs = f_right | f_left
    f_edge = ndimage.distance_transform_edt(f_lungs) * (spacing / 2.0)
    f_full = depth_scale * (70.0 + 100.0 * np.clip(f_u, 0.0, 1.0) ** 0.7)
    f_depth = f_full * np.sqrt(np.clip(1.0 - (1.0 - np.clip(f_edge / 22.0, 0.0, 1.0)) ** 2, 0.0, 1.0)) * f_lungs
    # The lungs cannot be thicker than the chest there, less ~15 mm of chest wall front and back.
    f_depth = np.minimum(f_depth, np.maximum(_body_chord(fine, q) - 30.0, 0.0))
    lung_depth = f_depth.reshape(shape[0], 2, shape[1], 2).mean(axis=(1, 3))
    full_depth = depth_scale * (70.0 + 100.0 * np.clip(u, 0.0, 1.0) ** 0.7)

    body = _body_chord(g, q)
    p = mu_from_hu(CXR_MATERIALS_HU["body"]) * body
    p += _delta_mu("lung", "body") * lung_depth

    # Hila (left usually higher than right) and vessel trees; bronchi run alongside the arteries.
    m_up = q["mediastinum_half_width"]
    hila = {
        "right": (-(m_up + 14.0), 0.44 * q["lung_height"]),
        "left": (m_up + 18.0, 0.40 * q["lung_height"]),
    }

    def inside_lung(xq: float, yq: float) -> bool:
        r, c = g.to_pixel(np.array(xq), np.array(yq))
        ri, ci = int(round(float(r))), int(round(float(c)))
        return 0 <= ri < shape[0] and 0 <= ci < shape[1] and bool(lungs[ri, ci])

    # Arteries fan out from the hila; veins converge lower and more medially on the left atrium.
    segments: list[tuple[float, float, float, float, float, float]] = []
    for name, side in (("right", -1), ("left", 1)):
        hx, hy = hila[name]
        segments += _vessel_tree(rng, (hx, hy), side, (-100.0, -140.0, 175.0, 140.0, 110.0, 95.0), 6.5, 7, inside_lung)
        vein_origin = (hx - side * 6.0, hy + 32.0)
        segments += _vessel_tree(rng, vein_origin, side, (-150.0, 180.0, 155.0, 125.0, 100.0), 5.0, 6, inside_lung)
    vessels = np.minimum(_tube_map(g, segments, valid=lungs), lung_depth)
    bronchi_segments = []
    for x0, y0, x1, y1, r0, r1 in segments:
        if r0 < 0.9:
            continue
        nx, ny = -(y1 - y0), x1 - x0
        norm = np.hypot(nx, ny) or 1.0
        off = 1.1 * r0 / norm
        bronchi_segments.append((x0 + off * nx, y0 + off * ny, x1 + off * nx, y1 + off * ny, 0.75 * r0, 0.75 * r1))
    bronchi = np.minimum(_tube_map(g, bronchi_segments, valid=lungs), lung_depth)
    p += _delta_mu("blood", "lung") * vessels

    # Unresolved small vessels and interstitium: faint band-limited texture in the lungs.
    texture = _band_noise(rng, shape, 2.0 / spacing + 0.5)
    p += 0.03 * texture * lung_depth / np.maximum(full_depth, 1.0)

    # Trachea and main bronchi (air in soft tissue), carina just above the hila.
    carina = (2.0, 0.30 * q["lung_height"])
    airway = [(1.0, -80.0, carina[0], carina[1], 8.5, 8.0)]
    # The right main bronchus is shorter and steeper (~25 deg from vertical) than the left (~45 deg).
    for length, angle, r0, r1 in ((24.0, -25.0, 7.0, 6.0), (45.0, 45.0, 6.0, 5.0)):
        dx, dy = length * np.sin(np.deg2rad(angle)), length * np.cos(np.deg2rad(angle))
        airway.append((carina[0], carina[1], carina[0] + dx, carina[1] + dy, r0, r1))
    p += _delta_mu("air", "body") * np.minimum(_tube_map(g, airway, valid=~lungs), body)

    # Gastric air bubble under the left hemidiaphragm.
    if q["gastric_bubble"]:
        bx, by = 0.5 * q["thorax_half_width"], geometry["dome_left"] + 30.0
        d = ((g.x - bx) / 32.0) ** 2 + ((g.y - by) / 18.0) ** 2
        p += _delta_mu("air", "body") * 40.0 * np.sqrt(np.clip(1.0 - d, 0.0, None))

    p += _skeleton(g, q, _body_half_axes(g.y, q)[0])

    lung_u = np.where(lungs, u, 0.0)
    lung_v = np.where(lungs, v, 0.0)
    params = dict(q)
    params.update({"dome_right": geometry["dome_right"], "dome_left": geometry["dome_left"]})
    return _Anatomy(g, p, lung_mask, lung_depth, vessels + bronchi, lung_u, lung_v, edge * lungs, hila, params)


# --------------------------------------------------------------------------------------------------
# lesions


def _blob(g: _Grid, rng: np.random.Generator, cx: float, cy: float, a: float, b: float, edge: float) -> np.ndarray:
    """Soft irregular ellipse (0..1): radius perturbed by a few random angular harmonics."""
    theta0 = rng.uniform(0.0, np.pi)
    dx, dy = g.x - cx, g.y - cy
    xr = dx * np.cos(theta0) + dy * np.sin(theta0)
    yr = -dx * np.sin(theta0) + dy * np.cos(theta0)
    r = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
    phi = np.arctan2(yr, xr)
    wobble = np.ones_like(r)
    for k in (2, 3, 5):
        wobble += rng.uniform(-0.12, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    mean_radius = 0.5 * (a + b)
    return _smoothstep(0.5 + (wobble - r) * mean_radius / max(edge, 1e-3))


def _sample_point(rng: np.random.Generator, weight: np.ndarray, g: _Grid) -> tuple[float, float]:
    flat = weight.ravel()
    idx = rng.choice(flat.size, p=flat / flat.sum())
    r, c = np.unravel_index(idx, weight.shape)
    return float(g.x[r, c]), float(g.y[r, c])


def _lobe_region(anat: _Anatomy, lobe: str) -> np.ndarray:
    """Projection of a lobe on the PA image (an approximation: lobes overlap in projection).

    Right: upper lobe above the horizontal fissure (u < 0.45), middle lobe below it against the right
    heart border (medial half, u < 0.88), lower lobe lateral and basal. Left: upper lobe with lingula
    above u = 0.55, lower lobe below.
    """
    u, v, m = anat.lung_u, anat.lung_v, anat.lung_mask
    if lobe == "right_upper":
        return (m == 1) & (u < 0.45)
    if lobe == "right_middle":
        return (m == 1) & (u >= 0.45) & (u < 0.88) & (v < 0.5)
    if lobe == "right_lower":
        return (m == 1) & (u >= 0.45) & ~((u < 0.88) & (v < 0.5))
    if lobe == "left_upper":
        return (m == 2) & (u < 0.55)
    return (m == 2) & (u >= 0.55)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labelled, index=np.arange(1, n + 1))
    return labelled == (1 + int(np.argmax(sizes)))


_Lesion = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]
"""Lesion thickness (mm) per material, boolean masks per lesion label, and JSON details."""


def _bacterial(anat: _Anatomy, rng: np.random.Generator, severity: str) -> _Lesion:
    """Lobar consolidation: one lobe, unilateral, homogeneous, sharp at the fissure."""
    g = anat.grid
    lobe = _LOBES[int(rng.choice(len(_LOBES), p=_LOBE_PRIOR))]
    region = _lobe_region(anat, lobe)
    rows, cols = np.nonzero(region)
    cx, cy = float(g.x[rows, cols].mean()), float(g.y[rows, cols].mean())
    area = region.sum() * g.spacing**2
    radius = np.sqrt(area / np.pi)
    depth_fill = rng.uniform(0.45, 0.65)
    # The horizontal fissure runs along the beam (sharp border); oblique fissures are seen en face, so
    # lower-lobe and left upper-lobe consolidation fades out at its fissure.
    border_mm = 1.5 if lobe in ("right_upper", "right_middle") else 10.0
    lobe_soft = ndimage.gaussian_filter(region.astype(float), border_mm / g.spacing)
    fraction = _LOBE_FRACTION[severity]
    if fraction >= 1.0:
        extent = lobe_soft
    else:
        s = np.sqrt(fraction) * 1.15
        jitter = rng.uniform(-0.2, 0.2, size=2) * radius
        blob = _blob(g, rng, cx + jitter[0], cy + jitter[1], s * radius * 1.1, s * radius * 0.9, 10.0)
        extent = blob * lobe_soft
    mask = _largest_component((extent >= 0.5) & (anat.lung_mask > 0))
    # Keep the opacity of the chosen region only (the mask's largest component), fading with the border.
    support = ndimage.binary_dilation(mask, iterations=max(2, int(round(2.0 * border_mm / g.spacing))))
    extent = extent * ndimage.gaussian_filter(support.astype(float), 0.5 * border_mm / g.spacing) * (anat.lung_mask > 0)
    thickness = {"consolidation": depth_fill * extent * anat.lung_depth}
    return thickness, {"consolidation": mask}, {"lobe": lobe, "depth_fill": round(depth_fill, 3)}


def _covid(anat: _Anatomy, rng: np.random.Generator, severity: str) -> _Lesion:
    """Bilateral, peripheral, lower-zone predominant ground-glass patches (Wong et al., Radiology 2020).

    Patches are added alternately in each lung until the ground-glass mask covers the severity's share of
    the lung area; severe cases add consolidation in the core of some patches.
    """
    g = anat.grid
    lungs = anat.lung_mask > 0
    lung_area = lungs.sum()
    target = _AREA_FRACTION[severity] * rng.uniform(0.85, 1.15)
    # Outer third of the lung (lateral, subpleural) and lower zones favoured.
    periphery = np.exp(-(1.0 - anat.lung_v) / 0.15) * (0.15 + anat.lung_u**2) * lungs
    ggo_frac = np.zeros(g.shape)
    cons_frac = np.zeros(g.shape)
    first = int(rng.integers(2))
    patches = []
    for i in range(40):
        side = 1 + (first + i) % 2
        weight = periphery * (anat.lung_mask == side)
        cx, cy = _sample_point(rng, weight, g)
        a, b = rng.uniform(16.0, 32.0), rng.uniform(14.0, 26.0)
        blob = _blob(g, rng, cx, cy, a, b, edge=14.0) * (anat.lung_mask == side)
        fill = rng.uniform(0.3, 0.5)
        ggo_frac = np.maximum(ggo_frac, fill * blob)
        if severity == "severe" and rng.uniform() < 0.5:
            core = _blob(g, rng, cx, cy, 0.5 * a, 0.5 * b, edge=6.0) * (anat.lung_mask == side)
            cons_frac = np.maximum(cons_frac, 0.3 * core)
        patches.append({"lung": "right" if side == 1 else "left", "centre_mm": [round(cx, 1), round(cy, 1)]})
        covered = (ggo_frac >= 0.15).sum()
        if i >= 1 and covered >= target * lung_area:
            break
    ggo_mask = (ggo_frac >= 0.15) & lungs  # about the half-maximum of a patch (fill 0.3-0.5)
    cons_mask = (cons_frac >= 0.15) & lungs
    thickness = {
        "ground_glass": ggo_frac * anat.lung_depth,
        "consolidation": cons_frac * anat.lung_depth,
    }
    return thickness, {"ground_glass": ggo_mask, "consolidation": cons_mask}, {"patches": patches}


def _viral(anat: _Anatomy, rng: np.random.Generator, severity: str) -> _Lesion:
    """Bilateral perihilar interstitial pattern: reticular lines plus peribronchial streaks.

    The envelope is a Gaussian around each hilum whose width sets the severity; inside it a reticular net
    (the zero set of band-limited noise) and streaks along the bronchovascular bundles radiating from the
    hila thicken the interstitium.
    """
    g = anat.grid
    lungs = anat.lung_mask > 0
    extent = _VIRAL_EXTENT_MM[severity] * rng.uniform(0.9, 1.1)
    envelope = np.zeros(g.shape)
    for name in ("right", "left"):
        hx, hy = anat.hila[name]
        side = 1 if name == "right" else 2
        d2 = (g.x - hx) ** 2 + ((g.y - hy) / 1.35) ** 2  # elongated along the vertical bundles
        envelope = np.maximum(envelope, np.exp(-d2 / (2.0 * extent**2)) * (anat.lung_mask == side))
    noise = _band_noise(rng, g.shape, 3.0 / g.spacing + 0.5)
    reticular = np.exp(-((noise / 0.35) ** 2))
    streaks = ndimage.gaussian_filter(anat.vessel_bronchus, 1.5 / g.spacing)
    streaks = streaks / max(float(np.percentile(streaks[lungs], 99)), 1e-6)
    pattern = np.clip(0.25 + 0.45 * reticular + 0.45 * np.clip(streaks, 0, 1.5), 0.0, 1.3)
    fill = rng.uniform(0.35, 0.45)
    frac = fill * envelope * pattern
    mask = (envelope >= 0.5) & lungs
    thickness = {"interstitial": frac * anat.lung_depth}
    return thickness, {"ground_glass": mask}, {"extent_mm": round(extent, 2)}


_LESION_MAKERS = {1: _bacterial, 2: _viral, 3: _covid}


# --------------------------------------------------------------------------------------------------
# acquisition


def _acquire(p: np.ndarray, centre: CXRCentre, spacing: float, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector counts with quantum noise and blur, log-normalised and tone-mapped to uint8.

    Returns the display image and the measured line integral ``p_hat`` before windowing.
    """
    n0 = centre.quanta_per_mm2 * spacing**2
    # Pixel aperture: the detector integrates over each pixel (anti-aliases the analytic edges).
    p = ndimage.gaussian_filter(p, 0.5)
    counts = n0 * centre.exposure_factor * np.exp(-p)
    counts = counts + np.sqrt(counts) * noise  # Gaussian limit of Poisson statistics
    counts = ndimage.gaussian_filter(counts, centre.detector_blur_mm / spacing)
    p_hat = -np.log(np.maximum(counts, 0.5) / n0)
    lo, hi = centre.window
    v = np.clip((p_hat - lo) / (hi - lo), 0.0, 1.0) ** centre.gamma
    return np.round(255.0 * v).astype(np.uint8), p_hat


def decode_line_integral(image: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Invert the display tone curve of a case: grey levels back to line integrals (clipped pixels excepted).

    ``p = lo + (image / 255) ** (1 / gamma) * (hi - lo) + ln(exposure_factor)``, the attenuation line
    integral the detector measured (up to noise, blur and 8-bit quantisation).
    """
    display = meta["display"]
    lo, hi = display["window"]
    v = (np.asarray(image, dtype=float) / 255.0) ** (1.0 / display["gamma"])
    return lo + v * (hi - lo) + np.log(display["exposure_factor"])


def _resolve_label(label: int | str) -> int:
    if isinstance(label, str):
        if label not in CXR_CLASS_NAMES:
            raise InputError(f"unknown CXR class name {label!r}; expected one of {CXR_CLASS_NAMES}.")
        return CXR_CLASS_NAMES.index(label)
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < 4:
        raise InputError(f"CXR label must be an int in [0, 3] or a class name, got {label!r}.")
    return int(label)


def generate_cxr_case(
    seed: int,
    label: int | str,
    severity: str = "moderate",
    centre: str = "A",
    size: tuple[int, int] = (256, 256),
    lesions: bool = True,
) -> CXRCase:
    """Render one synthetic PA chest radiograph.

    Parameters
    ----------
    seed
        Seeds anatomy, lesions and noise through independent streams, so ``lesions=False`` with the same
        seed gives the identical chest and noise without the disease.
    label
        Class index or name from :data:`CXR_CLASS_NAMES`.
    severity
        ``"mild"``, ``"moderate"`` or ``"severe"``: lesion extent (ignored, recorded as ``"none"``, for
        normal cases).
    centre
        Key of :data:`CXR_CENTRES` (noise, exposure, tone curve, blur, field of view).
    size
        (H, W) in pixels, each at least 64.
    lesions
        Render the disease; ``False`` gives the lesion-free twin (the masks then stay empty).

    Returns
    -------
    CXRCase
        Image (H, W) uint8 with lung and lesion masks (H, W) uint8.
    """
    label = _resolve_label(label)
    if severity not in CXR_SEVERITIES:
        raise InputError(f"CXR severity must be one of {CXR_SEVERITIES}, got {severity!r}.")
    if centre not in CXR_CENTRES:
        raise InputError(f"unknown CXR centre {centre!r}; known centres: {sorted(CXR_CENTRES)}.")
    if len(size) != 2 or min(int(s) for s in size) < 64:
        raise InputError(f"CXR size must be (H, W) with both at least 64 pixels, got {tuple(size)}.")
    shape = (int(size[0]), int(size[1]))
    settings = CXR_CENTRES[centre]
    anatomy_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    anat = _build_anatomy(anatomy_rng, shape, settings)
    spacing = anat.grid.spacing
    noise = noise_rng.standard_normal(shape)

    lesion_mask = np.zeros(shape, dtype=np.uint8)
    p = anat.p_base.copy()
    lesion_meta: dict[str, Any] = {}
    claims: dict[str, float] = {}
    severity_out = "none" if label == 0 else severity
    if label != 0 and lesions:
        made, masks, lesion_meta = _LESION_MAKERS[label](anat, lesion_rng, severity)
        # Lesion material fills the alveoli but not the vessels and bronchi running through it:
        # vessels lose their contrast in consolidation, and air bronchograms appear.
        keep = np.clip(1.0 - anat.vessel_bronchus / np.maximum(anat.lung_depth, 1e-6), 0.0, 1.0)
        increase = np.zeros(shape)
        for material, thickness in made.items():
            increase += _delta_mu(material, "lung") * thickness * keep
        p += increase
        if "ground_glass" in masks:
            lesion_mask[masks["ground_glass"]] = CXR_LESION_LABELS["ground_glass"]
        if "consolidation" in masks:
            lesion_mask[masks["consolidation"]] = CXR_LESION_LABELS["consolidation"]
        lesion_mask[anat.lung_mask == 0] = 0
        for name, value in CXR_LESION_LABELS.items():
            if value and (lesion_mask == value).any():
                claims[name] = float(increase[lesion_mask == value].mean())
    image, _ = _acquire(p, settings, spacing, noise)

    lungs = anat.lung_mask > 0
    meta: dict[str, Any] = {
        "seed": int(seed),
        "generator": "medxai.data.synthetic.cxr",
        "view": "PA",
        "effective_energy_kev": 60.0,
        "materials_hu": dict(CXR_MATERIALS_HU),
        "centre": asdict(settings),
        "display": {
            "window": list(settings.window),
            "gamma": settings.gamma,
            "exposure_factor": settings.exposure_factor,
        },
        "anatomy": {k: round(float(v), 3) for k, v in anat.params.items()},
        "hila_px": {
            name: [round(float(c), 2) for c in anat.grid.to_pixel(np.array(hx), np.array(hy))]
            for name, (hx, hy) in anat.hila.items()
        },
        "lesions_rendered": bool(lesions and label != 0),
        "lesion": lesion_meta,
        "lesion_line_integral_increase": claims,
        "lesion_area_fraction": float((lesion_mask > 0).sum() / max(lungs.sum(), 1)),
    }
    return CXRCase(
        image=image,
        lung_mask=anat.lung_mask,
        lesion_mask=lesion_mask,
        label=label,
        class_name=CXR_CLASS_NAMES[label],
        severity=severity_out,
        centre=centre,
        pixel_spacing_mm=(spacing, spacing),
        meta=meta,
    )


def generate_cxr_dataset(
    output_dir: str | Path,
    num_cases: int = 80,
    seed: int = 0,
    centres: Sequence[str] = ("A", "B"),
    size: tuple[int, int] = (256, 256),
    fractions: dict[str, float] | None = None,
    severity_mix: dict[str, float] | None = None,
) -> Path:
    """Write a balanced synthetic CXR set and its MONAI datalist; returns the ``datalist.json`` path.

    Layout: ``images/cxr_XXXX.png``, ``labels/cxr_XXXX_lung.png``, ``labels/cxr_XXXX_lesion.png`` and
    ``datalist.json`` with patient-disjoint ``training`` / ``validation`` / ``test`` lists (fractions of
    :func:`medxai.data.splits.patient_split`, default 70/10/20), stratified by class. Classes are balanced
    (``num_cases // 4`` each, the remainder to the first classes); centres and severities are drawn from
    ``seed``. Entries: ``image``, ``lung_mask``, ``lesion_mask``, ``label``, ``class_name``, ``label3``
    (0 normal, 1 pneumonia, 2 covid19), ``patient_id`` (``synthetic-cxr-XXXX``), ``centre``, ``severity``,
    ``pixel_spacing_mm``.
    """
    if num_cases < 1:
        raise InputError(f"num_cases must be at least 1, got {num_cases}.")
    unknown = [c for c in centres if c not in CXR_CENTRES]
    if not centres or unknown:
        raise InputError(f"unknown CXR centre(s) {unknown or list(centres)}; known centres: {sorted(CXR_CENTRES)}.")
    mix = dict(severity_mix or {"mild": 0.35, "moderate": 0.4, "severe": 0.25})
    if set(mix) - set(CXR_SEVERITIES) or not np.isclose(sum(mix.values()), 1.0) or min(mix.values()) < 0:
        raise InputError(f"severity_mix must map {CXR_SEVERITIES} to fractions summing to 1, got {mix}.")
    output_dir = Path(output_dir)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    labels = rng.permutation(np.arange(num_cases) % len(CXR_CLASS_NAMES))
    severities = rng.choice(list(mix), size=num_cases, p=list(mix.values()))
    centre_draw = rng.choice(len(centres), size=num_cases)
    case_seeds = np.random.SeedSequence(int(seed)).generate_state(num_cases)
    records = []
    for i in range(num_cases):
        centre = centres[int(centre_draw[i])]
        case = generate_cxr_case(int(case_seeds[i]), int(labels[i]), str(severities[i]), centre, size)
        stem = f"cxr_{i:04d}"
        save_png(case.image, output_dir / "images" / f"{stem}.png")
        save_png(case.lung_mask, output_dir / "labels" / f"{stem}_lung.png")
        save_png(case.lesion_mask, output_dir / "labels" / f"{stem}_lesion.png")
        records.append(
            {
                "image": f"images/{stem}.png",
                "lung_mask": f"labels/{stem}_lung.png",
                "lesion_mask": f"labels/{stem}_lesion.png",
                "label": case.label,
                "class_name": case.class_name,
                "label3": case.label3,
                "patient_id": f"synthetic-cxr-{i:04d}",
                "centre": case.centre,
                "severity": case.severity,
                "pixel_spacing_mm": [round(s, 6) for s in case.pixel_spacing_mm],
            }
        )
    splits = patient_split(records, fractions, label_key="label", patient_key="patient_id", seed=int(seed))
    metadata = {
        "name": "medxai synthetic chest radiographs",
        "generator": "medxai.data.synthetic.cxr.generate_cxr_dataset",
        "seed": int(seed),
        "num_cases": int(num_cases),
        "size": [int(s) for s in size],
        "class_names": list(CXR_CLASS_NAMES),
        "class3_names": list(CXR_CLASS3_NAMES),
        "lung_labels": dict(CXR_LUNG_LABELS),
        "lesion_labels": dict(CXR_LESION_LABELS),
        "centres": {c: asdict(CXR_CENTRES[c]) for c in centres},
        "view": "PA; patient right on image left",
    }
    return write_datalist(splits, output_dir / "datalist.json", metadata)
