"""Synthetic chest CT phantoms in Hounsfield units: normal, lobar pneumonia and COVID-19.

Each case is a supine adult chest rendered in physical (mm, RAS) coordinates on the output grid: body with
subcutaneous fat and muscle, a thoracic cavity with two lungs (three right lobes, two left lobes split by
oblique and horizontal fissures), mediastinum with heart, great vessels, oesophagus and trachea in fat,
spine, sternum, ribs with costal cartilage, liver under the right hemidiaphragm, and a bronchovascular tree
per lung grown by a volume-filling branching algorithm with Murray's-law radii. Disease is added as
lesion blobs on a contiguous run of slices:

* ``covid19``: bilateral, peripheral (subpleural), rounded ground-glass opacities with lower-lobe
  predominance; severe cases add consolidation cores and crazy-paving (Bernheim et al. 2020; Simpson
  et al. 2020, RSNA consensus).
* ``pneumonia``: lobar consolidation confined to one lobe of one lung, sharp at the fissures, with air
  bronchograms (Vilar et al. 2004; Hansell et al. 2008, Fleischner glossary).

Acquisition is simulated per "centre" (:data:`CENTRES`): reconstruction field of view (pixel spacing), slice
thickness (partial volume: each slice averages sub-slices across its thickness), reconstruction kernel
blur, HU calibration (scale and offset) and image noise. See ``docs/data.md`` for every parameter
and its source and for what is not modelled.

Conventions: arrays are (X, Y, Z) with X towards the patient's right, Y anterior and Z superior (RAS), so a
diagonal affine holds the voxel spacing; Z indexes axial slices. Images hold integer HU (float32 in
memory, int16 on disk) clipped to the 12-bit CT range [-1024, 3071].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from medxai.data.splits import patient_split
from medxai.data.synthetic.io import save_nifti, spacing_affine, write_datalist
from medxai.errors import InputError

__all__ = [
    "CLASS_NAMES",
    "SEVERITIES",
    "SEVERITY_SLICE_FRACTION",
    "TISSUE_HU",
    "LOBES",
    "SCAN_LENGTH_MM",
    "CTCentre",
    "CENTRES",
    "CTCase",
    "DEFAULT_SEVERITY_MIX",
    "generate_ct_case",
    "generate_ct_dataset",
]

CLASS_NAMES: tuple[str, ...] = ("normal", "pneumonia", "covid19")
"""Class names; a case's ``label`` is its index here."""

SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")
"""Severities of abnormal cases (normal cases have severity ``"none"``)."""

SEVERITY_SLICE_FRACTION: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"mild": (0.03, 0.10), "moderate": (0.15, 0.30), "severe": (0.35, 0.55)}
)
"""Range of the fraction of slices that carry lesions, per severity (mild: 2-6 of 64 slices)."""

TISSUE_HU: Mapping[str, float] = MappingProxyType(
    {
        "air": -1000.0,  # definition of the Hounsfield scale
        "fat": -100.0,  # subcutaneous and mediastinal fat, -50 to -150
        "soft_tissue": 40.0,  # muscle, mediastinal organs, 20 to 60
        "blood": 40.0,  # unenhanced blood, heart and vessels
        "liver": 58.0,  # unenhanced liver, 50 to 65
        "disc": 80.0,  # intervertebral disc
        "cartilage": 120.0,  # costal cartilage
        "cancellous_bone": 220.0,  # vertebral body
        "sternum": 350.0,  # thin cortex around marrow
        "rib": 650.0,  # cortex and marrow of a rib at 1-3 mm voxels
        "cortical_bone": 900.0,  # vertebral cortex, lamina and processes
    }
)
"""Nominal tissue densities (HU) before calibration; sources in ``docs/data.md``."""

LOBES: Mapping[int, str] = MappingProxyType(
    {1: "right upper", 2: "right middle", 3: "right lower", 4: "left upper", 5: "left lower"}
)
"""Lobe codes used internally and in case metadata."""

SCAN_LENGTH_MM = 320.0
"""Cranio-caudal extent of every scan (lung apex to below the costophrenic recesses)."""

_SUB_SLICE_MM = 1.25  # thickest sub-slice used to integrate a slice over its thickness
_FOV_CENTRE_Y_MM = -12.0  # the body is deeper behind the cavity centre; centre it in the field of view
_HU_RANGE = (-1024.0, 3071.0)  # 12-bit CT storage range
_LOBE_PRIOR = {1: 0.2, 2: 0.1, 3: 0.3, 4: 0.15, 5: 0.25}  # lobar pneumonia favours the lower lobes


# --------------------------------------------------------------------------------------------------- centres
@dataclass(frozen=True)
class CTCentre:
    """Acquisition and reconstruction settings of one imaging centre.

    Attributes
    ----------
    name
        Short key, e.g. ``"A"``.
    description
        Plain-language protocol summary.
    noise_sigma_hu
        Standard deviation of image noise (HU) as measured in a homogeneous region of the reconstructed
        slice. Quantum noise scales as 1/sqrt(dose): standard dose about 10-20 HU, low dose 40-60 HU.
    hu_scale, hu_offset
        Calibration: stored value = ``hu_scale * HU + hu_offset`` (scanner-to-scanner drift of the water/air
        calibration).
    field_of_view_mm
        Square reconstruction field of view; pixel spacing is ``field_of_view_mm / n`` for ``n`` pixels.
    slice_thickness_mm
        Nominal slice thickness (width of the box slice-sensitivity profile), 0.625-5 mm on current
        scanners. The slice interval is ``SCAN_LENGTH_MM / n_slices`` whatever the thickness, so thin
        slices sample the chest sparsely (as in interval high-resolution CT) and thick slices average it.
    kernel_sigma_mm
        Standard deviation of the in-plane Gaussian that stands for the reconstruction kernel (small for
        sharp lung kernels, larger for soft-tissue kernels); the noise is correlated by the same kernel.
    """

    name: str
    description: str
    noise_sigma_hu: float
    hu_scale: float
    hu_offset: float
    field_of_view_mm: float
    slice_thickness_mm: float
    kernel_sigma_mm: float

    def __post_init__(self) -> None:
        checks = {
            "noise_sigma_hu": self.noise_sigma_hu >= 0,
            "hu_scale": self.hu_scale > 0,
            "field_of_view_mm": self.field_of_view_mm > 0,
            "slice_thickness_mm": self.slice_thickness_mm > 0,
            "kernel_sigma_mm": self.kernel_sigma_mm >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"CT centre '{self.name}': {name} = {getattr(self, name)} is out of range.")

    def spacing(self, shape: Sequence[int]) -> tuple[float, float, float]:
        """Voxel spacing (mm) along (X, Y, Z) for an output grid of ``shape`` (X, Y, Z)."""
        nx, ny, nz = (int(s) for s in shape)
        return (self.field_of_view_mm / nx, self.field_of_view_mm / ny, SCAN_LENGTH_MM / nz)


CENTRES: Mapping[str, CTCentre] = MappingProxyType(
    {
        "A": CTCentre(
            name="A",
            description="standard dose, thin 1.25 mm slices, sharp lung kernel",
            noise_sigma_hu=12.0,
            hu_scale=1.0,
            hu_offset=0.0,
            field_of_view_mm=380.0,
            slice_thickness_mm=1.25,
            kernel_sigma_mm=0.5,
        ),
        "B": CTCentre(
            name="B",
            description="low dose, thick 5 mm slices, soft-tissue kernel",
            noise_sigma_hu=45.0,
            hu_scale=1.0,
            hu_offset=10.0,
            field_of_view_mm=400.0,
            slice_thickness_mm=5.0,
            kernel_sigma_mm=1.2,
        ),
        "C": CTCentre(
            name="C",
            description="other vendor, 2.5 mm slices, intermediate dose, calibration drift",
            noise_sigma_hu=25.0,
            hu_scale=0.97,
            hu_offset=-15.0,
            field_of_view_mm=360.0,
            slice_thickness_mm=2.5,
            kernel_sigma_mm=0.8,
        ),
        "D": CTCentre(
            name="D",
            description="ultra-low dose, 0.625 mm slices, sharp kernel",
            noise_sigma_hu=60.0,
            hu_scale=1.0,
            hu_offset=0.0,
            field_of_view_mm=360.0,
            slice_thickness_mm=0.625,
            kernel_sigma_mm=0.5,
        ),
    }
)
"""Named centres; pass a name to :func:`generate_ct_case` or a :class:`CTCentre` of your own."""


