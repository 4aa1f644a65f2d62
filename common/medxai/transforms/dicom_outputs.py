"""Explanation maps and lesion boxes written back as DICOM, next to the CT series they explain.

For a case read from a DICOM series (a folder, or one DICOM slice file), :class:`WriteDicomOutputsd` turns
what the case writer (:class:`medxai.transforms.outputs.WriteCaseOutputsd` or
:class:`medxai.transforms.radiograph_outputs.WriteRadiographOutputsd`) wrote into two DICOM objects made
with highdicom, so that a viewer (OHIF, 3D Slicer, a PACS) shows them over the scan:

- ``<case>_map_pm.dcm``: a **Parametric Map** (DICOM PS3.3 A.75) holding the explanation map of
  ``<case>_map.nii.gz`` as 32-bit floats, one frame per source slice, values exactly the NIfTI's;
- ``<case>_boxes_seg.dcm``: a binary **Segmentation** (PS3.3 A.51) with one segment per lesion box of
  ``<case>_boxes.json`` (the box's voxels set), written only when there is at least one box.

A segmentation of the box regions is used rather than a Comprehensive 3D SR: viewers display segmentations
over the series they reference without further set-up, while SR spatial coordinates are shown by few.

Both objects reference the source series: same ``StudyInstanceUID`` and ``FrameOfReferenceUID``, each frame's
source SOP instance in its derivation, and the referenced series sequence. The map is carried from the NIfTI
grid (RAS, as loaded and reoriented by :class:`medxai.data.io.LoadMedicalImage`) to the DICOM pixel grid
(columns, rows, slices) through the two affines; the grids must be the same up to axis order and flips, else
an :class:`~medxai.errors.InputError` is raised instead of writing a misplaced map.

Privacy: highdicom copies the source's patient and study modules. Unless ``copy_patient_module=True``, the
written objects carry ``PatientName`` and ``PatientID`` equal to the case's pseudonym
(:func:`medxai.data.privacy.pseudonym` of the source ``PatientID``, as :mod:`medxai.data.io` derives it),
and every other identifying attribute of those modules (birth date, sex, age, accession number, other IDs,
referring physician, ...) empty or removed. ``copy_patient_module=True`` keeps the source's patient module,
which a PACS needs to file the objects under the same patient; the files then identify the patient.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import ImageMetaKey, optional_import
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import medxai
from medxai.data.io import detect_image_kind, inspect_dicom_series
from medxai.data.privacy import pseudonym
from medxai.errors import InputError, MedXAIError

hd, has_highdicom = optional_import("highdicom")

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "dicom_grid_affine",
    "nifti_to_dicom_frames",
    "boxes_to_dicom_frames",
    "pseudonymise_dataset",
    "read_source_series",
    "write_parametric_map",
    "write_box_segmentation",
    "WriteDicomOutputsd",
]

# Patient, patient-study and general-study attributes that identify a person (DICOM PS3.15 Table E.1-1,
# basic profile), cleared in written objects unless the user opts in to copying the patient module.
IDENTIFYING_KEYWORDS = (
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "PatientComments",
    "EthnicGroup",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
)
_TYPE2 = {"PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_source_series(source: str | Path) -> list[pydicom.Dataset]:
    """Headers of a DICOM series folder (sorted along the slice normal, checked by
    :func:`medxai.data.io.inspect_dicom_series`) or of one DICOM file, as a list of datasets.

    Raises
    ------
    InputError
        When ``source`` is not a DICOM series folder or DICOM file (a NIfTI or PNG input, for example).
    """
    kind = detect_image_kind(source)
    if kind == "dicom_series":
        files = list(inspect_dicom_series(source).files)
    elif kind == "dicom_file":
        files = [Path(source)]
    else:
        raise InputError(
            f"DICOM outputs reference the source DICOM series, but this case was read from a {kind.replace('_', ' ')} "
            "file; use dicom_output.json only with DICOM series folders or DICOM files as inputs."
        )
    return [_complete(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]


# type 2 attributes of the patient and study modules that highdicom copies and some writers leave out
_COPIED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "AccessionNumber",
)  # fmt: skip


def _complete(header: pydicom.Dataset) -> pydicom.Dataset:
    """``header`` with the type 2 attributes highdicom copies present (empty when the source lacks them)."""
    for keyword in _COPIED_TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def dicom_grid_affine(headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The 4x4 affine from DICOM voxel indices ``(column, row, slice)`` to RAS millimetres.

    ``headers`` are the slices in order along the normal; a single slice gets the normal times
    ``SpacingBetweenSlices`` (or ``SliceThickness``, or 1 mm) as its third column.
    """
    first = headers[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    if len(headers) > 1:
        step = (np.asarray(headers[-1].ImagePositionPatient, dtype=np.float64) - origin) / (len(headers) - 1)
    else:
        thickness = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
        step = np.cross(row_dir, col_dir) * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # along a row: the column index grows
    lps[:3, 1] = col_dir * row_spacing  # along a column: the row index grows
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def _grid_mapping(map_affine: np.ndarray, map_shape: Sequence[int], dicom_affine: np.ndarray, case: str):
    """Axis permutation and flips taking the map grid to the DICOM grid; refuses any other relation."""
    transform = np.linalg.inv(map_affine) @ dicom_affine  # DICOM index -> map index
    linear, offset = transform[:3, :3], transform[:3, 3]
    axes = [int(np.argmax(np.abs(linear[:, a]))) for a in range(3)]
    signs = [int(np.sign(linear[axes[a], a])) for a in range(3)]
    expected = np.zeros((3, 3))
    for a in range(3):
        expected[axes[a], a] = signs[a]
    starts = [0 if signs[a] > 0 else map_shape[axes[a]] - 1 for a in range(3)]
    if sorted(axes) != [0, 1, 2] or not np.allclose(linear, expected, atol=1e-3) or not np.allclose(
        [offset[axes[a]] for a in range(3)], starts, atol=1e-3
    ):
        raise InputError(
            f"case '{case}': the map's grid is not the source DICOM series' grid (DICOM index to map index "
            f"{np.round(transform, 3).tolist()}); the map must be in the input's geometry."
        )
    return axes, signs


def nifti_to_dicom_frames(
    values: np.ndarray, map_affine: np.ndarray, headers: Sequence[pydicom.Dataset], case: str = "?"
) -> np.ndarray:
    """A map (X, Y, Z) or (X, Y) with its RAS affine as DICOM frames (slices, rows, columns) of ``headers``.

    Raises
    ------
    InputError
        When the map grid is not the series grid up to axis order and flips, or the sizes differ.
    """
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[..., None]
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    map_affine = np.asarray(map_affine, dtype=np.float64)
    axes, signs = _grid_mapping(map_affine, values.shape, dicom_grid_affine(headers), case)
    grid = np.transpose(values, axes)  # (columns, rows, slices) up to flips
    for a, sign in enumerate(signs):
        if sign < 0:
            grid = np.flip(grid, axis=a)
    if grid.shape != (cols, rows, len(headers)):
        raise InputError(
            f"case '{case}': the map holds {values.shape} voxels, the DICOM series {len(headers)} slices of "
            f"{rows} x {cols} pixels."
        )
    return np.ascontiguousarray(np.transpose(grid, (2, 1, 0)))


def boxes_to_dicom_frames(
    boxes: Sequence[Mapping[str, Any]],
    map_shape: Sequence[int],
    map_affine: np.ndarray,
    headers: Sequence[pydicom.Dataset],
    case: str = "?",
) -> np.ndarray:
    """Boxes (inclusive voxel ``min``/``max`` on the map grid) as binary masks (slices, rows, columns, boxes)."""
    masks = []
    for box in boxes:
        mask = np.zeros(tuple(map_shape), dtype=np.uint8)
        lo, hi = box["min"], box["max"]
        mask[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))] = 1
        masks.append(nifti_to_dicom_frames(mask, map_affine, headers, case))
    return np.stack(masks, axis=-1)


