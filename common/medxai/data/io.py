"""Reading what hospitals bring: DICOM series folders, single DICOM files, NIfTI, PNG/JPEG (and stacks of them).

A thin layer over MONAI's :class:`monai.transforms.LoadImage` that picks the reader from what the path is,
so a bundle config needs no per-format settings:

==========================================  ==================  ==============================================
path                                        reader              returned (``ensure_channel_first=True``)
==========================================  ==================  ==============================================
folder of DICOM files (one series)          ``ITKReader``       (1, X, Y, Z) float32, RAS affine, mm spacing
single DICOM file (``.dcm`` or no suffix)   ``ITKReader``       (1, X, Y) for one frame, else (1, X, Y, Z)
``.nii`` / ``.nii.gz``                      ``NibabelReader``   (1, X, Y, Z) with the file's affine
``.png`` ``.jpg`` ``.jpeg`` ``.bmp`` ...    ``PILReader``       (C, X, Y) (C = 1 grayscale, 3 colour)
list of 2D raster files (slices)            ``PILReader``       (1, X, Y, N) grayscale, slices in list order
==========================================  ==================  ==============================================

Spatial axes follow MONAI's (ITK's) convention: the first spatial axis is the image column ``x`` and the
second the row ``y``, so a PNG with ``rows x columns`` pixels loads as ``(1, columns, rows)``; DICOM and
NIfTI affines map voxel indices to RAS millimetres. ITK applies ``RescaleSlope``/``RescaleIntercept``
(CT values come back in Hounsfield units), sorts slices by ``ImagePositionPatient`` and inverts
``MONOCHROME1`` images so that higher values are brighter.

Before reading a DICOM folder, its headers are checked with pydicom: exactly one series, no duplicate
slice positions and a uniform slice spacing (a gap means missing slices, which would otherwise give a
silently wrong geometry). Patient-identifying DICOM tags are removed from the returned metadata; the
patient is named only by ``meta["patient_pseudonym"]`` (:func:`medxai.data.privacy.pseudonym` of
``PatientID``). Every failure is an :class:`medxai.errors.InputError` that names the path.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import ITKReader, MetaTensor, NibabelReader, PILReader
from monai.data.image_reader import ImageReader
from monai.transforms import EnsureChannelFirst, LoadImage, MapTransform, Orientation, Transform
from pydicom.misc import is_dicom

from medxai.data.privacy import pseudonym
from medxai.errors import InputError, MedXAIError

__all__ = [
    "ImageKind",
    "DicomSeriesInfo",
    "detect_image_kind",
    "inspect_dicom_series",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "load_image",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "RASTER_SUFFIXES",
]

ImageKind = Literal["dicom_series", "dicom_file", "nifti", "raster", "raster_stack"]
PathOrPaths = str | PathLike | Sequence[str | PathLike]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# DICOMDIR media directory records are DICOM files without an image.
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# DICOM tags kept in the metadata: acquisition (0018), image pixel description (0028) and geometry; every
# other tag (patient, study, institution, dates, UIDs) is dropped. ITK names tags "gggg|eeee", pydicom
# "ggggeeee".
_TAG_KEY = re.compile(r"^([0-9a-fA-F]{4})\|?([0-9a-fA-F]{4})$")
_KEPT_TAG_GROUPS = {"0018", "0028"}
_KEPT_TAGS = {"00080008", "00080016", "00080060", "00200013", "00200032", "00200037"}


@dataclass(frozen=True)
class DicomSeriesInfo:
    """What the headers of a DICOM series folder say.

    Attributes
    ----------
    folder
        The series folder.
    files
        DICOM image files of the series, sorted by position along the slice normal.
    slice_spacing
        Distance between neighbouring slice centres in mm (median), ``None`` for a single slice or when
        positions are missing.
    patient_pseudonym
        :func:`medxai.data.privacy.pseudonym` of ``PatientID``; ``None`` when the tag is empty.
    """

    folder: Path
    files: tuple[Path, ...]
    slice_spacing: float | None
    patient_pseudonym: str | None


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def detect_image_kind(path: PathOrPaths) -> ImageKind:
    """Classify ``path`` as a DICOM series folder, a DICOM file, NIfTI, a raster image or a stack of them.

    Raises
    ------
    InputError
        When a path does not exist, a list mixes other files with raster slices, or the format is unknown.
    """
    if isinstance(path, Sequence) and not isinstance(path, (str, bytes)):
        paths = [Path(p) for p in path]
        if not paths:
            raise InputError("an empty list of image files was given.")
        for p in paths:
            if not p.is_file():
                raise InputError(f"slice file {p} does not exist.")
            if not _has_suffix(p, RASTER_SUFFIXES):
                raise InputError(
                    f"a list of files is read as a stack of 2D slices, which must be {'/'.join(RASTER_SUFFIXES)}; "
                    f"got {p}. Give a DICOM series as its folder."
                )
        return "raster_stack"
    p = Path(path)
    if not p.exists():
        raise InputError(f"image file or folder {p} does not exist.")
    if p.is_dir():
        return "dicom_series"
    if _has_suffix(p, NIFTI_SUFFIXES):
        return "nifti"
    if _has_suffix(p, RASTER_SUFFIXES):
        return "raster"
    if _has_suffix(p, DICOM_SUFFIXES) or is_dicom(p):
        return "dicom_file"
    raise InputError(
        f"cannot tell the format of {p}: expected a DICOM folder or file, "
        f"{'/'.join(NIFTI_SUFFIXES)} or {'/'.join(RASTER_SUFFIXES)}."
    )


def inspect_dicom_series(folder: str | PathLike, spacing_tolerance: float = 0.01) -> DicomSeriesInfo:
    """Read the headers of a DICOM series folder and check it is one complete, evenly spaced series.

    Parameters
    ----------
    folder
        Folder holding the slice files of one series (files directly inside it; sub-folders are ignored).
    spacing_tolerance
        Largest allowed relative deviation of any slice gap from the median gap.

    Raises
    ------
    InputError
        Naming the folder (or file) when it holds no DICOM image, an unreadable header, more than one
        series, two slices at the same position, or uneven slice gaps (missing slices).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM series folder {folder} does not exist.")
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if not is_dicom(file):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # any decoder failure means the header is unreadable
            raise InputError(f"cannot read the DICOM header of {file}: {type(exc).__name__}: {exc}") from exc
        if ds.get("MediaStorageSOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID")) == _MEDIA_STORAGE_DIRECTORY:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # not an image (structured report, presentation state, ...)
        headers.append((file, ds))
    if not headers:
        raise InputError(
            f"DICOM folder {folder} holds no DICOM image files (a series is read from the folder that directly "
            "contains its slice files)."
        )
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        counts = [sum(str(ds.get("SeriesInstanceUID", "")) == uid for _, ds in headers) for uid in series]
        raise InputError(
            f"DICOM folder {folder} holds {len(series)} series ({', '.join(map(str, counts))} files); "
            "put each series in its own folder."
        )
    spacing: float | None = None
    ordered = [file for file, _ in headers]
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers):
        orientation = np.asarray(headers[0][1].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal) for _, ds in headers])
        order = np.argsort(positions, kind="stable")
        ordered = [headers[i][0] for i in order]
        gaps = np.diff(positions[order])
        if len(gaps):
            if np.any(gaps < 1e-4):
                i = int(np.argmax(gaps < 1e-4))
                raise InputError(
                    f"DICOM folder {folder}: files {ordered[i].name} and {ordered[i + 1].name} lie at the same "
                    f"slice position {positions[order][i]:.3f} mm (duplicate slices or two acquisitions)."
                )
            spacing = float(np.median(gaps))
            worst = float(np.max(np.abs(gaps - spacing)))
            if worst > spacing_tolerance * spacing:
                raise InputError(
                    f"DICOM folder {folder}: uneven slice gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                    f"(median {spacing:.3f} mm); slices are missing or the series is not one stack."
                )
    return DicomSeriesInfo(
        folder=folder, files=tuple(ordered), slice_spacing=spacing, patient_pseudonym=_patient_pseudonym(headers[0][1])
    )