# ------------------------------------------------------------------------------------------------------ case
@dataclass
class CTCase:
    """One synthetic chest CT case.

    Attributes
    ----------
    image
        float32 (X, Y, Z), integer HU after calibration, in [-1024, 3071].
    lesion_mask
        uint8 (X, Y, Z): 0 background, 1 ground-glass (including crazy-paving), 2 consolidation.
    lung_mask
        uint8 (X, Y, Z): 0 background, 1 right lung, 2 left lung.
    affine
        4x4 RAS affine; its diagonal is the voxel spacing (mm).
    label, class_name
        Index into :data:`CLASS_NAMES` and the name.
    severity
        ``"mild"``, ``"moderate"``, ``"severe"`` or ``"none"`` (normal).
    centre
        Name of the acquisition centre.
    lesion_slices
        ``(start, stop)`` slice range (stop exclusive) that holds lesions, or ``None``.
    meta
        Everything else: centre settings, spacing, anatomy and lesion parameters (JSON-serialisable).
    """

    image: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    affine: np.ndarray
    label: int
    class_name: str
    severity: str
    centre: str
    lesion_slices: tuple[int, int] | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (mm) along (X, Y, Z)."""
        return tuple(float(s) for s in np.abs(np.diag(self.affine)[:3]))  # type: ignore[return-value]

    @property
    def slice_labels(self) -> np.ndarray:
        """uint8 (Z,): 1 where an axial slice contains any lesion voxel."""
        return (self.lesion_mask.reshape(-1, self.lesion_mask.shape[2]).max(axis=0) > 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class _Grid:
    """Output grid and the sub-slices (``zf``) that integrate each slice over its thickness."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    thickness: float
    n_sub: int
    x: np.ndarray  # (nx,) mm
    y: np.ndarray  # (ny,) mm
    z: np.ndarray  # (nz,) slice centres, mm
    zf: np.ndarray  # (nz * n_sub,) sub-slice centres, slice-major

    @classmethod
    def create(cls, shape: tuple[int, int, int], centre: CTCentre) -> _Grid:
        nx, ny, nz = shape
        dx, dy, dz = centre.spacing(shape)
        t = centre.slice_thickness_mm
        n_sub = max(1, math.ceil(t / _SUB_SLICE_MM - 1e-9))
        x = ((np.arange(nx) - (nx - 1) / 2) * dx).astype(np.float32)
        y = ((np.arange(ny) - (ny - 1) / 2) * dy + _FOV_CENTRE_Y_MM).astype(np.float32)
        z = (-SCAN_LENGTH_MM / 2 + (np.arange(nz) + 0.5) * dz).astype(np.float32)
        offsets = t * ((np.arange(n_sub) + 0.5) / n_sub - 0.5)
        zf = (z[:, None] + offsets[None, :]).reshape(-1).astype(np.float32)
        return cls((nx, ny, nz), (dx, dy, dz), t, n_sub, x, y, z, zf)

    @property
    def origin(self) -> tuple[float, float, float]:
        return (float(self.x[0]), float(self.y[0]), float(self.z[0]))

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return (self.shape[0], self.shape[1], self.shape[2] * self.n_sub)

    @property
    def sub_thickness(self) -> float:
        return self.thickness / self.n_sub

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Slice of grid indices whose coordinate along ``axis`` (0 x, 1 y, 2 zf) lies in [lo, hi]."""
        coords = (self.x, self.y, self.zf)[axis]
        if axis == 2:  # sub-slices are not sorted when slices overlap; take the covering range
            inside = np.nonzero((coords >= lo) & (coords <= hi))[0]
            return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)
        return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))

    def average_slices(self, fine: np.ndarray) -> np.ndarray:
        """Average sub-slices (X, Y, Z * n_sub) -> (X, Y, Z): the box slice-sensitivity profile."""
        if self.n_sub == 1:
            return fine
        fine4 = fine.reshape(self.shape[0], self.shape[1], self.shape[2], self.n_sub)
        total = fine4[..., 0].astype(np.float32, copy=True)
        for m in range(1, self.n_sub):  # strided adds beat a reduction over a short last axis
            total += fine4[..., m]
        return total * np.float32(1.0 / self.n_sub)


# -------------------------------------------------------------------------------------------- soft geometry
def _inside(sd: np.ndarray, edge: float) -> np.ndarray:
    """Occupancy from a signed distance (mm, negative inside): a linear ramp one ``edge`` wide."""
    return np.clip(0.5 - sd / edge, 0.0, 1.0).astype(np.float32, copy=False)


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: Any, b: Any) -> np.ndarray:
    """First-order signed distance to an ellipse, (q - 1) / |grad q| (Taubin 1991); exact near the curve."""
    u = (x - cx) / a
    v = (y - cy) / b
    q = u * u + v * v
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = (q - 1.0) / (2.0 * np.sqrt((u / a) ** 2 + (v / b) ** 2))
    return np.nan_to_num(sd, nan=-1e6, neginf=-1e6)


def _ellipsoid_sd(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: Sequence[float], r: Sequence[float]
) -> np.ndarray:
    """First-order signed distance to an axis-aligned ellipsoid with centre ``c`` and semi-axes ``r``."""
    u, v, w = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    q = u * u + v * v + w * w
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = (q - 1.0) / (2.0 * np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2))
    return np.nan_to_num(sd, nan=-1e6, neginf=-1e6)


def _capsule_sd(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, p0: Sequence[float], p1: Sequence[float], radius: float
) -> np.ndarray:
    """Signed distance to a capsule (segment ``p0``-``p1`` swept by a ball of ``radius``)."""
    d = np.subtract(p1, p0, dtype=float)
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
    return np.sqrt(dist2) - radius


def _paint(volume: np.ndarray, occupancy: np.ndarray, value: Any) -> None:
    """Blend ``value`` into ``volume`` in place with weight ``occupancy`` (partial-volume mixing)."""
    volume += occupancy * (value - volume)


# --------------------------------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class _Anatomy:
    """One patient's anatomy: every size in mm, RAS, cavity centred at x = y = 0."""

    sx: float
    sy: float
    fat: float
    z_shift: float
    lung_hu: float
    gradient_hu: float
    heart_scale: float
    heart_x: float
    dome_right: float
    dome_left: float
    fissure_right: float
    fissure_left: float
    horizontal_fissure: float
    rib_phase: float
    vertebra_phase: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Anatomy:
        u = rng.uniform
        return cls(
            sx=u(0.93, 1.07),
            sy=u(0.9, 1.08),
            fat=u(6.0, 25.0),
            z_shift=u(-10.0, 10.0),
            lung_hu=u(-875.0, -845.0),
            gradient_hu=u(30.0, 50.0),
            heart_scale=u(0.9, 1.1),
            heart_x=u(-24.0, -12.0),
            dome_right=u(-80.0, -65.0),
            dome_left=u(-95.0, -80.0),
            fissure_right=u(-22.0, -8.0),
            fissure_left=u(-14.0, 0.0),
            horizontal_fissure=u(0.0, 12.0),
            rib_phase=u(-4.0, 4.0),
            vertebra_phase=u(0.0, 26.0),
        )

    # cavity and body -------------------------------------------------------------------------------------
    @property
    def cavity_a(self) -> float:
        return 128.0 * self.sx

    @property
    def cavity_b(self) -> float:
        return 92.0 * self.sy

    def width_scale(self, z: np.ndarray) -> np.ndarray:
        """Lateral scale of the rib cage: 1 in the lower chest, narrowing by 25% towards the thoracic inlet."""
        t = np.clip((z - self.z_shift) / (self.apex_z - self.z_shift), 0.0, 1.0)
        return 1.0 - 0.25 * t * t

    def cavity_sd(self, x: np.ndarray, y: np.ndarray, width: float = 1.0) -> np.ndarray:
        """Signed distance to the inner chest wall (parietal pleura); negative inside the thoracic cavity."""
        return _ellipse_sd(x, y, 0.0, 0.0, self.cavity_a * width, self.cavity_b)

    def body_sd(self, x: np.ndarray, y: np.ndarray, inner: bool, width: float = 1.0) -> np.ndarray:
        """Signed distance to the skin (``inner=False``) or to the fat/muscle boundary (``inner=True``)."""
        fat_ant, fat_post = (0.0, 0.0) if inner else (self.fat, 0.6 * self.fat)
        a = self.cavity_a * width + 14.0 + fat_ant
        b = np.where(y >= 0, self.cavity_b + 16.0 + fat_ant, self.cavity_b + 45.0 + fat_post)
        return _ellipse_sd(x, y, 0.0, 0.0, a, b)

    # mediastinum -----------------------------------------------------------------------------------------
    @property
    def vertebra_y(self) -> float:
        return -self.cavity_b + 12.0

    @property
    def trachea_y(self) -> float:
        return self.vertebra_y + 47.0

    @property
    def carina_z(self) -> float:
        return 55.0 + self.z_shift

    @property
    def apex_z(self) -> float:
        return 140.0 + self.z_shift

    def hilum(self, side: int) -> tuple[float, float, float]:
        """Root of the bronchovascular tree of the right (``side=+1``) or left (``-1``) lung."""
        if side > 0:
            return (42.0 * self.sx, self.trachea_y + 18.0, self.carina_z - 30.0)
        return (-45.0 * self.sx, self.trachea_y + 18.0, self.carina_z - 40.0)

    def main_bronchus(self, side: int) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
        """Carina-to-hilum segment and lumen radius of a main bronchus (right short and steep, left long)."""
        carina = (0.0, self.trachea_y, self.carina_z)
        return carina, self.hilum(side), 7.0 if side > 0 else 6.0

    def mediastinum_halfwidth(self, y: np.ndarray) -> np.ndarray:
        """Half-width (mm) of the mediastinal strip: narrow anteriorly, wide around trachea and oesophagus."""
        return 10.0 + 22.0 * np.exp(-(((y - self.trachea_y) / 40.0) ** 2))

    @property
    def heart_centre(self) -> tuple[float, float, float]:
        return (self.heart_x * self.sx, 22.0 * self.sy, -50.0 + self.z_shift)

    @property
    def heart_radii(self) -> tuple[float, float, float]:
        s = self.heart_scale
        return (62.0 * self.sx * s, 48.0 * self.sy * s, 52.0 * s)

    def vertical_vessels(self) -> list[tuple[float, float, float, float, float]]:
        """Vertical tubes (x, y, radius, z_low, z_high): descending and ascending aorta, SVC, oesophagus."""
        zs, yv = self.z_shift, self.vertebra_y
        arch = 62.0 + zs
        return [
            (-30.0 * self.sx, yv + 14.0, 12.0, -SCAN_LENGTH_MM, arch),  # descending aorta
            (8.0 * self.sx, 22.0 * self.sy, 15.0, -10.0 + zs, arch),  # ascending aorta
            (35.0 * self.sx, 10.0 * self.sy, 10.0, -15.0 + zs, 110.0 + zs),  # superior vena cava
            (-10.0, yv + 27.0, 7.0, -SCAN_LENGTH_MM, SCAN_LENGTH_MM),  # oesophagus
        ]

    def aortic_arch(self) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
        """Capsule chain of the aortic arch from the ascending to the descending aorta (radius 13 mm)."""
        zs, yv = self.z_shift, self.vertebra_y
        return [
            ((8.0 * self.sx, 22.0 * self.sy, 62.0 + zs), (0.0, 5.0, 80.0 + zs)),
            ((0.0, 5.0, 80.0 + zs), (-22.0 * self.sx, yv + 30.0, 78.0 + zs)),
            ((-22.0 * self.sx, yv + 30.0, 78.0 + zs), (-30.0 * self.sx, yv + 14.0, 62.0 + zs)),
        ]

    # lungs -----------------------------------------------------------------------------------------------
    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm surface: a dome per side, deepest in the posterior costophrenic recess."""
        dome = np.where(x >= 0, self.dome_right, self.dome_left) + self.z_shift
        r2 = ((np.abs(x) - 60.0 * self.sx) / (90.0 * self.sx)) ** 2 + ((y - 20.0) / (105.0 * self.sy)) ** 2
        return dome - 60.0 * np.minimum(r2, 1.0)

    def apex_scale(self, z: np.ndarray) -> np.ndarray:
        """Cross-section scale of the lung columns: 1 below the apical cap, an ellipsoidal dome above it."""
        cap = 110.0
        t = np.clip((z - (self.apex_z - cap)) / cap, 0.0, 1.0)
        return np.sqrt(np.maximum(1.0 - t * t, 1e-6))

    def fissure_z(self, side: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the oblique fissure: high posteriorly (about T4), reaching the diaphragm anteriorly."""
        z0 = np.where(side > 0, self.fissure_right, self.fissure_left) + self.z_shift
        return z0 - 0.75 * y

    def lobe(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Lobe code (see :data:`LOBES`) of each point, assuming the point lies in a lung."""
        side = np.sign(x)
        lower = z < self.fissure_z(side, y)
        middle = ~lower & (z < self.horizontal_fissure + self.z_shift)
        right = np.where(lower, 3, np.where(middle, 2, 1))
        left = np.where(lower, 5, 4)
        return np.where(side > 0, right, left).astype(np.uint8)

    def lobe_occupancy(self, lobe: int, x: np.ndarray, y: np.ndarray, z: np.ndarray, edge: float) -> np.ndarray:
        """Soft indicator of one lobe (fissures are planes; the ramp is ``edge`` mm wide)."""
        side = 1.0 if lobe <= 3 else -1.0
        norm = math.sqrt(1.0 + 0.75**2)
        below_oblique = _inside((z - self.fissure_z(np.float32(side), y)) / norm, edge)
        on_side = (x * side > 0).astype(np.float32)
        if lobe in (3, 5):
            return on_side * below_oblique
        if lobe == 4:
            return on_side * (1.0 - below_oblique)
        below_horizontal = _inside(z - (self.horizontal_fissure + self.z_shift), edge)
        if lobe == 2:
            return on_side * (1.0 - below_oblique) * below_horizontal
        return on_side * (1.0 - below_oblique) * (1.0 - below_horizontal)

    def parenchyma_hu(self, y: np.ndarray) -> np.ndarray:
        """Alveolar parenchyma density with the supine gravity-dependent gradient (denser posteriorly)."""
        return self.lung_hu - 0.5 * self.gradient_hu * np.clip(y / self.cavity_b, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------- body render
@dataclass
class _Rendered:
    """Fine-grid intermediate of a case (sub-slices along Z)."""

    hu: np.ndarray  # (X, Y, Zf) HU without lung content
    lung: np.ndarray  # (X, Y, Zf) lung occupancy
    lung_mask: np.ndarray  # (X, Y, Z) uint8, 1 right, 2 left


def _ribs(
    grid: _Grid, anat: _Anatomy, cavity_sd: np.ndarray, zf: np.ndarray, edge: float, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (ri, rj) of the rib ring and the HU change (n_ring, len(zf)) that paints ribs over ``base``.

    Ribs are bands just outside the cavity (cross-section 11 mm tall, 8 mm thick, 26 mm apart) that
    descend 90 mm from their posterior to their anterior end, so an axial slice cuts each obliquely;
    ribs 1-7 continue as costal cartilage to the sternum and the floating ribs 11-12 stop laterally.
    """
    ring = (cavity_sd > -2.0) & (cavity_sd < 14.0)
    ri, rj = np.nonzero(ring)
    phi = np.arctan2(np.abs(grid.x[ri]), -grid.y[rj])[:, None]  # 0 posterior midline, pi anterior midline
    rib_period, drop = 26.0, 90.0
    z_first = anat.apex_z + 5.0 + anat.rib_phase - drop * (1 - np.cos(phi)) / 2
    u = (z_first - zf[None, :]) / rib_period  # (n_ring, n_z)
    k = np.rint(u)
    dz_rib = (u - k) * rib_period
    radial = cavity_sd[ri, rj][:, None] - 6.0
    rib_occ = _inside(np.sqrt((dz_rib / 5.5) ** 2 + (radial / 4.0) ** 2) * 4.0 - 4.0, edge)
    valid = (k >= 0) & (k < 12)
    bone = valid & (phi > 0.3) & (phi < np.where(k >= 10, 1.7, 2.6))
    cartilage = valid & (k < 7) & (phi >= 2.6) & (phi < 2.95)
    rib_hu = np.where(cartilage, TISSUE_HU["cartilage"], TISSUE_HU["rib"])
    delta = rib_occ * (bone | cartilage) * (rib_hu - base[ri, rj][:, None])
    return ri, rj, delta.astype(np.float32)


def _chest_wall(grid: _Grid, anat: _Anatomy, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Body, fat, muscle, ribs and mediastinal fat (HU) and the cavity-minus-mediastinum occupancy.

    The rib cage narrows towards the thoracic inlet; slices are grouped into levels of equal width, 2 mm
    apart at the widest, so each level is one 2D computation.
    """
    hu_tab = TISSUE_HU
    nx, ny, nzf = grid.fine_shape
    x2, y2 = grid.x[:, None], grid.y[None, :]
    zf = grid.zf
    hu = np.empty((nx, ny, nzf), dtype=np.float32)
    lung = np.empty((nx, ny, nzf), dtype=np.float32)
    level = np.rint((1.0 - anat.width_scale(zf)) * 64.0)
    for lev in np.unique(level):
        idx = np.nonzero(level == lev)[0]
        if idx[-1] - idx[0] + 1 == idx.size:  # contiguous: a view instead of a gather
            idx = slice(int(idx[0]), int(idx[-1]) + 1)
        cavity_sd = anat.cavity_sd(x2, y2, 1.0 - lev / 64.0)
        cavity = _inside(cavity_sd, edge)
        strip = _inside(np.abs(x2) - anat.mediastinum_halfwidth(y2), edge)
        base = np.full((nx, ny), hu_tab["air"], dtype=np.float32)
        _paint(base, _inside(anat.body_sd(x2, y2, False, 1.0 - lev / 64.0), edge), hu_tab["fat"])
        _paint(base, _inside(anat.body_sd(x2, y2, True, 1.0 - lev / 64.0), edge), hu_tab["soft_tissue"])
        _paint(base, strip * cavity, hu_tab["fat"])
        # lungs: inside the cavity, outside the strip and (below) outside organs dilated by 3 mm
        lung[:, :, idx] = np.minimum(cavity, 1.0 - strip)[:, :, None]
        ri, rj, rib_delta = _ribs(grid, anat, cavity_sd, zf[idx], edge, base)
        chunk = np.repeat(base[:, :, None], zf[idx].size, axis=2)
        chunk[ri, rj, :] += rib_delta
        hu[:, :, idx] = chunk
    return hu, lung


def _abdomen(grid: _Grid, anat: _Anatomy, hu: np.ndarray, lung: np.ndarray, edge: float) -> None:
    """Under the diaphragm domes: liver on the right, soft tissue elsewhere; no lung below the dome."""
    hu_tab = TISSUE_HU
    x2, y2, zf = grid.x[:, None], grid.y[None, :], grid.zf
    dia = anat.diaphragm_z(x2, y2)  # (X, Y)
    low = grid.index_range(2, -SCAN_LENGTH_MM, float(dia.max()) + grid.sub_thickness)
    above = _inside(dia[:, :, None] - zf[None, None, low], grid.sub_thickness)
    cavity = _inside(anat.cavity_sd(x2, y2), edge)[:, :, None]
    organ_hu = np.where(x2 > -40.0 * anat.sx, hu_tab["liver"], hu_tab["soft_tissue"]).astype(np.float32)
    _paint(hu[:, :, low], cavity * (1.0 - above), organ_hu[:, :, None])
    lung[:, :, low] *= above


def _mediastinum(grid: _Grid, anat: _Anatomy, hu: np.ndarray, lung: np.ndarray, edge: float) -> None:
    """Aorta, superior vena cava, oesophagus, heart in pericardial fat, trachea and main bronchi.

    Every organ is excluded from the lungs with a 3 mm (7 mm around the heart) margin of pleura and fat.
    """
    hu_tab = TISSUE_HU
    x2, y2, zf = grid.x[:, None], grid.y[None, :], grid.zf
    for cx, cy, r, z_lo, z_hi in anat.vertical_vessels():
        sx_, sy_ = grid.index_range(0, cx - r - 8, cx + r + 8), grid.index_range(1, cy - r - 8, cy + r + 8)
        sz = grid.index_range(2, z_lo, z_hi)
        sd = np.hypot(x2[sx_] - cx, y2[:, sy_] - cy) - r
        _paint(hu[sx_, sy_, sz], _inside(sd, edge)[:, :, None], hu_tab["blood"])
        lung[sx_, sy_, sz] *= 1.0 - _inside(sd - 3.0, edge)[:, :, None]

    # aortic arch and heart (3D, in bounding boxes) ----------------------------------------------------
    z3 = zf[None, None, :]
    for p0, p1 in anat.aortic_arch():
        lo, hi = np.minimum(p0, p1) - 20.0, np.maximum(p0, p1) + 20.0
        box = (grid.index_range(0, lo[0], hi[0]), grid.index_range(1, lo[1], hi[1]), grid.index_range(2, lo[2], hi[2]))
        sd = _capsule_sd(x2[box[0], :, None], y2[:, box[1], None], z3[:, :, box[2]], p0, p1, 13.0)
        _paint(hu[box], _inside(sd, edge), hu_tab["blood"])
        lung[box] *= 1.0 - _inside(sd - 3.0, edge)
    hc, hr = anat.heart_centre, anat.heart_radii
    box = tuple(grid.index_range(i, hc[i] - hr[i] - 10, hc[i] + hr[i] + 10) for i in range(3))
    hx, hy, hz = x2[box[0], :, None], y2[:, box[1], None], z3[:, :, box[2]]
    sd = _ellipsoid_sd(hx, hy, hz, hc, hr)
    _paint(hu[box], _inside(sd - 5.0, edge), hu_tab["fat"])  # pericardial fat
    _paint(hu[box], _inside(sd, edge), hu_tab["blood"])
    lung[box] *= 1.0 - _inside(sd - 7.0, edge)

    # trachea and main bronchi (air in a 2 mm soft-tissue wall) -----------------------------------------
    ty, r_tr = anat.trachea_y, 9.0
    sx_, sy_ = grid.index_range(0, -r_tr - 8, r_tr + 8), grid.index_range(1, ty - r_tr - 8, ty + r_tr + 8)
    sz = grid.index_range(2, anat.carina_z, SCAN_LENGTH_MM)
    sd = np.hypot(x2[sx_], y2[:, sy_] - ty)[:, :, None]
    _paint(hu[sx_, sy_, sz], _inside(sd - r_tr - 2.0, edge), hu_tab["soft_tissue"])
    _paint(hu[sx_, sy_, sz], _inside(sd - r_tr, edge), hu_tab["air"])
    for side in (1, -1):
        p0, p1, r = anat.main_bronchus(side)
        lo, hi = np.minimum(p0, p1) - 12.0, np.maximum(p0, p1) + 12.0
        box = (grid.index_range(0, lo[0], hi[0]), grid.index_range(1, lo[1], hi[1]), grid.index_range(2, lo[2], hi[2]))
        sd = _capsule_sd(x2[box[0], :, None], y2[:, box[1], None], z3[:, :, box[2]], p0, p1, r)
        _paint(hu[box], _inside(sd - 2.0, edge), hu_tab["soft_tissue"])
        _paint(hu[box], _inside(sd, edge), hu_tab["air"])


def _spine_and_sternum(grid: _Grid, anat: _Anatomy, hu: np.ndarray, lung: np.ndarray, edge: float) -> None:
    """Thoracic vertebrae (26 mm period with 5 mm discs) and the sternum (manubrium wider)."""
    hu_tab = TISSUE_HU
    x2, y2, zf = grid.x[:, None], grid.y[None, :], grid.zf
    # spine: vertebral bodies with discs, cortex, canal, lamina, spinous and transverse processes --------
    yv, rv = anat.vertebra_y, 17.0 * anat.sx
    period, disc = 26.0, 5.0
    phase = np.mod(zf - anat.vertebra_phase, period)  # (Zf,)
    in_disc = (phase < disc).astype(np.float32)
    sx_, sy_ = grid.index_range(0, -45, 45), grid.index_range(1, yv - 75, yv + rv + 8)
    xs, ys = x2[sx_], y2[:, sy_]
    r_body = np.hypot(xs, ys - yv)
    body_occ = _inside(r_body - rv, edge)[:, :, None]
    body_hu = (hu_tab["disc"] * in_disc + hu_tab["cancellous_bone"] * (1 - in_disc))[None, None, :]
    cortex = (_inside(r_body - rv, edge) - _inside(r_body - rv + 2.5, edge))[:, :, None] * (1 - in_disc)
    canal_y = yv - rv - 8.0
    r_canal = np.hypot(xs, ys - canal_y)
    arch = (_inside(r_canal - 13.0, edge) * (ys < canal_y + 3.0))  # lamina around the canal
    spinous = _inside(np.maximum(np.abs(xs) - 4.0, np.abs(ys - (canal_y - 24.0)) - 16.0), edge)
    transverse = _inside(np.maximum(np.abs(np.abs(xs) - 21.0) - 12.0, np.abs(ys - canal_y) - 5.0), edge)
    posterior = np.maximum(np.maximum(arch, spinous), transverse)[:, :, None]
    has_arch = ((phase > disc) & (phase < disc + 16.0)).astype(np.float32)[None, None, :]
    view = hu[sx_, sy_, :]
    _paint(view, body_occ, body_hu)
    _paint(view, cortex, hu_tab["cortical_bone"])
    _paint(view, posterior * has_arch, hu_tab["cortical_bone"])
    _paint(view, _inside(r_canal - 8.0, edge)[:, :, None], 15.0)  # spinal canal: cord and CSF
    lung[sx_, sy_, :] *= 1.0 - _inside(r_body - rv - 3.0, edge)[:, :, None]

    # sternum (manubrium wider) -----------------------------------------------------------------------
    sz = grid.index_range(2, -75.0 + anat.z_shift, 115.0 + anat.z_shift)
    sy_ = grid.index_range(1, anat.cavity_b - 5, anat.cavity_b + 22)
    sx_ = grid.index_range(0, -40, 40)
    half_w = np.where(zf[sz] > 80.0 + anat.z_shift, 25.0, 15.0)[None, None, :]
    y_st = y2[:, sy_, None] - (anat.cavity_b + 8.0)
    sd = np.maximum(np.abs(x2[sx_, :, None]) - half_w * anat.sx, np.abs(y_st) - 6.0)
    _paint(hu[sx_, sy_, sz], _inside(sd, edge), hu_tab["sternum"])


def _apices(grid: _Grid, anat: _Anatomy, lung: np.ndarray, edge: float) -> None:
    """Round the lung tops into apical domes (the lungs rise above the first ribs into the neck)."""
    x2, y2, zf = grid.x[:, None], grid.y[None, :], grid.zf
    high = grid.index_range(2, anat.apex_z - 110.0, SCAN_LENGTH_MM)
    scale = anat.apex_scale(zf[high])[None, None, :]
    for side in (1, -1):
        column = _ellipse_sd(
            x2[:, :, None], y2[:, :, None], side * 62.0 * anat.sx, 0.0, 85.0 * anat.sx * scale, 110.0 * anat.sy * scale
        )
        on_side = (x2 * side > 0)[:, :, None]
        lung[:, :, high] *= np.where(on_side, _inside(column, edge), 1.0)


def _render_body(grid: _Grid, anat: _Anatomy) -> _Rendered:
    """Paint everything but the lung content on the fine grid; return it with the lung occupancy and mask."""
    edge = float(max(grid.spacing[0], grid.spacing[1]))  # in-plane partial-volume ramp: one pixel
    hu, lung = _chest_wall(grid, anat, edge)
    _abdomen(grid, anat, hu, lung, edge)
    _mediastinum(grid, anat, hu, lung, edge)
    _spine_and_sternum(grid, anat, hu, lung, edge)
    _apices(grid, anat, lung, edge)
    lung_avg = grid.average_slices(lung)
    right = (grid.x > 0)[:, None, None]
    lung_mask = np.where(lung_avg >= 0.5, np.where(right, 1, 2), 0).astype(np.uint8)
    return _Rendered(hu=hu, lung=lung, lung_mask=lung_mask)


# ------------------------------------------------------------------------------------ bronchovascular tree
@dataclass(frozen=True)
class _Tubes:
    """Straight tube segments ``p0`` -> ``p1`` (M, 3) mm with radii (M,) mm."""

    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray

    def __len__(self) -> int:
        return int(self.radius.shape[0])


def _grow_tree(
    points: np.ndarray, root: np.ndarray, root_radius: float, fraction: float = 0.4, min_radius: float = 0.5
) -> _Tubes:
    """Grow a branching tree from ``root`` that fills the region sampled by ``points`` (N, 3).

    Volume-filling branching after Kitaoka et al. (1999) and Tawhai et al. (2000): a branch runs ``fraction``
    of the way towards the centroid of the points it supplies; those points are split in two by the plane
    through their centroid normal to their principal axis, and each half feeds one daughter. Radii follow
    Murray's law (Murray 1926) with flow proportional to the supplied volume: r_i = r (n_i / n)^(1/3), so
    branches thin from the hilum towards the periphery.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    radii: list[float] = []

    def add(p0: np.ndarray, p1: np.ndarray, r: float) -> None:
        starts.append(p0)
        ends.append(p1)
        radii.append(r)

    stack: list[tuple[np.ndarray, np.ndarray, float]] = [(root, points, root_radius)]
    while stack:
        start, pts, r = stack.pop()
        centroid = pts.mean(axis=0)
        if len(pts) == 1 or r < min_radius:  # terminal branch
            add(start, centroid, r)
            continue
        end = start + fraction * (centroid - start)
        add(start, end, r)
        offsets = pts - centroid
        axis = np.linalg.eigh(offsets.T @ offsets)[1][:, -1]
        proj = offsets @ axis
        first = proj > 0.0
        if first.all() or not first.any():
            first = proj > np.median(proj)
        if first.all() or not first.any():  # coincident points cannot be split
            add(end, centroid, r)
            continue
        for part in (pts[first], pts[~first]):
            stack.append((end, part, r * (len(part) / len(pts)) ** (1.0 / 3.0)))
    return _Tubes(np.asarray(starts), np.asarray(ends), np.asarray(radii))


def _airways_beside(vessels: _Tubes, lumen_ratio: float = 0.7, min_radius: float = 0.6) -> _Tubes:
    """Bronchi running beside the arteries of a bronchovascular tree (lumen ``lumen_ratio`` x artery)."""
    d = vessels.p1 - vessels.p0
    steep = np.abs(d[:, 2:3]) > 0.9 * np.linalg.norm(d, axis=1, keepdims=True)
    ref = np.where(steep, [[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]])  # any direction not along the branch
    normal = np.cross(d, ref)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    r_air = lumen_ratio * vessels.radius
    shift = normal * (vessels.radius + r_air + 0.5)[:, None]
    keep = r_air >= min_radius
    return _Tubes(vessels.p0[keep] + shift[keep], vessels.p1[keep] + shift[keep], r_air[keep])


def _render_tubes(grid: _Grid, tubes: _Tubes) -> np.ndarray:
    """Slice-averaged occupancy (X, Y, Z) of tubes, with partial volume, by splatting and Gaussian blurring.

    A tube of radius r is a line of mass pi r^2 per mm convolved with an isotropic Gaussian of
    sigma = r / sqrt(2): same cross-sectional area, peak occupancy 1 on the axis. Along Z the Gaussian is
    integrated exactly over each slice's thickness (difference of normal CDFs, the box slice-sensitivity
    profile); in plane the mass is splatted bilinearly and blurred with the Gaussian of its radius bin.
    The result is not clipped.
    """
    nx, ny, nz = grid.shape
    dx, dy, dz = grid.spacing
    out = np.zeros((nx, ny, nz), dtype=np.float32)
    if len(tubes) == 0:
        return out
    length = np.linalg.norm(tubes.p1 - tubes.p0, axis=1)
    sigma = tubes.radius / math.sqrt(2.0)
    step = np.clip(sigma, 0.5, 0.5 * min(dx, dy))
    n_pts = np.maximum(1, np.ceil(length / step)).astype(int)
    seg = np.repeat(np.arange(len(tubes)), n_pts)
    first = np.cumsum(n_pts) - n_pts
    frac = (np.arange(seg.size) - first[seg] + 0.5) / n_pts[seg]
    pts = tubes.p0[seg] + frac[:, None] * (tubes.p1[seg] - tubes.p0[seg])
    mass = (math.pi * tubes.radius**2 * length / n_pts)[seg] / (dx * dy)  # occupancy x mm along Z
    sig = sigma[seg]
    half = grid.thickness / 2.0
    z_c = grid.z.astype(np.float64)
    bins_px = np.array([0.0, 0.7, 1.4, 2.5])  # in-plane blur sigmas in pixels; 0: bilinear splat only
    log_bins = np.log(np.maximum(bins_px, 0.35))
    bin_of = np.abs(np.log(np.maximum(sig / dx, 1e-3))[:, None] - log_bins[None, :]).argmin(axis=1)
    for b, blur_px in enumerate(bins_px):
        sel = np.nonzero(bin_of == b)[0]
        if sel.size == 0:
            continue
        p, m, s = pts[sel], mass[sel], sig[sel, None]
        k = int(math.ceil((3.0 * float(s.max()) + half) / dz)) + 1
        near = np.searchsorted(z_c, p[:, 2])[:, None] + np.arange(-k, k + 1)[None, :]
        valid = (near >= 0) & (near < nz)
        near = np.clip(near, 0, nz - 1)
        zc = z_c[near]
        zw = (ndtr((zc + half - p[:, 2:3]) / s) - ndtr((zc - half - p[:, 2:3]) / s)) * valid / (2.0 * half)
        u = (p[:, 0] - float(grid.x[0])) / dx
        v = (p[:, 1] - float(grid.y[0])) / dy
        i0, j0 = np.floor(u).astype(int), np.floor(v).astype(int)
        fu, fv = u - i0, v - j0
        ii = np.stack([i0, i0 + 1, i0, i0 + 1])  # the four bilinear neighbours (4, P)
        jj = np.stack([j0, j0, j0 + 1, j0 + 1])
        wxy = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]) * m
        wxy *= (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
        flat = ((np.clip(ii, 0, nx - 1) * ny + np.clip(jj, 0, ny - 1)) * nz)[:, :, None] + near[None]
        weights = wxy[:, :, None] * zw[None]
        layer = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=nx * ny * nz)
        layer = layer.reshape(nx, ny, nz).astype(np.float32)
        if blur_px > 0:
            layer = ndimage.gaussian_filter(layer, sigma=(blur_px, blur_px * dx / dy, 0.0), mode="constant")
        out += layer
    return out


