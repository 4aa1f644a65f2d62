"""Check a whole dataset before training starts and report every problem at once.

A bad case found by the data loader stops a run hours in, one case at a time. :func:`validate_dataset` runs
the checks the loading pipeline would run, over every record of every split, up front:

=====================================  ===========================================================================
problem                                checked by
=====================================  ===========================================================================
record not an object, no image         here (record structure)
label missing, not an integer,         here (integer labels), :class:`~medxai.transforms.checks.CheckLabelMapd`
outside ``[0, num_classes)``           (label map files)
missing file, unknown format           :func:`medxai.data.io.detect_image_kind`
DICOM: several series, duplicated or   :func:`medxai.data.io.inspect_dicom_series`; orientation and in-plane
missing slices, uneven spacing,        spacing of every slice against the first: :func:`check_dicom_geometry`
mixed orientation or pixel spacing
extreme size                           here, from the header, no pixel read (``max_dim``, ``max_voxels``)
required key missing (``required_keys``) here (record structure)
mask missing, unreadable, not one      here (``mask_keys``: e.g. lung masks read beside the image)
channel, another shape than the image,
NaN/Inf
unreadable, truncated, not an image    :class:`medxai.data.io.LoadMedicalImage`
wrong dimensionality, RGB, 4D, empty,  :class:`medxai.transforms.checks.CheckVolume`
fewer than ``min_depth`` slices,
NaN/Inf, constant
same patient (or image) in two splits  here, by ``patient_key`` (named by pseudonym) or by resolved image path
=====================================  ===========================================================================

Two splits that hold the very same records (k-fold cross-validation writes ``test`` = ``validation``) are one
set named twice, not a leak: the later one is checked once, as an alias of the earlier.

Cost: headers are read first (format, DICOM geometry, size bounds), so an oversized or malformed file is named
without reading its pixels; the NaN/Inf, constant and label-range checks need the voxels, so every image, label
map and mask is read once (the time is logged, per image).

Every problem is kept as ``(split, case, problem)``; when there is any, one :class:`DatasetValidationError`
(a :class:`~medxai.errors.DatasetError`) lists them all, one line each. Cases are named by their image's file
name (:func:`medxai.data.datalist.case_name`), patients only by :func:`medxai.data.privacy.pseudonym`.

:func:`validate_datalist` reads a datalist JSON (MONAI's decathlon format) or CSV first, collecting malformed
entries the same way, so a bundle's ``initialize`` can check the file its ``train`` section will read. Every
bundle's ``train.json`` (and ``multi_gpu_train.json``, on every rank) does::

    "validate_data": true,
    "validate_data_args": {"splits": ["training", "validation"], "optional_splits": ["test"],
                           "label_key": "@label_key", "num_classes": "@num_classes", "label_kind": "class",
                           "expected_dims": 3, "min_depth": "@section_length", "patient_key": "patient_id",
                           "check_hu": true, "loader_kwargs": {"orientation": "RAS"}},
    "initialize": ["$monai.utils.set_determinism(seed=@seed)",
                   "$medxai.data.validate.validate_datalist(@datalist, enabled=@validate_data, **@validate_data_args)"]

(the CT MIL bundle's arguments; ``"$import medxai.data.validate"`` goes into ``imports``). ``--validate_data false``
skips the check; ``--validate_data_args#check_images false`` reads no image but checks records, labels and splits.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NamedTuple

import nibabel as nib
import numpy as np
import pydicom
from monai.data.decathlon_datalist import _append_paths
from PIL import Image

from medxai.data.datalist import case_name
from medxai.data.io import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    LoadMedicalImage,
    detect_image_kind,
    inspect_dicom_series,
)
from medxai.data.privacy import pseudonym
from medxai.errors import DatasetError
from medxai.transforms.checks import CheckLabelMapd, CheckVolume

__all__ = [
    "Problem",
    "DatasetSummary",
    "DatasetValidationError",
    "MAX_DIM",
    "MAX_VOXELS",
    "check_dicom_geometry",
    "validate_dataset",
    "validate_datalist",
    "read_datalist_splits",
    "as_switch",
]

logger = logging.getLogger(__name__)

#: Largest accepted size of any spatial axis (voxels): beyond any CT, MRI or radiograph a bundle reads.
MAX_DIM = 4096
#: Largest accepted number of voxels in one image (2**31: a float32 copy alone would take 8 GiB).
MAX_VOXELS = 2**31

_CASE_PREFIX = re.compile(r"^case '[^']*'(?: \(key '[^']*'\))?: ")
_SHOWN = 50


class Problem(NamedTuple):
    """One problem of one record: the split, the case (image file name) and what is wrong."""

    split: str
    case: str
    problem: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.case}: {self.problem}"


class DatasetValidationError(DatasetError):
    """Every problem :func:`validate_dataset` found, one per line; ``problems`` holds them as :class:`Problem`."""

    def __init__(self, problems: Sequence[Problem], n_records: int) -> None:
        self.problems = list(problems)
        cases = len({(p.split, p.case) for p in self.problems})
        lines = [str(p) for p in self.problems[:_SHOWN]]
        if len(self.problems) > _SHOWN:
            lines.append(f"... and {len(self.problems) - _SHOWN} more")
        super().__init__(
            f"dataset check found {len(self.problems)} problem(s) in {cases} of {n_records} record(s); "
            "fix them before training:\n  " + "\n  ".join(lines)
        )


@dataclass(frozen=True)
class DatasetSummary:
    """What a passing dataset holds: records per split, images read (label maps and masks not counted), integer
    label counts per split, and the seconds the check took (not compared)."""

    records: dict[str, int]
    images_checked: int
    label_counts: dict[str, dict[int, int]] = field(default_factory=dict)
    seconds: float = field(default=0.0, compare=False)


def check_dicom_geometry(files: Sequence[str | PathLike], tolerance: float = 1e-3) -> str | None:
    """Whether every slice of a DICOM series has the first slice's orientation and in-plane pixel spacing.

    :func:`medxai.data.io.inspect_dicom_series` sorts slices along the *first* slice's normal and checks the
    gaps; a slice with another ``ImageOrientationPatient`` (a tilted localiser or a reformat dropped into the
    folder) or another ``PixelSpacing`` would be stacked silently into a wrong volume.

    Parameters
    ----------
    files
        The slice files of one series.
    tolerance
        Largest accepted absolute difference of direction cosines, and relative difference of pixel spacing.

    Returns
    -------
    str or None
        The problem, naming the first differing file and both values; ``None`` when the geometry is uniform.
    """
    reference: tuple[str, np.ndarray | None, np.ndarray | None] | None = None
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        orientation = np.asarray(ds.ImageOrientationPatient, float) if "ImageOrientationPatient" in ds else None
        spacing = np.asarray(ds.PixelSpacing, float) if "PixelSpacing" in ds else None
        if reference is None:
            reference = (Path(file).name, orientation, spacing)
            continue
        name, ref_orientation, ref_spacing = reference
        if (orientation is None) != (ref_orientation is None) or (
            orientation is not None and np.max(np.abs(orientation - ref_orientation)) > tolerance
        ):
            return (
                f"inconsistent orientation: slice {Path(file).name} has ImageOrientationPatient "
                f"{_fmt(orientation)}, slice {name} has {_fmt(ref_orientation)}."
            )
        if (spacing is None) != (ref_spacing is None) or (
            spacing is not None and np.max(np.abs(spacing - ref_spacing) / ref_spacing) > tolerance
        ):
            return (
                f"inconsistent pixel spacing: slice {Path(file).name} has PixelSpacing {_fmt(spacing)} mm, "
                f"slice {name} has {_fmt(ref_spacing)} mm."
            )
    return None


def _fmt(values: np.ndarray | None) -> str:
    return "none" if values is None else "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _header_shape(path: Any, kind: str, dicom_files: Sequence[Path] = ()) -> tuple[int, ...] | None:
    """Spatial shape from the file header, without reading pixels; ``None`` when the header is unreadable
    (the loader then reports why)."""
    try:
        if kind == "nifti":
            return tuple(int(s) for s in nib.load(str(path)).shape)
        if kind == "raster":
            with Image.open(path) as img:
                return (img.width, img.height)
        if kind == "raster_stack":
            with Image.open(path[0]) as img:
                return (img.width, img.height, len(path))
        if kind in ("dicom_file", "dicom_series"):
            first = dicom_files[0] if kind == "dicom_series" else path
            ds = pydicom.dcmread(first, stop_before_pixels=True)
            depth = len(dicom_files) if kind == "dicom_series" else int(ds.get("NumberOfFrames", 1) or 1)
            return (int(ds.Columns), int(ds.Rows), depth)
    except Exception:  # an unreadable header: LoadMedicalImage names the failure
        return None
    return None


def _size_problem(shape: tuple[int, ...], max_dim: int, max_voxels: int) -> str | None:
    """An empty or too large header shape (an empty NIfTI loads as shape ``(0,)``, so it is named here)."""
    if math.prod(shape) == 0:
        return f"empty volume: the header gives shape {shape} (no voxels)."
    if any(s > max_dim for s in shape):
        return f"extreme size: shape {shape} has an axis longer than the bound max_dim = {max_dim} voxels."
    if math.prod(shape) > max_voxels:
        return (
            f"extreme size: shape {shape} holds {math.prod(shape)} voxels, more than the bound "
            f"max_voxels = {max_voxels}."
        )
    return None


def _looks_like_path(value: str) -> bool:
    """Whether a label value names a label map file (an image suffix, or an existing path)."""
    name = value.lower()
    return any(name.endswith(s) for s in (*NIFTI_SUFFIXES, *RASTER_SUFFIXES, *DICOM_SUFFIXES)) or Path(value).exists()


def _message(exc: BaseException) -> str:
    return _CASE_PREFIX.sub("", (str(exc).strip().splitlines() or [type(exc).__name__])[0])


class _Checker:
    """Per-record checks with fixed settings; each returns a list of problem strings."""

    def __init__(
        self,
        image_key: str,
        label_key: str | None,
        num_classes: int | None,
        expected_dims: int,
        min_depth: int,
        expected_channels: int | None,
        check_hu: bool,
        check_images: bool,
        max_dim: int,
        max_voxels: int,
        loader_kwargs: Mapping[str, Any] | None,
        label_kind: str = "auto",
        required_keys: Sequence[str] = (),
        mask_keys: Sequence[str] = (),
        optional_label_when: Mapping[str, Any] | None = None,
        intensity_range: Sequence[float] | None = None,
    ) -> None:
        if label_kind not in ("auto", "class", "map"):
            raise DatasetError(f"label_kind must be 'auto', 'class' or 'map', got {label_kind!r}.")
        self.image_key, self.label_key, self.num_classes = image_key, label_key, num_classes
        self.check_images, self.max_dim, self.max_voxels = check_images, int(max_dim), int(max_voxels)
        self.label_kind, self.required_keys, self.mask_keys = label_kind, list(required_keys), list(mask_keys)
        self.optional_label_when = {
            str(k): {str(v)} if isinstance(v, str) else {str(x) for x in v}
            for k, v in dict(optional_label_when or {}).items()
        }  # fmt: skip
        self.loader = LoadMedicalImage(**dict(loader_kwargs or {}))
        hu = {} if check_hu else {"min_max_hu": None, "max_min_hu": None, "hu_limits": None}
        if intensity_range is not None:
            hu["hu_limits"] = (float(intensity_range[0]), float(intensity_range[1]))
        self.volume_check = CheckVolume(
            min_slices=min_depth if expected_dims >= 3 else 1,
            expected_ndim=expected_dims + 1,
            expected_channels=expected_channels,
            **hu,
        )
        self.label_map_check = CheckLabelMapd("label", num_classes) if num_classes and num_classes >= 2 else None
        self.images_checked = 0

    def record(self, record: Any) -> tuple[list[str], int | None]:
        """Problems of one record, and its integer label (``None`` when there is none)."""
        if not isinstance(record, Mapping):
            return [f"the record is a {type(record).__name__}, not an object with '{self.image_key}'."], None
        problems: list[str] = []
        if self.image_key not in record or record[self.image_key] in (None, "", []):
            problems.append(f"the record has no '{self.image_key}'.")
        missing = [k for k in (*self.required_keys, *self.mask_keys) if k not in record or record[k] in (None, "")]
        problems.extend(f"the record has no '{k}'." for k in missing)
        label, spatial = None, None
        if self.check_images and self.image_key in record and record[self.image_key] not in (None, "", []):
            spatial = self.image(record[self.image_key], problems)
        if self.label_key is not None:
            if self.label_key in record:
                label = self.label(record[self.label_key], spatial, problems)
            elif not self._label_optional(record):
                problems.append(f"the record has no label '{self.label_key}'.")
        if self.check_images:
            for key in self.mask_keys:
                if key not in missing:
                    self.mask(key, record[key], spatial, problems)
        return problems, label

    def _label_optional(self, record: Mapping[str, Any]) -> bool:
        """Whether the record may lack its label (unlabelled data of semi-supervised training)."""
        return any(str(record.get(k)) in values for k, values in self.optional_label_when.items() if k in record)

    def image(self, path: Any, problems: list[str]) -> tuple[int, ...] | None:
        """Check one image; append problems; return its spatial shape when it loaded and passed."""
        try:
            kind = detect_image_kind(path)
            files: Sequence[Path] = ()
            if kind == "dicom_series":
                files = inspect_dicom_series(path).files
                geometry = check_dicom_geometry(files)
                if geometry:
                    problems.append(f"DICOM folder {Path(path).name}: {geometry}")
                    return None
            shape = _header_shape(path, kind, files)
            size = _size_problem(shape, self.max_dim, self.max_voxels) if shape else None
            if size:
                problems.append(size)
                return None
            image = self.loader(path)
            self.images_checked += 1
            self.volume_check(image, name="")
            return tuple(int(s) for s in image.shape[1:])
        except Exception as exc:  # every failure of a case is reported, the others are still checked
            problems.append(_message(exc))
            return None

    def label(self, value: Any, spatial: tuple[int, ...] | None, problems: list[str]) -> int | None:
        """Check an integer class label, or a label map file against the class range and the image's shape."""
        is_path = isinstance(value, PathLike) or (isinstance(value, str) and _looks_like_path(value))
        if self.label_kind == "map" and not (is_path or isinstance(value, str)):
            problems.append(f"label '{self.label_key}' = {value!r} is not the path of a label map.")
            return None
        if self.label_kind == "map" or (is_path and self.label_kind == "auto"):
            if self.check_images:
                self.label_map(value, spatial, problems)
            return None
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            problems.append(f"label '{self.label_key}' = {value!r} is not an integer class index.")
            return None
        if self.num_classes is not None and not 0 <= value < self.num_classes:
            problems.append(f"label {value} is outside the class range [0, {self.num_classes}).")
            return None
        return int(value)

    def label_map(self, path: Any, spatial: tuple[int, ...] | None, problems: list[str]) -> None:
        self._companion("label map", path, spatial, problems, class_check=True)

    def mask(self, key: str, path: Any, spatial: tuple[int, ...] | None, problems: list[str]) -> None:
        """Check a mask read beside the image (e.g. a lung mask): readable, one channel, finite, same shape."""
        self._companion(f"mask '{key}'", path, spatial, problems, class_check=False)

    def _companion(
        self, what: str, path: Any, spatial: tuple[int, ...] | None, problems: list[str], class_check: bool
    ) -> None:
        """Load a label map or mask; append its problems (named ``what`` and its file name)."""
        name = f"{what} {Path(str(path)).name}"
        try:
            label_map = self.loader(path)
            shape = tuple(int(s) for s in label_map.shape)
            if shape[0] != 1:
                problems.append(f"{name} has {shape[0]} channels, shape {shape}, where 1 is expected.")
                return
            if math.prod(shape) == 0:
                problems.append(f"{name} is empty: shape {shape}.")
                return
            values = label_map.as_tensor() if hasattr(label_map, "as_tensor") else label_map
            if values.is_floating_point() and not bool(values.isfinite().all()):
                problems.append(f"{name} holds {int((~values.isfinite()).sum())} NaN or infinite value(s).")
                return
            if class_check and self.label_map_check is not None:
                self.label_map_check({"label": label_map})
            if spatial is not None and shape[1:] != spatial:
                problems.append(f"{name} has spatial shape {shape[1:]}, the image {spatial}.")
        except Exception as exc:  # reported as this case's problem
            problems.append(f"{name}: {_message(exc)}")


