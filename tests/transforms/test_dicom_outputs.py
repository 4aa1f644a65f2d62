"""DICOM outputs: explanation maps as Parametric Maps and lesion boxes as Segmentations referencing the source.

The source is a small pydicom-written CT series; what is written is read back with pydicom and highdicom and
compared with the NIfTI map and JSON boxes, voxel by voxel, through MONAI's own reorientation (RAS -> LPS, the
DICOM pixel grid of an axial series) as the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from dicom_utils import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, write_ct_series  # noqa: E402

from medxai.data.io import load_image
from medxai.data.privacy import pseudonym
from medxai.errors import InputError
from medxai.explain.writers import save_json, save_map_nifti
from medxai.transforms.dicom_outputs import WriteDicomOutputsd, nifti_to_dicom_frames, read_source_series

SLICES, ROWS, COLS = 5, 6, 7
BIRTH_DATE, ACCESSION = "19411123", "ACC-77-SECRET"


@pytest.fixture()
def series(tmp_path) -> tuple[Path, np.ndarray, list[Path]]:
    hu = np.arange(SLICES * ROWS * COLS, dtype=float).reshape(SLICES, ROWS, COLS) * 3.0 - 900.0
    folder = tmp_path / "series_a"
    files = write_ct_series(folder, hu, pixel_spacing=(0.8, 0.6), slice_spacing=2.0)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientBirthDate, ds.AccessionNumber, ds.PatientSex = BIRTH_DATE, ACCESSION, "F"
        ds.save_as(f)
    return folder, hu, files


def _to_dicom_grid(volume_ras: MetaTensor) -> np.ndarray:
    """MONAI's reorientation of a RAS (1, X, Y, Z) volume to LPS: (columns, rows, slices), as frames."""
    lps = Orientation(axcodes="LPS", labels=None)(volume_ras)
    return np.transpose(np.asarray(lps[0]), (2, 1, 0))


def _frame_sources(ds: pydicom.Dataset) -> list[str]:
    return [
        fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for fg in ds.PerFrameFunctionalGroupsSequence
    ]


def _case_outputs(tmp_path: Path, image: MetaTensor, values: np.ndarray, boxes: list[dict]) -> dict:
    case = "case1"
    folder = tmp_path / "out" / case
    save_map_nifti(values, folder, case, affine=image.affine, suffix="_map")
    save_json({"boxes": boxes}, folder, case, suffix="_boxes")
    return {"case": case, "files": {"map": f"{case}_map.nii.gz", "boxes": f"{case}_boxes.json"}}


def test_map_frames_come_back_in_the_source_pixel_grid(series):
    folder, hu, _ = series
    image = load_image(folder, orientation="RAS")  # (1, X, Y, Z) RAS, as the CT bundles load it
    headers = read_source_series(folder)
    frames = nifti_to_dicom_frames(np.asarray(image[0]), image.affine.numpy(), headers)
    np.testing.assert_allclose(frames, hu)  # HU written slice by slice comes back where it was