# ------------------------------------------------------------------------------------------------- lesions
@dataclass(frozen=True)
class _Blob:
    """One lesion: a rounded, irregular-margined ellipsoid in one lung (optionally one lobe)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float  # in-plane rotation (rad)
    side: int  # +1 right lung, -1 left lung
    core: float  # consolidation inside rho < core (0: pure ground-glass, >= 1: all consolidation)
    lobe: int | None  # clip to this lobe (lobar pneumonia)
    waves: tuple[tuple[float, float, float, float], ...]  # (kx, ky, kz, phase) of the margin modulation


def _random_blob(
    rng: np.random.Generator,
    centre: Sequence[float],
    radius_xy: tuple[float, float],
    radius_z: float,
    side: int,
    core: float,
    lobe: int | None,
) -> _Blob:
    a, b = rng.uniform(*radius_xy), rng.uniform(*radius_xy)
    mean_r = (a + b + radius_z) / 3.0
    waves = []
    for _ in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * 2.0 * math.pi / (rng.uniform(0.8, 1.6) * mean_r)
        waves.append((float(k[0]), float(k[1]), float(k[2]), float(rng.uniform(0, 2 * math.pi))))
    return _Blob(
        centre=tuple(float(c) for c in centre),  # type: ignore[arg-type]
        radii=(float(a), float(b), float(radius_z)),
        angle=float(rng.uniform(0, math.pi)),
        side=side,
        core=core,
        lobe=lobe,
        waves=tuple(waves),
    )


@dataclass
class _LesionFields:
    """Fine-grid lesion fields: ground-glass and consolidation fractions, crazy-paving line weight."""

    ggo: np.ndarray
    consolidation: np.ndarray


def _render_blobs(
    grid: _Grid, anat: _Anatomy, blobs: Sequence[_Blob], z_window: tuple[float, float], fields: _LesionFields
) -> None:
    """Add ``blobs`` to ``fields`` (union by maximum), only on sub-slices inside ``z_window`` (mm)."""
    edge_ggo, edge_cons = 3.0, 1.5
    for blob in blobs:
        c, r = blob.centre, blob.radii
        reach = 1.35 * max(r[0], r[1])
        zlo, zhi = max(c[2] - 1.35 * r[2], z_window[0]), min(c[2] + 1.35 * r[2], z_window[1])
        box = (
            grid.index_range(0, c[0] - reach, c[0] + reach),
            grid.index_range(1, c[1] - reach, c[1] + reach),
            grid.index_range(2, zlo, zhi),
        )
        if any(s.stop <= s.start for s in box):
            continue
        x = grid.x[box[0], None, None] - c[0]
        y = grid.y[None, box[1], None] - c[1]
        zf = grid.zf[None, None, box[2]]
        z = zf - c[2]
        ca, sa = math.cos(blob.angle), math.sin(blob.angle)
        u, v, w = (ca * x + sa * y) / r[0], (-sa * x + ca * y) / r[1], z / r[2]
        rho = np.sqrt(u * u + v * v + w * w)
        margin = sum(np.sin(kx * x + ky * y + kz * z + ph) for kx, ky, kz, ph in blob.waves) / len(blob.waves)
        rho = rho * (1.0 + 0.15 * margin)
        r_eff = (r[0] * r[1] * r[2]) ** (1.0 / 3.0)
        keep = ((grid.x[box[0]] * blob.side) > 0)[:, None, None] * ((zf >= z_window[0]) & (zf <= z_window[1]))
        if blob.lobe is not None:
            x_abs, y_abs = grid.x[box[0], None, None], grid.y[None, box[1], None]
            keep = keep * anat.lobe_occupancy(blob.lobe, x_abs, y_abs, zf, 1.5)
        if blob.core < 1.0:
            alpha = _inside((rho - 1.0) * r_eff, edge_ggo) * keep
            np.maximum(fields.ggo[box], alpha, out=fields.ggo[box])
        if blob.core > 0.0:
            alpha = _inside((rho - min(blob.core, 1.0)) * r_eff, edge_cons) * keep
            np.maximum(fields.consolidation[box], alpha, out=fields.consolidation[box])


def _crazy_paving(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Reticular line network at points (x, y, z) mm: nodal lines of six random plane waves.

    Crazy-paving is ground-glass with superimposed interlobular septal thickening (Hansell et al. 2008);
    septa bound secondary pulmonary lobules of 10-25 mm, so the waves have a 24 mm wavelength.
    """
    total = np.zeros(x.shape, dtype=np.float32)
    for _ in range(6):
        d = rng.normal(size=3)
        d *= 2.0 * math.pi / 24.0 / np.linalg.norm(d)
        total += np.cos(d[0] * x + d[1] * y + d[2] * z + rng.uniform(0, 2 * math.pi)).astype(np.float32)
    return np.clip(1.0 - np.abs(total) / 0.5, 0.0, 1.0)