def _patient_pseudonym(header: pydicom.Dataset) -> str | None:
    """:func:`medxai.data.privacy.pseudonym` of a header's ``PatientID``; ``None`` when it is empty."""
    patient_id = str(header.get("PatientID", "") or "").strip()
    return pseudonym(patient_id) if patient_id else None


def _scrub_dicom_meta(meta: dict[Any, Any]) -> None:
    """Remove, in place, every DICOM tag except acquisition, pixel description and geometry tags."""
    for key in list(meta):
        match = _TAG_KEY.match(str(key))
        if match is None:
            continue
        group, element = match.group(1).lower(), match.group(2).lower()
        if group not in _KEPT_TAG_GROUPS and f"{group}{element}" not in _KEPT_TAGS:
            del meta[key]


def _undecodable(files: Sequence[Path]) -> list[Path]:
    """The DICOM files whose pixel data pydicom cannot decode (truncated or corrupt)."""
    bad = []
    for file in files:
        try:
            pydicom.dcmread(file).pixel_array
        except Exception:  # any decoder failure marks the file as bad
            bad.append(file)
    return bad


def _to_grayscale(image: Any) -> Any:
    """PIL converter: colour and palette images to 8-bit grayscale ("L"); 16-bit grayscale is left as is."""
    return image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK") else image