def pseudonymise_dataset(dataset: pydicom.Dataset, patient_pseudonym: str) -> pydicom.Dataset:
    """Replace, in place, the patient's name (family name) and ID by ``patient_pseudonym`` and clear
    :data:`IDENTIFYING_KEYWORDS` (type 2 attributes emptied, others removed). Returns ``dataset``."""
    dataset.PatientName = f"{patient_pseudonym}^"  # the family-name component only
    dataset.PatientID = patient_pseudonym
    for keyword in IDENTIFYING_KEYWORDS:
        if keyword in dataset:
            if keyword in _TYPE2:
                setattr(dataset, keyword, "")
            else:
                delattr(dataset, keyword)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "medxai: PatientID pseudonym, identifying attributes cleared"
    return dataset


def _sources(headers: Sequence[pydicom.Dataset], patient_pseudonym: str | None) -> list[pydicom.Dataset]:
    """The source headers highdicom copies the patient and study modules from: with ``patient_pseudonym``,
    pseudonymised copies, so that no identifying value reaches highdicom at all (it logs a patient name
    without ``^`` verbatim, and a birth date that is not a DICOM date fails with the value in the message)."""
    if patient_pseudonym is None:
        return list(headers)
    return [pseudonymise_dataset(copy.deepcopy(h), patient_pseudonym) for h in headers]