@dataclass
class _LesionPlan:
    """Where and what the disease is; ``run`` is the planned (start, stop) slice range."""

    run: tuple[int, int] | None = None
    blobs: list[_Blob] = field(default_factory=list)
    ggo_delta_hu: float | None = None
    consolidation_hu: float | None = None
    crazy_paving: bool = False
    lobe: int | None = None


_COVID_GGO_HU = {"mild": (-700.0, -600.0), "moderate": (-650.0, -450.0), "severe": (-600.0, -350.0)}
_COVID_RADIUS = {"mild": (4.0, 12.0), "moderate": (6.0, 20.0), "severe": (10.0, 25.0)}
_COVID_SATELLITES = {"mild": (1, 2), "moderate": (3, 6), "severe": (8, 14)}
_PNEUMONIA_SATELLITES = {"mild": (1, 2), "moderate": (3, 5), "severe": (5, 8)}


class _Planner:
    """Places lesion blobs on the output grid of one case (run of slices, lungs, lobes, depth)."""

    def __init__(self, rng: np.random.Generator, grid: _Grid, anat: _Anatomy, lung_mask: np.ndarray) -> None:
        self.rng, self.grid, self.anat, self.lung_mask = rng, grid, anat, lung_mask
        self.x2, self.y2 = grid.x[:, None], grid.y[None, :]

    def depth(self, k: int) -> np.ndarray:
        """Distance (mm) inside the chest wall on slice ``k``: small for subpleural (peripheral) lung."""
        return -self.anat.cavity_sd(self.x2, self.y2, float(self.anat.width_scale(self.grid.z[k])))

    def lobe_slice(self, k: int) -> np.ndarray:
        return self.anat.lobe(self.x2, self.y2, np.float32(self.grid.z[k]))

    def allowed_range(self, areas: np.ndarray) -> tuple[int, int]:
        """First and last slice (inclusive) where every row of ``areas`` (R, Z) is >= 25% of its maximum."""
        ok = np.all(areas >= 0.25 * np.maximum(areas.max(axis=1, keepdims=True), 1), axis=0) & np.all(areas > 0, 0)
        idx = np.nonzero(ok)[0]
        if idx.size == 0:
            raise InputError(f"grid {self.grid.shape} leaves no slice with enough lung to place lesions.")
        return int(idx[0]), int(idx[-1])

    def run_length(self, severity: str) -> int:
        """Number of lesion slices: a fraction of the slices drawn from the severity's range."""
        return max(1, int(round(self.rng.uniform(*SEVERITY_SLICE_FRACTION[severity]) * self.grid.shape[2])))

    def run(self, n: int, lo: int, hi: int, low_bias: bool) -> tuple[int, int]:
        """A run of ``n`` slices inside [lo, hi], biased towards the lung bases when ``low_bias``."""
        n = min(n, hi - lo + 1)
        room = hi - lo + 1 - n
        shift = self.rng.beta(1.2, 3.5) if low_bias else self.rng.uniform()
        start = lo + int(round(shift * room))
        return start, start + n

    def window(self, run: tuple[int, int]) -> tuple[float, float]:
        dz = self.grid.spacing[2]
        return float(self.grid.z[run[0]] - dz / 2), float(self.grid.z[run[1] - 1] + dz / 2)

    def pick(self, k: int, side: int, lobe: int | None, peripheral: bool) -> tuple[float, float] | None:
        """An in-plane lesion centre on slice ``k`` in the lung of ``side`` (and ``lobe``), or None."""
        label = 1 if side > 0 else 2
        weights = (self.lung_mask[:, :, k] == label).astype(np.float64)
        lobes = self.lobe_slice(k)
        if lobe is not None:
            weights *= lobes == lobe
        if peripheral:  # subpleural, dependent and lower-lobe predominant
            depth = self.depth(k)
            prior = np.exp(-depth / 8.0) * (depth < 30.0) * np.where(np.isin(lobes, (3, 5)), 3.0, 1.0)
            prior = prior * np.where(self.y2 < 0, 2.0, 1.0)
            weights = weights * prior if np.any(weights * prior > 0) else weights
        total = weights.sum()
        if total <= 0:
            return None
        flat = self.rng.choice(weights.size, p=(weights / total).ravel())
        i, j = np.unravel_index(flat, weights.shape)
        dx, dy = self.grid.spacing[:2]
        jitter = self.rng.uniform(-0.5, 0.5, size=2)
        return float(self.grid.x[i] + jitter[0] * dx), float(self.grid.y[j] + jitter[1] * dy)

    def slice_of(self, z: float) -> int:
        return int(np.argmin(np.abs(self.grid.z - z)))

    def blob_at(
        self,
        z: float,
        rz: float,
        side: int,
        radius_xy: tuple[float, float],
        core: float,
        lobe: int | None,
        peripheral: bool,
    ) -> _Blob | None:
        xy = self.pick(self.slice_of(z), side, lobe, peripheral)
        if xy is None:
            return None
        return _random_blob(self.rng, (xy[0], xy[1], z), radius_xy, rz, side, core, lobe)

    def lobar_blob(self, z: float, rz: float, lobe: int, cap: float) -> _Blob | None:
        """A consolidation blob centred on the lobe's cross-section at ``z``, filling 55-85% of its extent."""
        k = self.slice_of(z)
        ii, jj = np.nonzero((self.lung_mask[:, :, k] > 0) & (self.lobe_slice(k) == lobe))
        if ii.size < 4:
            return None
        xs, ys = self.grid.x[ii], self.grid.y[jj]
        half = np.sqrt(3.0) * np.array([xs.std(), ys.std()])  # half-width of a uniform spread
        radii = np.minimum(self.rng.uniform(0.55, 0.85, size=2) * half, cap)
        radii = np.maximum(radii, 6.0)
        centre = (float(xs.mean() + self.rng.normal(0, 5.0)), float(ys.mean() + self.rng.normal(0, 5.0)), z)
        blob = _random_blob(self.rng, centre, (1.0, 1.0), rz, 1 if lobe <= 3 else -1, 1.0, lobe)
        return _Blob(centre, (float(radii[0]), float(radii[1]), rz), 0.0, blob.side, 1.0, lobe, blob.waves)

    def chain(self, window: tuple[float, float], spacing_mm: float = 30.0) -> list[tuple[float, float]]:
        """Centres and z semi-axes of blobs strung along the run so that every slice is covered."""
        length = window[1] - window[0]
        count = max(1, math.ceil(length / spacing_mm))
        spacing = length / count
        rz = max(0.75 * spacing, 3.0)  # overlapping z extents: no slice of the run is left out
        return [(window[0] + (j + 0.5) * spacing, rz * self.rng.uniform(1.0, 1.2)) for j in range(count)]

    def covid(self, severity: str) -> _LesionPlan:
        rng = self.rng
        areas = np.stack([(self.lung_mask == lab).sum(axis=(0, 1)) for lab in (1, 2)])
        run = self.run(self.run_length(severity), *self.allowed_range(areas), low_bias=True)
        window = self.window(run)
        radius = _COVID_RADIUS[severity]
        severe = severity == "severe"
        plan = _LesionPlan(
            run=run,
            ggo_delta_hu=float(rng.uniform(*_COVID_GGO_HU[severity]) - self.anat.lung_hu),
            consolidation_hu=float(rng.uniform(-100.0, 20.0)) if severe else None,
            crazy_paving=bool(severe and rng.uniform() < 0.6),
        )
        side = int(rng.choice([1, -1]))
        for z, rz in self.chain(window):
            core = float(rng.uniform(0.3, 0.6)) if severe and rng.uniform() < 0.5 else 0.0
            blob = self.blob_at(z, rz, side, radius, core, None, peripheral=True)
            if blob is not None:
                plan.blobs.append(blob)
            side = -side
        lo, hi = _COVID_SATELLITES[severity]
        side = -plan.blobs[0].side if plan.blobs else side
        for _ in range(int(rng.integers(lo, hi + 1))):
            core = float(rng.uniform(0.3, 0.6)) if severe and rng.uniform() < 0.5 else 0.0
            rz = rng.uniform(0.5, 1.0) * radius[1]
            blob = self.blob_at(rng.uniform(*window), rz, side, radius, core, None, peripheral=True)
            if blob is not None:
                plan.blobs.append(blob)
            side = -side
        return plan

    def pneumonia(self, severity: str) -> _LesionPlan:
        rng = self.rng
        nz = self.grid.shape[2]
        lobes = np.zeros((len(LOBES), nz))
        for k in range(nz):
            lobe_k = self.lobe_slice(k)
            in_lung = self.lung_mask[:, :, k] > 0
            lobes[:, k] = [np.count_nonzero(in_lung & (lobe_k == code)) for code in LOBES]
        ranges = {}
        for code in LOBES:
            try:
                ranges[code] = self.allowed_range(lobes[code - 1 : code])
            except InputError:
                continue
        if not ranges:
            raise InputError(f"grid {self.grid.shape} leaves no lobe large enough to place a consolidation.")
        n = self.run_length(severity)
        fits = [c for c, (lo, hi) in ranges.items() if hi - lo + 1 >= n]
        if not fits:  # no lobe this tall on this grid: take the tallest
            fits = [max(ranges, key=lambda c: ranges[c][1] - ranges[c][0])]
        prior = np.array([_LOBE_PRIOR[c] for c in fits])
        lobe = int(rng.choice(fits, p=prior / prior.sum()))
        run = self.run(n, *ranges[lobe], low_bias=False)
        window = self.window(run)
        side = 1 if lobe <= 3 else -1
        plan = _LesionPlan(run=run, consolidation_hu=float(rng.uniform(-60.0, 60.0)), lobe=lobe)
        cap = 25.0 if severity == "mild" else 60.0  # a mild consolidation stays within 50 mm
        for z, rz in self.chain(window, 20.0):
            blob = self.lobar_blob(z, rz, lobe, cap)
            if blob is not None:
                plan.blobs.append(blob)
        lo, hi = _PNEUMONIA_SATELLITES[severity]
        for _ in range(int(rng.integers(lo, hi + 1))):
            blob = self.blob_at(rng.uniform(*window), rng.uniform(8.0, 20.0), side, (10.0, 25.0), 1.0, lobe, False)
            if blob is not None:
                plan.blobs.append(blob)
        return plan

    def repair(self, plan: _LesionPlan, covered: np.ndarray) -> list[_Blob]:
        """Extra small blobs for run slices the lesions missed (e.g. where the lung narrows)."""
        assert plan.run is not None
        extra = []
        sides = [1 if plan.lobe <= 3 else -1] if plan.lobe is not None else [1, -1]
        for k in range(*plan.run):
            if covered[k]:
                continue
            rz = max(0.75 * self.grid.spacing[2], 3.0)
            core = 1.0 if plan.lobe is not None else 0.0
            side = sides[k % len(sides)]
            blob = self.blob_at(float(self.grid.z[k]), rz, side, (6.0, 10.0), core, plan.lobe, plan.lobe is None)
            if blob is not None:
                extra.append(blob)
        return extra


