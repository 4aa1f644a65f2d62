"""Write small, valid DICOM CT series with pydicom, for tests that read what hospitals send.

The series is written the way scanners do it: one file per slice, ``ImagePositionPatient`` stepping along
the slice normal, stored integers that become Hounsfield units through ``RescaleSlope`` and
``RescaleIntercept`` (DICOM PS3.3 C.11.1.1.2: ``HU = stored * slope + intercept``), and a fake patient.
File names can be shuffled so that a reader has to sort slices by position rather than by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = ["write_ct_series", "write_xray_image", "FAKE_PATIENT_NAME", "FAKE_PATIENT_ID"]

FAKE_PATIENT_NAME = "Testperson^Erika"
FAKE_PATIENT_ID = "MRN-0042-FAKE"


def write_ct_series(
    folder: str | Path,
    hu: np.ndarray,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_spacing: float = 2.5,
    origin: Sequence[float] = (-100.0, -120.0, 30.0),
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    patient_name: str = FAKE_PATIENT_NAME,
    patient_id: str = FAKE_PATIENT_ID,
    series_uid: str | None = None,
    shuffle_names: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write ``hu`` as an axial CT series, one ``.dcm`` file per slice; returns the files in slice order.

    Parameters
    ----------
    folder
        Output folder (created).
    hu
        Hounsfield units, shape (slices, rows, columns); slice ``k`` lies at
        ``z = origin[2] + k * slice_spacing`` (mm, patient LPS coordinates).
    pixel_spacing
        (row spacing, column spacing) in mm, DICOM ``PixelSpacing`` order.
    rescale_slope, rescale_intercept
        Stored values are ``round((hu - intercept) / slope)`` as unsigned 16 bit; values must fit.
    patient_name, patient_id
        Fake identity written into every file (tests check it never leaks into what a reader returns).
    series_uid
        ``SeriesInstanceUID``; a fresh one when omitted.
    shuffle_names
        Name files in a seeded random order (``IM<random>.dcm``) so the name order is not the slice order.
    """
    hu = np.asarray(hu, dtype=float)
    if hu.ndim != 3:
        raise ValueError(f"hu must have shape (slices, rows, columns), got {hu.shape}.")
    stored = np.round((hu - rescale_intercept) / rescale_slope)
    if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"HU range [{hu.min()}, {hu.max()}] does not fit uint16 with this slope/intercept.")
    stored = stored.astype(np.uint16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_slices, rows, cols = hu.shape
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    order = np.random.default_rng(seed).permutation(n_slices) if shuffle_names else np.arange(n_slices)
    paths: list[Path] = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{int(order[k]):04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.InstitutionName = "Fake General Hospital"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + k * slice_spacing]
        ds.SliceLocation = float(origin[2]) + k * slice_spacing
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = float(slice_spacing)
        ds.SpacingBetweenSlices = float(slice_spacing)
        ds.RescaleSlope = float(rescale_slope)
        ds.RescaleIntercept = float(rescale_intercept)
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored[k].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_xray_image(
    path: str | Path,
    stored: np.ndarray,
    pixel_spacing: tuple[float, float] = (0.14, 0.15),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    patient_name: str = FAKE_PATIENT_NAME,
    patient_id: str = FAKE_PATIENT_ID,
) -> Path:
    """Write one digital X-ray image (single frame) with stored values ``stored`` (rows, columns).

    ``photometric="MONOCHROME1"`` marks the image as inverted (higher stored values are darker), as many
    radiography systems write chest X-rays (DICOM PS3.3 C.7.6.3.1.2).
    """
    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.min() < 0 or stored.max() >= 2**bits_stored:
        raise ValueError(f"stored must be 2D with values in [0, 2**{bits_stored}), got {stored.shape}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