class _CheckerPool:
    """One :class:`_Checker` per thread (readers keep state), and the records checked with ``num_workers`` threads."""

    def __init__(self, settings: tuple) -> None:
        self.settings = settings
        self.checkers: list[_Checker] = [_Checker(*settings)]  # built now: a bad setting fails before any thread
        self._owner = threading.current_thread()
        self._local = threading.local()
        self._lock = threading.Lock()

    def _checker(self) -> _Checker:
        if threading.current_thread() is self._owner:
            return self.checkers[0]
        checker = getattr(self._local, "checker", None)
        if checker is None:
            checker = self._local.checker = _Checker(*self.settings)
            with self._lock:
                self.checkers.append(checker)
        return checker

    def map(self, records: Sequence[Any], num_workers: int) -> list[tuple[list[str], int | None]]:
        if int(num_workers) <= 0 or len(records) < 2:
            return [self._checker().record(r) for r in records]
        with ThreadPoolExecutor(max_workers=int(num_workers), thread_name_prefix="medxai-validate") as executor:
            return list(executor.map(lambda r: self._checker().record(r), records))

    @property
    def images_checked(self) -> int:
        return sum(c.images_checked for c in self.checkers)


def validate_dataset(
    records_by_split: Mapping[str, Sequence[Any]],
    *,
    image_key: str = "image",
    label_key: str | None = "label",
    num_classes: int | None = None,
    expected_dims: int = 3,
    min_depth: int = 1,
    patient_key: str | None = None,
    check_images: bool = True,
    expected_channels: int | None = 1,
    check_hu: bool = False,
    max_dim: int = MAX_DIM,
    max_voxels: int = MAX_VOXELS,
    loader_kwargs: Mapping[str, Any] | None = None,
    label_kind: Literal["auto", "class", "map"] = "auto",
    required_keys: Sequence[str] = (),
    mask_keys: Sequence[str] = (),
    optional_label_when: Mapping[str, Any] | None = None,
    intensity_range: Sequence[float] | None = None,
    num_workers: int = 0,
    extra_problems: Sequence[Problem] = (),
) -> DatasetSummary:
    """Run every check over every record of every split; raise one error listing all problems.

    Parameters
    ----------
    records_by_split
        Split name -> records (dicts with absolute paths, as :func:`medxai.data.datalist.load_datalist` or
        :func:`read_datalist_splits` return them).
    image_key
        Key of the image path: a file, a DICOM series folder, or a list of 2D slice files.
    label_key
        Key of the label: an integer class index, or the path of a label map (segmentation). ``None`` for
        unlabelled lists.
    num_classes
        Labels (and label map values) must lie in ``[0, num_classes)``.
    expected_dims
        Spatial dimensions of every image: 3 for CT/MRI volumes ``(1, H, W, D)``, 2 for radiographs ``(1, H, W)``.
    min_depth
        Fewest slices along the last axis of a 3D volume (e.g. the MIL section length).
    patient_key
        Record key of the patient id: the same patient in two splits is a problem. Records without it (and
        every record when ``None``) are identified by their resolved image path instead.
    check_images
        Read every image (and label map); ``False`` checks only the records, labels and splits.
    expected_channels
        Channels after loading (1: grayscale; ``None`` accepts any).
    check_hu
        Also run :class:`~medxai.transforms.checks.CheckVolume`'s Hounsfield-unit plausibility checks (CT).
    max_dim, max_voxels
        Size bounds checked from the header before pixels are read.
    loader_kwargs
        Arguments of :class:`~medxai.data.io.LoadMedicalImage` (e.g. ``{"grayscale": True}``, or
        ``{"orientation": "RAS"}`` so that ``min_depth`` counts the slices the pipeline will see).
    label_kind
        ``"class"``: labels must be integer class indices; ``"map"``: paths of label maps (segmentation), read
        and checked against ``[0, num_classes)`` and the image's shape; ``"auto"``: decided by each value.
    required_keys
        Other keys every record must have (e.g. ``["thickness"]`` that a bundle selects records by).
    mask_keys
        Keys of masks read beside the image (e.g. ``["lung_mask"]``): each must exist, load, have one channel,
        hold finite values and have the image's spatial shape. Their values are not class-checked (a bundle
        that binarises them accepts any finite value).
    optional_label_when
        Record key -> value(s) for which the label may be absent, e.g. ``{"thickness": "thin"}`` for the
        unlabelled volumes of semi-supervised training. A label that is present is still checked.
    intensity_range
        ``(low, high)``: every voxel must lie in it (e.g. ``[0, 255]`` for 8-bit slices); ``None`` skips, unless
        ``check_hu`` applies the int16 Hounsfield-unit limits.
    num_workers
        Threads that check records in parallel (reading and decompressing images releases the GIL); ``0``
        checks in this thread. The problems come out in record order either way.
    extra_problems
        Problems found earlier (malformed datalist entries) to report together with these.

    Returns
    -------
    DatasetSummary
        Records per split, images read and integer label counts per split.

    Raises
    ------
    DatasetValidationError
        Listing every ``(split, case, problem)``.
    """
    if not records_by_split:
        raise DatasetError("no split to check: records_by_split is empty.")
    start = time.perf_counter()
    check_images, check_hu = as_switch(check_images, "check_images"), as_switch(check_hu, "check_hu")
    settings = (
        image_key, label_key, num_classes, expected_dims, min_depth, expected_channels, check_hu, check_images,
        max_dim, max_voxels, loader_kwargs, label_kind, required_keys, mask_keys, optional_label_when,
        intensity_range,
    )  # fmt: skip
    pool = _CheckerPool(settings)
    problems = list(extra_problems)
    owners: dict[str, list[tuple[str, str]]] = defaultdict(list)
    label_counts: dict[str, dict[int, int]] = {}
    n_records = 0
    checked: dict[str, Sequence[Any]] = {}
    for split, records in records_by_split.items():
        alias = next((s for s, r in checked.items() if records and list(r) == list(records)), None)
        if alias is not None:  # the same records under another name (cross-validation: test = validation)
            logger.info("split '%s' holds the same records as '%s': checked once.", split, alias)
            label_counts[split] = label_counts[alias]
            continue
        checked[split] = records
        counts: dict[int, int] = defaultdict(int)
        if not records:
            problems.append(Problem(split, "-", "the split holds no records."))
        for i, (record, (found, label)) in enumerate(zip(records, pool.map(records, num_workers))):
            n_records += 1
            name = case_name(record, i) if isinstance(record, Mapping) else f"record {i}"
            problems.extend(Problem(split, name, p) for p in found)
            if label is not None:
                counts[label] += 1
            identity = _identity(record, image_key, patient_key)
            if identity is not None:
                owners[identity].append((split, name))
        label_counts[split] = dict(sorted(counts.items()))
    problems.extend(_cross_split_duplicates(owners, patient_key))
    if problems:
        raise DatasetValidationError(problems, n_records)
    seconds = time.perf_counter() - start
    summary = DatasetSummary(
        records={s: len(r) for s, r in records_by_split.items()},
        images_checked=pool.images_checked,
        label_counts=label_counts,
        seconds=seconds,
    )
    logger.info(
        "dataset check passed: %s records, %d images read in %.1f s (%.0f ms per image, label maps and masks "
        "included).",
        summary.records, summary.images_checked, seconds, 1000 * seconds / max(summary.images_checked, 1),
    )  # fmt: skip
    return summary