class LoadMedicalImage(Transform):
    """Load a DICOM series folder, DICOM file, NIfTI file, raster image or list of raster slices.

    Parameters
    ----------
    ensure_channel_first
        Return channel-first tensors: (C, X, Y) for 2D, (C, X, Y, Z) for 3D.
    dtype
        Data type of the returned tensor (``None`` keeps the reader's).
    orientation
        Optional axis codes (e.g. ``"RAS"``) to reorient 3D images to with :class:`monai.transforms.Orientation`;
        needs ``ensure_channel_first``.
    grayscale
        Convert colour raster images (RGB JPEGs of X-rays) to one grayscale channel.
    stack_spacing
        Slice spacing in mm written into the affine of a raster slice stack (its true spacing is unknown).
    check_series
        Check DICOM folders with :func:`inspect_dicom_series` before reading.
    """

    def __init__(
        self,
        ensure_channel_first: bool = True,
        dtype: DtypeLike | torch.dtype = np.float32,
        orientation: str | None = None,
        grayscale: bool = False,
        stack_spacing: float = 1.0,
        check_series: bool = True,
    ) -> None:
        if orientation is not None and not ensure_channel_first:
            raise InputError(f"orientation={orientation!r} needs ensure_channel_first=True.")
        if stack_spacing <= 0:
            raise InputError(f"stack_spacing must be positive (mm), got {stack_spacing}.")
        self.ensure_channel_first = ensure_channel_first
        self.orientation = orientation
        self.grayscale = grayscale
        self.stack_spacing = float(stack_spacing)
        self.check_series = check_series
        self._loader = LoadImage(image_only=True, ensure_channel_first=False, dtype=dtype)

    def _reader(self, kind: ImageKind) -> ImageReader:
        """A fresh MONAI reader for ``kind`` (readers keep state between ``read`` and ``get_data``)."""
        if kind in ("dicom_series", "dicom_file"):
            return ITKReader(affine_lps_to_ras=True)
        if kind == "nifti":
            return NibabelReader()
        if kind == "raster_stack" or self.grayscale:
            return PILReader(converter=_to_grayscale)
        return PILReader()

    def __call__(self, path: PathOrPaths) -> MetaTensor:
        """Load ``path`` (a file, a DICOM series folder, or a list of 2D slice files) as a ``MetaTensor``."""
        kind = detect_image_kind(path)
        if kind == "raster_stack":
            slices = [Path(p) for p in path]  # type: ignore[union-attr]
            shown = f"{slices[0].parent} ({len(slices)} slices)"
        else:
            shown = str(path)
        info = inspect_dicom_series(shown) if kind == "dicom_series" and self.check_series else None
        try:
            image = self._loader(path, reader=self._reader(kind))
        except MedXAIError:
            raise
        except Exception as exc:  # any decoder failure means the file is unreadable or truncated
            first_line = (str(exc).strip().splitlines() or [""])[0]
            what = kind.replace("_", " ")
            raise InputError(f"cannot read {what} {shown}: {type(exc).__name__}: {first_line}") from exc
        if image.numel() == 0:  # MONAI's Orientation would fail with a ValueError, which no caller expects
            raise InputError(f"{kind.replace('_', ' ')} {shown} holds no voxels: shape {tuple(image.shape)}.")
        if info is not None and image.shape[-1] != len(info.files):
            raise InputError(
                f"DICOM folder {path}: read {image.shape[-1]} of {len(info.files)} slices; unreadable or truncated: "
                f"{', '.join(p.name for p in _undecodable(info.files)) or 'unknown'}."
            )
        if kind == "dicom_file" and image.ndim == 3 and image.shape[-1] == 1:
            image = self._single_frame_to_2d(image)
        if kind == "raster_stack":
            image = self._stack_to_volume(image)
        if self.ensure_channel_first:
            image = EnsureChannelFirst()(image)
        if self.orientation is not None:
            image = Orientation(axcodes=self.orientation, labels=None)(image)
        _scrub_dicom_meta(image.meta)
        if info is not None:
            image.meta["patient_pseudonym"] = info.patient_pseudonym
        elif kind == "dicom_file":
            image.meta["patient_pseudonym"] = _patient_pseudonym(pydicom.dcmread(path, stop_before_pixels=True))
        return image

    @staticmethod
    def _single_frame_to_2d(image: MetaTensor) -> MetaTensor:
        """(X, Y, 1) -> (X, Y); the 4x4 affine is kept (as MONAI keeps it for 2D images), so the plane's
        position in the patient stays known. ``SqueezeDim`` is not used: it assumes a channel axis."""
        flat = MetaTensor(image.as_tensor()[..., 0], meta=dict(image.meta))
        flat.meta["spatial_shape"] = np.asarray(flat.shape)
        return flat

    def _stack_to_volume(self, image: MetaTensor) -> MetaTensor:
        """(N, X, Y) slices stacked by the reader -> (X, Y, N) volume with ``stack_spacing`` along the stack."""
        volume = MetaTensor(torch.movedim(image.as_tensor(), 0, -1), meta=dict(image.meta))
        volume.affine = torch.diag(torch.tensor([1.0, 1.0, self.stack_spacing, 1.0], dtype=torch.float64))
        volume.meta["original_channel_dim"] = float("nan")
        volume.meta["spatial_shape"] = np.asarray(volume.shape)
        return volume


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`, usable from bundle configs.

    Example config entry: ``{"_target_": "medxai.data.io.LoadMedicalImaged", "keys": ["image"]}``.

    Parameters
    ----------
    keys
        Keys whose values are paths (or lists of slice paths) to load.
    allow_missing_keys
        Do not fail when a key is absent.
    kwargs
        Passed to :class:`LoadMedicalImage`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def load_image(path: PathOrPaths, **kwargs: Any) -> MetaTensor:
    """Load one image with :class:`LoadMedicalImage` (keyword arguments go to its constructor)."""
    return LoadMedicalImage(**kwargs)(path)