def test_parametric_map_and_box_segmentation_reference_the_source(series, tmp_path):
    folder, hu, files = series
    image = load_image(folder, orientation="RAS")
    rng = np.random.default_rng(0)
    values = rng.random(image.shape[1:]).astype(np.float32)
    boxes = [{"min": [1, 2, 1], "max": [3, 4, 2]}, {"min": [5, 0, 4], "max": [6, 1, 4]}]
    summary = _case_outputs(tmp_path, image, values, boxes)
    out = WriteDicomOutputsd(tmp_path / "out", image_key="image")({"image": image, "summary": summary})
    folder_out = tmp_path / "out" / "case1"
    assert out["summary"]["dicom_files"] == {"map": "case1_map_pm.dcm", "boxes": "case1_boxes_seg.dcm"}
    sources = [pydicom.dcmread(f) for f in files]
    by_uid = {s.SOPInstanceUID: s for s in sources}
    slice_of = {s.SOPInstanceUID: s.InstanceNumber - 1 for s in sources}

    nifti = nib.load(str(folder_out / "case1_map.nii.gz"))
    nifti_values = torch.from_numpy(np.asarray(nifti.dataobj))[None]
    expected = _to_dicom_grid(MetaTensor(nifti_values, affine=torch.tensor(nifti.affine)))
    pm = pydicom.dcmread(folder_out / "case1_map_pm.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pm.StudyInstanceUID == sources[0].StudyInstanceUID
    assert pm.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {r.ReferencedSOPInstanceUID for r in referenced} == set(by_uid)
    frames = pm.pixel_array
    assert frames.dtype == np.float32 and frames.shape == (SLICES, ROWS, COLS)
    for i, uid in enumerate(_frame_sources(pm)):
        np.testing.assert_array_equal(frames[i], expected[slice_of[uid]])  # exactly the NIfTI's float32 values
        position = pm.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in by_uid[uid].ImagePositionPatient])

    seg = pydicom.dcmread(folder_out / "case1_boxes_seg.dcm")
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["explanation box 1", "explanation box 2"]
    pixels = seg.pixel_array.reshape(-1, ROWS, COLS)
    got = np.zeros((2, SLICES, ROWS, COLS), dtype=np.uint8)
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        got[number - 1, slice_of[uid]] = pixels[i]
    for n, box in enumerate(boxes):
        mask = np.zeros(image.shape[1:], dtype=np.float32)
        mask[tuple(slice(a, b + 1) for a, b in zip(box["min"], box["max"]))] = 1
        reference = _to_dicom_grid(MetaTensor(torch.from_numpy(mask)[None], affine=image.affine))
        np.testing.assert_array_equal(got[n], reference)
        assert got[n].sum() == np.prod(np.subtract(box["max"], box["min"]) + 1)


def test_written_objects_carry_the_pseudonym_unless_the_user_opts_in(series, tmp_path):
    folder, _, _ = series
    image = load_image(folder, orientation="RAS")
    box = {"min": [0, 0, 0], "max": [1, 1, 1]}
    summary = _case_outputs(tmp_path, image, np.ones(image.shape[1:], np.float32), [box])
    WriteDicomOutputsd(tmp_path / "out", image_key="image")({"image": image, "summary": summary})
    for name in ("case1_map_pm.dcm", "case1_boxes_seg.dcm"):
        path = tmp_path / "out" / "case1" / name
        ds = pydicom.dcmread(path)
        assert ds.PatientName.family_name == ds.PatientID == pseudonym(FAKE_PATIENT_ID)
        assert ds.PatientBirthDate == "" and ds.AccessionNumber == "" and ds.PatientSex == ""
        assert ds.PatientIdentityRemoved == "YES"
        raw = path.read_bytes()
        for secret in (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, BIRTH_DATE, ACCESSION, "Fake General Hospital"):
            assert secret.encode() not in raw, (name, secret)
    opted_in = WriteDicomOutputsd(tmp_path / "out", image_key="image", copy_patient_module=True)
    opted_in({"image": image, "summary": summary})
    ds = pydicom.dcmread(tmp_path / "out" / "case1" / "case1_map_pm.dcm")
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, BIRTH_DATE)


def test_non_dicom_input_and_a_resampled_map_are_refused(series, tmp_path):
    folder, _, _ = series
    image = load_image(folder, orientation="RAS")
    nifti_path = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(nifti_path))
    summary = _case_outputs(tmp_path, image, np.ones(image.shape[1:], np.float32), [])
    with pytest.raises(InputError, match="read from a nifti file; use dicom_output.json only with DICOM"):
        WriteDicomOutputsd(tmp_path / "out", image_key="image")({"image": load_image(nifti_path), "summary": summary})
    with pytest.raises(InputError, match="not the source DICOM series' grid"):
        nifti_to_dicom_frames(np.zeros((7, 6, 5)), np.diag([2.0, 2.0, 2.0, 1.0]), read_source_series(folder), "c")