def _identity(record: Any, image_key: str, patient_key: str | None) -> str | None:
    """The patient id (``patient_key``, when the record has one) or else the resolved image path of a record."""
    if not isinstance(record, Mapping):
        return None
    if patient_key is not None:
        value = record.get(patient_key)
        if value is not None and str(value).strip() != "":
            return f"patient:{value}"
    image = record.get(image_key)
    if isinstance(image, (list, tuple)):
        image = image[0] if image else None
    return None if not image else f"image:{Path(str(image)).resolve()}"


def _cross_split_duplicates(owners: Mapping[str, list[tuple[str, str]]], patient_key: str | None) -> list[Problem]:
    problems = []
    for identity, places in owners.items():
        splits = sorted({s for s, _ in places}, key=[s for s, _ in places].index)
        if len(splits) < 2:
            continue
        kind, value = identity.split(":", 1)
        who = f"patient {pseudonym(value)} ('{patient_key}')" if kind == "patient" else "the same image file"
        for split, name in places:
            others = [s for s in splits if s != split]
            problems.append(Problem(split, name, f"duplicate across splits: {who} is also in {others}."))
    return problems


def read_datalist_splits(
    datalist: str | PathLike,
    splits: Sequence[str] = ("training", "validation"),
    base_dir: str | PathLike | None = None,
    split_column: str = "split",
    optional_splits: Sequence[str] = (),
) -> tuple[dict[str, list[Any]], list[Problem]]:
    """Read the records of ``splits`` from a datalist JSON or CSV, collecting malformed entries as problems.

    JSON: MONAI's decathlon format ``{"training": [{...}, ...], ...}``; relative paths are resolved as
    :func:`monai.data.load_decathlon_datalist` resolves them. CSV: a header row and one record per row, with
    ``split_column`` naming each row's split (a CSV without it holds only ``splits[0]``); relative paths are
    resolved against ``base_dir`` (default: the file's folder). ``optional_splits`` (e.g. ``["test"]``, so that
    a patient shared between training and test is found) are read when present and not missed when absent.

    Returns
    -------
    records, problems
        Split -> records (malformed ones kept, so that the record check names them), and the problems of
        the file itself.

    Raises
    ------
    DatasetError
        When the file is missing or cannot be parsed at all (nothing else can then be checked).
    """
    path = Path(datalist)
    if not path.is_file():
        raise DatasetError(f"datalist {path} does not exist.")
    base = Path(base_dir) if base_dir else path.parent
    problems: list[Problem] = []
    if path.suffix.lower() == ".csv":
        records = _read_csv(path, splits, optional_splits, split_column, problems)
    else:
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
            raise DatasetError(f"datalist {path} is not valid JSON: {getattr(err, 'msg', err)}{where}.") from err
        if not isinstance(content, dict):
            raise DatasetError(
                f"datalist {path} must be a JSON object with one list per split, got {type(content).__name__}."
            )
        records = {}
        for split in splits:
            value = content.get(split)
            if not isinstance(value, list):
                available = [k for k, v in content.items() if isinstance(v, list)]
                problems.append(
                    Problem(split, "-", f"datalist {path.name} has no '{split}' list; it has {available}.")
                )
                continue
            records[split] = value
        for split in optional_splits:
            if isinstance(content.get(split), list) and split not in records:
                records[split] = content[split]
    for split, items in records.items():
        _append_paths(base, False, [r for r in items if isinstance(r, dict)])
    return records, problems