def _equipment() -> dict[str, Any]:
    return {
        "manufacturer": "medxai",
        "manufacturer_model_name": "medxai-bundles",
        "software_versions": str(getattr(medxai, "__version__", "0")),
        "device_serial_number": "0",
    }


def write_parametric_map(
    frames: np.ndarray,
    headers: Sequence[pydicom.Dataset],
    path: str | Path,
    label: str = "XAI map",
    explanation: str = "explanation map",
    patient_pseudonym: str | None = None,
) -> Path:
    """Write ``frames`` (slices, rows, columns) as a float32 Parametric Map derived from ``headers``; with
    ``patient_pseudonym``, pseudonymised (:func:`pseudonymise_dataset`) before it is written."""
    frames = np.asarray(frames, dtype=np.float32)
    low, high = float(frames.min()), float(frames.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16],
        lut_explanation=explanation[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(low, high if high > low else low + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=_sources(headers, patient_pseudonym),
        pixel_array=frames,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(low + high) / 2.0, window_width=max(high - low, 1e-6))
        ],
        content_label="XAIMAP",
        content_description=explanation[:64],
        **_equipment(),
    )
    path = Path(path)
    if patient_pseudonym is not None:
        pseudonymise_dataset(pm, patient_pseudonym)
    pm.save_as(path)
    return path