# --------------------------------------------------------------------------------------------- case assembly
def _resolve_label(label: int | str) -> tuple[int, str]:
    if isinstance(label, str):
        if label not in CLASS_NAMES:
            raise InputError(f"unknown CT class name '{label}'; expected one of {CLASS_NAMES}.")
        return CLASS_NAMES.index(label), label
    is_index = isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_))
    if not is_index or not 0 <= label < len(CLASS_NAMES):
        raise InputError(f"CT label must be a class index in [0, {len(CLASS_NAMES)}) or a name, got {label!r}.")
    return int(label), CLASS_NAMES[int(label)]


def _resolve_centre(centre: str | CTCentre) -> CTCentre:
    if isinstance(centre, CTCentre):
        return centre
    if centre not in CENTRES:
        raise InputError(f"unknown CT centre '{centre}'; expected one of {tuple(CENTRES)} or a CTCentre.")
    return CENTRES[centre]


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) != s for s in shape):
        raise InputError(f"CT shape must be three integers (X, Y, Z), got {tuple(shape)}.")
    nx, ny, nz = (int(s) for s in shape)
    if min(nx, ny) < 32 or nz < 8:
        raise InputError(f"CT shape must be at least (32, 32, 8), got {(nx, ny, nz)}.")
    return nx, ny, nz