def _read_csv(
    path: Path, splits: Sequence[str], optional_splits: Sequence[str], split_column: str, problems: list[Problem]
) -> dict[str, list[Any]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DatasetError(f"datalist {path} is empty: no header row.")
    header = [c.strip() for c in rows[0]]
    if len(set(header)) != len(header):
        raise DatasetError(f"datalist {path}: duplicate column names in the header {header}.")
    records: dict[str, list[Any]] = {s: [] for s in splits}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        record = {k: v.strip() for k, v in zip(header, row)}
        split = record.pop(split_column, splits[0])
        where = f"datalist {path.name} line {line}"
        if len(row) != len(header):
            problem = f"{where} has {len(row)} fields, the header {len(header)}."
            problems.append(Problem(split, case_name(record, line), problem))
        elif split in records:
            records[split].append(record)
        elif split in optional_splits:
            records[split] = [record]
        elif split not in ("test", "testing"):  # a typo or an empty cell would drop the row silently
            problems.append(Problem(split, case_name(record, line), f"{where}: unknown split '{split}'."))
    return records


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "none", "")


def as_switch(value: Any, name: str = "validate_data") -> bool:
    """A config switch as a bool: ``True``/``False``, or the strings a command line gives (``--validate_data false``
    arrives as the string ``"false"``, which Python would take as true).

    Raises
    ------
    DatasetError
        For any other value, naming it.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise DatasetError(f"{name} must be true or false, got {value!r}.")


def validate_datalist(
    datalist: str | PathLike,
    splits: Sequence[str] = ("training", "validation"),
    *,
    base_dir: str | PathLike | None = None,
    optional_splits: Sequence[str] = (),
    enabled: bool | str = True,
    **kwargs: Any,
) -> DatasetSummary | None:
    """:func:`read_datalist_splits`, then :func:`validate_dataset` (``kwargs``) on the splits, in one report.

    The call a bundle's ``initialize`` makes, so training never starts on a dataset that would fail later.
    ``enabled`` (a bundle's ``validate_data``, see :func:`as_switch`) false skips everything and returns ``None``.
    """
    if not as_switch(enabled):
        logger.info("dataset check skipped (validate_data is false).")
        return None
    records, problems = read_datalist_splits(datalist, splits, base_dir=base_dir, optional_splits=optional_splits)
    if not records:
        raise DatasetValidationError(problems, 0)
    return validate_dataset(records, extra_problems=problems, **kwargs)