def write_box_segmentation(
    masks: np.ndarray,
    headers: Sequence[pydicom.Dataset],
    path: str | Path,
    labels: Sequence[str],
    patient_pseudonym: str | None = None,
) -> Path:
    """Write binary ``masks`` (slices, rows, columns, segments) as a Segmentation derived from ``headers``; with
    ``patient_pseudonym``, pseudonymised (:func:`pseudonymise_dataset`) before it is written."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medxai lesion boxes",
        version=str(getattr(medxai, "__version__", "0")),
        family=codes.cid7162.ArtificialIntelligence,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=_sources(headers, patient_pseudonym),
        pixel_array=np.asarray(masks, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        content_label="XAIBOXES",
        omit_empty_frames=False,
        **_equipment(),
    )
    path = Path(path)
    if patient_pseudonym is not None:
        pseudonymise_dataset(seg, patient_pseudonym)
    seg.save_as(path)
    return path


def _source_path(data: Mapping[Hashable, Any], image_key: str) -> Any:
    image = data.get(image_key)
    source = image.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(image, MetaTensor) else None
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else None
    return source


class WriteDicomOutputsd(Transform):
    """Write a case's explanation map and lesion boxes as DICOM objects referencing its source series.

    Runs in ``postprocessing`` after the case writer, whose summary (under ``summary_key``) names the case and
    its files (``files["map"]``, ``files["boxes"]``); writes ``<case>_map_pm.dcm`` and, when there are boxes,
    ``<case>_boxes_seg.dcm`` into ``<output_dir>/<case>/`` and adds them to the summary's ``dicom_files``.

    Parameters
    ----------
    output_dir
        The case writer's output folder.
    image_key
        Key of the loaded image whose ``filename_or_obj`` is the source DICOM folder or file.
    summary_key
        Key of the case writer's summary.
    method
        Name of the explanation method, written into the map's description.
    copy_patient_module
        Keep the source's patient and study identification (the objects then identify the patient);
        by default they carry the pseudonym (see the module docstring).
    """

    def __init__(
        self,
        output_dir: str | Path,
        image_key: str = "image_original",
        summary_key: str = "summary",
        method: str = "explanation",
        copy_patient_module: bool = False,
    ) -> None:
        if not has_highdicom:
            raise ImportError(
                "DICOM outputs (dicom_output.json) need highdicom: pip install 'medxai-bundles[dicom]' "
                "(or pip install highdicom)."
            )
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.summary_key = summary_key
        self.method = str(method)
        self.copy_patient_module = bool(copy_patient_module)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        summary = d.get(self.summary_key)
        if not isinstance(summary, Mapping) or "case" not in summary:
            raise InputError(
                f"WriteDicomOutputsd: no case summary under '{self.summary_key}'; put it after the case writer."
            )
        case = str(summary["case"])
        folder = self.output_dir / case
        source = _source_path(d, self.image_key)
        if not source:
            raise InputError(f"case '{case}': '{self.image_key}' has no source file name to reference.")
        try:
            written = self._write(summary, case, folder, read_source_series(source))
        except Exception as err:
            kind = type(err) if isinstance(err, MedXAIError) else MedXAIError
            raise kind(f"case '{case}': writing DICOM outputs to {folder} failed: {err}") from err
        d[self.summary_key] = {**summary, "dicom_files": written}
        (folder / f"{case}_dicom_files.json").write_text(json.dumps(written, indent=2))
        return d

    def _write(
        self, summary: Mapping[str, Any], case: str, folder: Path, headers: Sequence[pydicom.Dataset]
    ) -> dict[str, str]:
        files = summary.get("files", {})
        nifti = nib.load(str(folder / files.get("map", f"{case}_map.nii.gz")))
        values = np.asarray(nifti.dataobj, dtype=np.float32)
        boxes = json.loads((folder / files.get("boxes", f"{case}_boxes.json")).read_text()).get("boxes", [])
        frames = nifti_to_dicom_frames(values, nifti.affine, headers, case)
        alias = None
        if not self.copy_patient_module:  # the pseudonym medxai.data.io gives the patient, else the case name
            patient_id = str(headers[0].get("PatientID", "") or "").strip()
            alias = pseudonym(patient_id) if patient_id else case
        written = {"map": f"{case}_map_pm.dcm"}
        explanation = f"{self.method} map"
        write_parametric_map(frames, headers, folder / written["map"], explanation=explanation, patient_pseudonym=alias)
        if boxes:
            shape = values.shape if values.ndim == 3 else (*values.shape, 1)
            masks = boxes_to_dicom_frames(boxes, shape, nifti.affine, headers, case)
            written["boxes"] = f"{case}_boxes_seg.dcm"
            labels = [f"{self.method} box {i + 1}" for i in range(len(boxes))]
            write_box_segmentation(masks, headers, folder / written["boxes"], labels, patient_pseudonym=alias)
        return written