def _unit_gaussian_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: Sequence[float]) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation (white noise blurred, rescaled exactly).

    The rescaling uses the filter's own impulse response: the variance of filtered white noise is the sum
    of the squared kernel weights (product over the separable axes).
    """
    field_ = rng.standard_normal(shape, dtype=np.float32)
    if not any(s > 0 for s in sigma_px):
        return field_
    field_ = ndimage.gaussian_filter(field_, sigma=sigma_px, mode="wrap")
    gain = 1.0
    for s in sigma_px:
        if s > 0:
            radius = int(4.0 * s + 0.5)
            delta = np.zeros(2 * radius + 1)
            delta[radius] = 1.0
            gain *= float(np.sum(ndimage.gaussian_filter1d(delta, s, mode="constant") ** 2))
    return field_ / np.float32(math.sqrt(gain))


def _bronchovascular(
    rng: np.random.Generator, grid: _Grid, anat: _Anatomy, lung_mask: np.ndarray
) -> tuple[_Tubes, _Tubes]:
    """Artery and airway trees of both lungs, grown from the hila into points sampled in each lung."""
    vessels: list[_Tubes] = []
    spacing = np.asarray(grid.spacing)
    origin = np.array([grid.x[0], grid.y[0], grid.z[0]], dtype=float)
    for side, label in ((1, 1), (-1, 2)):
        idx = np.argwhere(lung_mask == label)
        if len(idx) < 8:
            continue
        pick = np.sort(rng.choice(len(idx), size=min(400, len(idx)), replace=False))
        pts = origin + (idx[pick] + rng.uniform(-0.5, 0.5, size=(len(pick), 3))) * spacing
        vessels.append(_grow_tree(pts, np.asarray(anat.hilum(side), dtype=float), root_radius=6.5))
    if not vessels:
        empty = _Tubes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
        return empty, empty
    tree = _Tubes(*(np.concatenate([getattr(v, f) for v in vessels]) for f in ("p0", "p1", "radius")))
    return tree, _airways_beside(tree)


def _lesions(
    rng: np.random.Generator, grid: _Grid, anat: _Anatomy, rendered: _Rendered, class_name: str, severity: str
) -> tuple[_LesionPlan, _LesionFields | None]:
    if class_name == "normal":
        return _LesionPlan(), None
    planner = _Planner(rng, grid, anat, rendered.lung_mask)
    plan = planner.covid(severity) if class_name == "covid19" else planner.pneumonia(severity)
    assert plan.run is not None
    window = planner.window(plan.run)
    fields = _LesionFields(np.zeros(grid.fine_shape, np.float32), np.zeros(grid.fine_shape, np.float32))
    new = list(plan.blobs)
    for _ in range(3):  # render, then patch any run slice the blobs missed
        _render_blobs(grid, anat, new, window, fields)
        covered = grid.average_slices(np.maximum(fields.ggo, fields.consolidation) * rendered.lung) >= 0.5
        covered = covered.reshape(-1, grid.shape[2]).any(axis=0)
        new = planner.repair(plan, covered)
        if not new:
            break
        plan.blobs.extend(new)
    return plan, fields


def _compose_lungs(
    grid: _Grid,
    anat: _Anatomy,
    rendered: _Rendered,
    texture: np.ndarray,
    vessels: np.ndarray,
    airways: np.ndarray,
    plan: _LesionPlan,
    fields: _LesionFields | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fill the lungs (fine grid): parenchyma, ground-glass, vessels, consolidation, airway lumen.

    Ground-glass raises the density of the parenchyma and leaves vessel margins visible; consolidation
    replaces parenchyma and vessels but spares the air-filled bronchi (air bronchogram), following the
    Fleischner Society definitions (Hansell et al. 2008).
    """
    nx, ny, nz = grid.shape
    fine4 = (nx, ny, nz, grid.n_sub)  # sub-slices on the last axis; output-grid fields broadcast over it
    content = np.empty(fine4, dtype=np.float32)
    content[...] = anat.parenchyma_hu(grid.y)[None, :, None, None] + texture[..., None]
    content = content.reshape(grid.fine_shape)
    if fields is not None and plan.ggo_delta_hu is not None:
        content += np.float32(plan.ggo_delta_hu) * fields.ggo
        if plan.crazy_paving:
            i, j, k = np.nonzero(fields.ggo)
            lines = _crazy_paving(rng, grid.x[i], grid.y[j], grid.zf[k])
            content[i, j, k] += np.float32(250.0) * fields.ggo[i, j, k] * lines
    _paint(content.reshape(fine4), np.minimum(vessels, 1.0)[..., None], TISSUE_HU["blood"])
    if fields is not None and plan.consolidation_hu is not None:
        _paint(content, fields.consolidation, np.float32(plan.consolidation_hu))
    _paint(content.reshape(fine4), np.minimum(airways, 1.0)[..., None], TISSUE_HU["air"])
    hu = rendered.hu
    _paint(hu, rendered.lung, content)
    return hu


def generate_ct_case(
    seed: int,
    label: int | str,
    severity: str = "moderate",
    centre: str | CTCentre = "A",
    shape: tuple[int, int, int] = (128, 128, 64),
    *,
    add_noise: bool = True,
) -> CTCase:
    """Generate one synthetic chest CT case.

    The patient's anatomy depends on ``seed`` only, so the same seed with another label, severity or
    centre gives the same patient with another disease or scanner; noise has its own stream, so
    ``add_noise=False`` gives the noise-free version of the same scan.

    Parameters
    ----------
    seed
        Non-negative integer; the same arguments give a byte-identical case.
    label
        Class index into :data:`CLASS_NAMES` or the class name.
    severity
        ``"mild"``, ``"moderate"`` or ``"severe"``: lesions on 3-10%, 15-30% or 35-55% of the slices.
        Ignored (``"none"``) for normal cases.
    centre
        Name in :data:`CENTRES` or a :class:`CTCentre`.
    shape
        Output grid (X, Y, Z), at least (32, 32, 8); the field of view and the 320 mm scan length are
        fixed, so the shape sets the spacing.
    add_noise
        Add the centre's image noise (after reconstruction blur and calibration).

    Returns
    -------
    CTCase
        Image float32 (X, Y, Z) in calibrated HU, masks uint8, RAS affine, labels and metadata.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    label_index, class_name = _resolve_label(label)
    if class_name == "normal":
        severity = "none"
    elif severity not in SEVERITIES:
        raise InputError(f"severity of a '{class_name}' case must be one of {SEVERITIES}, got {severity!r}.")
    scanner = _resolve_centre(centre)
    shape = _check_shape(shape)
    seed = int(seed)
    grid = _Grid.create(shape, scanner)
    anat = _Anatomy.sample(np.random.default_rng([seed, 0]))

    rendered = _render_body(grid, anat)
    vessel_tree, airway_tree = _bronchovascular(np.random.default_rng([seed, 1]), grid, anat, rendered.lung_mask)
    vessels = _render_tubes(grid, vessel_tree)
    airways = _render_tubes(grid, airway_tree)
    texture = np.float32(15.0) * _unit_gaussian_field(
        np.random.default_rng([seed, 2]), shape, [2.5 / s for s in grid.spacing]
    )
    severity_code = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
    lesion_rng = np.random.default_rng([seed, 3, label_index, severity_code])
    plan, fields = _lesions(lesion_rng, grid, anat, rendered, class_name, severity)
    fine = _compose_lungs(grid, anat, rendered, texture, vessels, airways, plan, fields, lesion_rng)

    lesion_mask = np.zeros(shape, dtype=np.uint8)
    if fields is not None:
        lesion_mask[grid.average_slices(fields.ggo * rendered.lung) >= 0.5] = 1
        lesion_mask[grid.average_slices(fields.consolidation * rendered.lung) >= 0.5] = 2
    image = grid.average_slices(fine)
    dx, dy, _ = grid.spacing
    if scanner.kernel_sigma_mm > 0:
        kernel_px = (scanner.kernel_sigma_mm / dx, scanner.kernel_sigma_mm / dy, 0.0)
        image = ndimage.gaussian_filter(image, sigma=kernel_px, mode="nearest")
    image = np.float32(scanner.hu_scale) * image + np.float32(scanner.hu_offset)
    if add_noise and scanner.noise_sigma_hu > 0:
        kernel_px = [scanner.kernel_sigma_mm / dx, scanner.kernel_sigma_mm / dy, 0.0]
        noise = _unit_gaussian_field(np.random.default_rng([seed, 4]), shape, kernel_px)
        image = image + np.float32(scanner.noise_sigma_hu) * noise
    image = np.clip(np.rint(image), *_HU_RANGE).astype(np.float32)

    slice_labels = (lesion_mask.reshape(-1, shape[2]).max(axis=0) > 0)
    hit = np.nonzero(slice_labels)[0]
    lesion_slices = (int(hit[0]), int(hit[-1]) + 1) if hit.size else None
    lungs_involved = sorted({("right", "left")[b.side < 0] for b in plan.blobs})
    delta = plan.ggo_delta_hu
    meta: dict[str, Any] = {
        "seed": seed,
        "shape": list(shape),
        "centre": asdict(scanner),
        "spacing_mm": [float(s) for s in grid.spacing],
        "pixel_spacing_mm": [float(grid.spacing[0]), float(grid.spacing[1])],
        "slice_spacing_mm": float(grid.spacing[2]),
        "slice_thickness_mm": scanner.slice_thickness_mm,
        "sub_slices": grid.n_sub,
        "noise_added": bool(add_noise and scanner.noise_sigma_hu > 0),
        "parenchyma_hu": float(anat.lung_hu),
        "gravity_gradient_hu": float(anat.gradient_hu),
        "anatomy": {k: float(v) for k, v in asdict(anat).items()},
        "vessel_segments": len(vessel_tree),
        "lesion_run_planned": list(plan.run) if plan.run else None,
        "lesion_count": len(plan.blobs),
        "lungs_involved": lungs_involved,
        "lobe": LOBES[plan.lobe] if plan.lobe else None,
        "ggo_delta_hu": float(delta) if delta is not None else None,
        "ggo_hu": float(anat.lung_hu + delta) if delta is not None else None,
        "consolidation_hu": float(plan.consolidation_hu) if plan.consolidation_hu is not None else None,
        "crazy_paving": plan.crazy_paving,
        "ggo_cnr": (
            float(delta * scanner.hu_scale / scanner.noise_sigma_hu)
            if delta is not None and scanner.noise_sigma_hu > 0
            else None
        ),
    }
    return CTCase(
        image=image,
        lesion_mask=lesion_mask,
        lung_mask=rendered.lung_mask,
        affine=spacing_affine(grid.spacing, grid.origin),
        label=label_index,
        class_name=class_name,
        severity=severity,
        centre=scanner.name,
        lesion_slices=lesion_slices,
        meta=meta,
    )


# -------------------------------------------------------------------------------------------------- dataset
DEFAULT_SEVERITY_MIX: Mapping[str, float] = MappingProxyType({"mild": 0.4, "moderate": 0.35, "severe": 0.25})
"""Severity proportions of abnormal cases in :func:`generate_ct_dataset` (mild cases are the hard ones)."""


def _balanced(rng: np.random.Generator, count: int, options: Sequence[Any]) -> list[Any]:
    """``count`` items cycling through ``options`` (equal shares up to one), in random order."""
    items = [options[i % len(options)] for i in range(count)]
    return [items[i] for i in rng.permutation(count)]


def generate_ct_dataset(
    output_dir: str | Path,
    num_cases: int = 60,
    seed: int = 0,
    centres: Sequence[str] = ("A", "B"),
    shape: tuple[int, int, int] = (128, 128, 64),
    class_names: Sequence[str] = CLASS_NAMES,
    severities: Mapping[str, float] | None = None,
    fractions: Mapping[str, float] | None = None,
) -> Path:
    """Write a synthetic chest CT dataset and its MONAI datalist; return the datalist path.

    Layout (paths in the datalist are relative to ``output_dir``)::

        images/ct_XXXX.nii.gz         int16 HU (CT storage convention), RAS affine with the voxel spacing
        labels/ct_XXXX_lesion.nii.gz  uint8, 0 background, 1 ground-glass, 2 consolidation
        labels/ct_XXXX_lung.nii.gz    uint8, 0 background, 1 right lung, 2 left lung
        datalist.json                 "training" / "validation" / "test" lists and a "metadata" block

    Classes are balanced (equal shares up to one case), every class is spread evenly over the centres (so
    the centre does not give the class away), and abnormal cases draw their severity from ``severities``.
    Each entry holds ``image``, ``lesion_mask``, ``lung_mask``, ``label`` (index into ``class_names``),
    ``class_name``, ``covid`` (0/1), ``patient_id``, ``seed`` (regenerates the case with
    :func:`generate_ct_case`), ``centre``, ``severity``, ``lesion_slices`` (``[start, stop]`` or null) and
    ``slice_labels`` (0/1 per axial slice). Splits are patient-level
    (:func:`medxai.data.splits.patient_split`, stratified by label). The same arguments give
    byte-identical files.

    Parameters
    ----------
    output_dir
        Folder to write into (created if needed).
    num_cases
        Number of cases (one per synthetic patient).
    seed
        Seed of the whole dataset (case seeds, labels, centres, severities and the split).
    centres
        Names in :data:`CENTRES`.
    shape
        Output grid (X, Y, Z) of every case.
    class_names
        Subset of :data:`CLASS_NAMES`, e.g. ``("normal", "covid19")`` for a binary task.
    severities
        Severity name -> proportion among abnormal cases; default :data:`DEFAULT_SEVERITY_MIX`.
    fractions
        Split name -> fraction of patients; default 70/10/20 training/validation/test.
    """
    class_names = tuple(class_names)
    unknown = [c for c in class_names if c not in CLASS_NAMES]
    if not class_names or unknown or len(set(class_names)) != len(class_names):
        raise InputError(f"class_names must be distinct names from {CLASS_NAMES}, got {class_names}.")
    missing = [c for c in centres if c not in CENTRES]
    if not centres or missing:
        raise InputError(f"unknown CT centre(s) {missing or list(centres)}; expected names from {tuple(CENTRES)}.")
    mix = dict(DEFAULT_SEVERITY_MIX if severities is None else severities)
    if not mix or any(k not in SEVERITIES for k in mix) or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise InputError(f"severities must map names from {SEVERITIES} to non-negative weights, got {mix}.")
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise InputError(f"num_cases must be a positive integer, got {num_cases!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    shape = _check_shape(shape)
    out = Path(output_dir)
    rng = np.random.default_rng([int(seed), 7])
    labels = _balanced(rng, int(num_cases), list(range(len(class_names))))
    centre_of: list[str] = [""] * int(num_cases)
    for label in range(len(class_names)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        for i, centre in zip(members, _balanced(rng, len(members), list(centres))):
            centre_of[i] = centre
    names, weights = list(mix), np.array(list(mix.values()), dtype=float)
    case_seeds = np.random.SeedSequence([int(seed), 11]).generate_state(int(num_cases), dtype=np.uint32)

    records: list[dict[str, Any]] = []
    for i in range(int(num_cases)):
        class_name = class_names[labels[i]]
        severity = "none" if class_name == "normal" else str(rng.choice(names, p=weights / weights.sum()))
        case = generate_ct_case(int(case_seeds[i]), class_name, severity, centre_of[i], shape)
        stem = f"ct_{i:04d}"
        save_nifti(case.image, case.affine, out / "images" / f"{stem}.nii.gz", dtype=np.int16)
        save_nifti(case.lesion_mask, case.affine, out / "labels" / f"{stem}_lesion.nii.gz", dtype=np.uint8)
        save_nifti(case.lung_mask, case.affine, out / "labels" / f"{stem}_lung.nii.gz", dtype=np.uint8)
        records.append(
            {
                "image": f"images/{stem}.nii.gz",
                "lesion_mask": f"labels/{stem}_lesion.nii.gz",
                "lung_mask": f"labels/{stem}_lung.nii.gz",
                "label": int(labels[i]),
                "class_name": class_name,
                "covid": int(class_name == "covid19"),
                "patient_id": f"synthetic-ct-{i:04d}",
                "seed": int(case_seeds[i]),
                "centre": case.centre,
                "severity": case.severity,
                "lesion_slices": list(case.lesion_slices) if case.lesion_slices else None,
                "slice_labels": [int(v) for v in case.slice_labels],
            }
        )
    splits = patient_split(records, fractions, label_key="label", patient_key="patient_id", seed=int(seed))
    metadata = {
        "generator": "medxai.data.synthetic.ct.generate_ct_dataset",
        "seed": int(seed),
        "num_cases": int(num_cases),
        "shape": list(shape),
        "class_names": list(class_names),
        "severity_mix": mix,
        "centres": {name: asdict(CENTRES[name]) for name in dict.fromkeys(centres)},
        "image_storage": "int16 Hounsfield units after each centre's calibration",
        "lesion_mask_values": {"0": "background", "1": "ground-glass", "2": "consolidation"},
        "lung_mask_values": {"0": "background", "1": "right lung", "2": "left lung"},
        "orientation": "RAS, axes (X, Y, Z), Z is the axial slice index",
    }
    return write_datalist(splits, out / "datalist.json", metadata)
