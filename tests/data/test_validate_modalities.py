"""Every bad input of issue 10, per modality: a dataset with one bad case fails with exactly one problem line that
names the split, the case and what is wrong.

Modalities (as the bundles configure :func:`medxai.data.validate.validate_dataset`):

- ``ct_volume``: 3D CT in Hounsfield units (NIfTI or DICOM series), integer labels, ``min_depth`` = the MIL
  section length, HU checks (covid19_ct_mil_classification);
- ``image_2d``: 8-bit PNG CT slices and chest X-rays read as grayscale, integer labels, the pixel range
  checked (covid19_ct_transfer_classification, the three CXR bundles);
- ``brain_mri``: 3D MRI with a label map per volume (brain_ventricle_segmentation);
- ``cxr_mask``: a chest X-ray with its lung mask read beside it (cxr_lung_segmentation, covid19_cxrnet).

A case that does not apply to a modality is left out of the table (e.g. a DICOM series of a 2D image, a volume
shorter than a section for a 2D image, an RGB picture that the 2D bundles convert to grayscale on purpose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_utils import write_ct_series
from PIL import Image

from medxai.data.privacy import pseudonym
from medxai.data.validate import DatasetValidationError, Problem, as_switch, validate_datalist, validate_dataset
from medxai.errors import DatasetError

SHAPE_3D = (12, 10, 6)
SHAPE_2D = (16, 12)


def _nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return str(path)


def _png(path: Path, data: np.ndarray) -> str:
    Image.fromarray(np.ascontiguousarray(np.asarray(data, np.uint8).T)).save(path)  # (x, y) -> rows = y
    return str(path)


def _ct(seed: int, shape: tuple[int, ...] = SHAPE_3D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000.0, np.float32)
    vol[2:-2, 2:-2] = rng.normal(40.0, 10.0, size=vol[2:-2, 2:-2].shape)
    return vol


def _mri(seed: int, shape: tuple[int, ...] = SHAPE_3D) -> np.ndarray:
    return np.random.default_rng(seed).uniform(50.0, 400.0, size=shape).astype(np.float32)


def _label_map(shape: tuple[int, ...] = SHAPE_3D, top: int = 3) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[2:5, 2:5, 1:3], seg[6, 6, 2], seg[8, 3, 4] = 1, 2, top
    return seg


def _slice(seed: int, shape: tuple[int, int] = SHAPE_2D) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


@dataclass(frozen=True)
class Modality:
    """How a modality's good case is written and which ``validate_dataset`` arguments its bundle uses."""

    name: str
    suffix: str
    kwargs: dict[str, Any]
    write_image: Callable[[Path, int], str]
    write_label: Callable[[Path, str], Any] | None = None  # (folder, stem) -> label value; None: integer label
    write_mask: Callable[[Path, str], str] | None = None

    def record(self, folder: Path, stem: str, seed: int, patient: str, image: str | None = None) -> dict:
        record = {"image": image or self.write_image(folder / f"{stem}{self.suffix}", seed), "patient_id": patient}
        record["label"] = self.write_label(folder, stem) if self.write_label else seed % 2
        if self.write_mask:
            record["lung_mask"] = self.write_mask(folder, stem)
        return record


MODALITIES = {
    "ct_volume": Modality(
        "ct_volume", ".nii.gz",
        dict(num_classes=2, expected_dims=3, min_depth=4, check_hu=True, label_kind="class"),
        lambda path, seed: _nifti(path, _ct(seed)),
    ),
    "image_2d": Modality(
        "image_2d", ".png",
        dict(num_classes=2, expected_dims=2, intensity_range=(0, 255), label_kind="class",
             loader_kwargs={"grayscale": True}),
        lambda path, seed: _png(path, _slice(seed)),
    ),
    "brain_mri": Modality(
        "brain_mri", ".nii.gz",
        dict(num_classes=4, expected_dims=3, label_kind="map"),
        lambda path, seed: _nifti(path, _mri(seed)),
        write_label=lambda folder, stem: _nifti(folder / f"{stem}_seg.nii.gz", _label_map()),
    ),
    "cxr_mask": Modality(
        "cxr_mask", ".png",
        dict(label_key=None, expected_dims=2, mask_keys=["lung_mask"], loader_kwargs={"grayscale": True}),
        lambda path, seed: _png(path, _slice(seed)),
        write_mask=lambda folder, stem: _png(folder / f"{stem}_lung.png", (_slice(7) > 128) * 255),
    ),
}  # fmt: skip


def _dataset(modality: Modality, folder: Path) -> dict[str, list[dict]]:
    return {
        "training": [modality.record(folder, f"good_{i}", i, f"P{i}") for i in range(2)],
        "validation": [modality.record(folder, "good_v", 5, "PV")],
    }


def _series(folder: Path, n: int = 6) -> list[Path]:
    return write_ct_series(folder, np.stack([_ct(k, (8, 8, 1))[..., 0] for k in range(n)]))


def m_volume(m: Modality, seed: int) -> np.ndarray:
    """The modality's good voxels as float32 (a 2D image as its 8-bit plane)."""
    if m.name == "ct_volume":
        return _ct(seed)
    if m.name == "brain_mri":
        return _mri(seed)
    return _slice(seed).astype(np.float32)


# ---- the bad cases: each writes one bad record into ``folder`` and returns it with the expected problem ----


def missing_file(m: Modality, folder: Path) -> tuple[dict, str]:
    path = folder / f"gone{m.suffix}"
    return m.record(folder, "gone", 0, "PB", image=str(path)), f"image file or folder {path} does not exist."


def truncated_file(m: Modality, folder: Path) -> tuple[dict, str]:
    good = Path(m.write_image(folder / f"whole{m.suffix}", 3))
    cut = folder / f"cut{m.suffix}"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    why = "OSError: image file is truncated" if m.suffix == ".png" else (
        "EOFError: Compressed file ended before the end-of-stream marker was reached")  # fmt: skip
    return m.record(folder, "cut", 0, "PB", image=str(cut)), f"cannot read {_reader(m)} {cut}: {why}"


def _reader(m: Modality) -> str:
    return "raster" if m.suffix == ".png" else "nifti"


def text_file_named_as_image(m: Modality, folder: Path) -> tuple[dict, str]:
    notes = folder / f"notes{m.suffix}"
    notes.write_text("not an image at all\n")
    why = f"UnidentifiedImageError: cannot identify image file '{notes}'" if m.suffix == ".png" else (
        f"ImageFileError: File {notes} is not a gzip file")  # fmt: skip
    return m.record(folder, "notes", 0, "PB", image=str(notes)), f"cannot read {_reader(m)} {notes}: {why}"


def unknown_format(m: Modality, folder: Path) -> tuple[dict, str]:
    scan = folder / "scan.xyz"
    scan.write_text("?")
    problem = (
        f"cannot tell the format of {scan}: expected a DICOM folder or file, .nii/.nii.gz or "
        ".png/.jpg/.jpeg/.bmp/.tif/.tiff."
    )
    return m.record(folder, "scan", 0, "PB", image=str(scan)), problem


def dicom_missing_slice(m: Modality, folder: Path) -> tuple[dict, str]:
    files = _series(folder / "gap_series")
    files[3].unlink()
    problem = (
        f"DICOM folder {folder / 'gap_series'}: uneven slice gaps from 2.500 to 5.000 mm (median 2.500 mm); slices "
        "are missing or the series is not one stack."
    )
    return m.record(folder, "gap", 0, "PB", image=str(folder / "gap_series")), problem


def dicom_duplicated_slice(m: Modality, folder: Path) -> tuple[dict, str]:
    files = _series(folder / "dup_series")
    (folder / "dup_series" / "copy.dcm").write_bytes(files[2].read_bytes())
    problem = (
        f"DICOM folder {folder / 'dup_series'}: files {files[2].name} and copy.dcm lie at the same slice position "
        "35.000 mm (duplicate slices or two acquisitions)."
    )
    return m.record(folder, "dup", 0, "PB", image=str(folder / "dup_series")), problem


def dicom_inconsistent_orientation(m: Modality, folder: Path) -> tuple[dict, str]:
    files = _series(folder / "tilted")
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.8, 0.6]
    ds.save_as(files[4])
    problem = (
        f"DICOM folder tilted: inconsistent orientation: slice {files[4].name} has ImageOrientationPatient "
        f"[1, 0, 0, 0, 0.8, 0.6], slice {files[0].name} has [1, 0, 0, 0, 1, 0]."
    )
    return m.record(folder, "tilted", 0, "PB", image=str(folder / "tilted")), problem


def dicom_inconsistent_spacing(m: Modality, folder: Path) -> tuple[dict, str]:
    files = _series(folder / "spaced")
    ds = pydicom.dcmread(files[1])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(files[1])
    problem = (
        f"DICOM folder spaced: inconsistent pixel spacing: slice {files[1].name} has PixelSpacing [0.9, 0.9] mm, "
        f"slice {files[0].name} has [0.7, 0.7] mm."
    )
    return m.record(folder, "spaced", 0, "PB", image=str(folder / "spaced")), problem


def two_d_where_3d_expected(m: Modality, folder: Path) -> tuple[dict, str]:
    path = _png(folder / "slice.png", _slice(1, (8, 8)))
    problem = "2D image of shape (1, 8, 8) where a 3D volume (C, H, W, D) is expected; a single slice or a 2D picture?"
    return m.record(folder, "slice", 0, "PB", image=path), problem


def three_d_where_2d_expected(m: Modality, folder: Path) -> tuple[dict, str]:
    path = _nifti(folder / "volume.nii.gz", np.full((16, 12, 5), 100.0, np.float32) + np.arange(5))
    problem = (
        "4 dimensions, shape (1, 16, 12, 5): a 3D volume where a 2D image (C, H, W) is expected; a CT or MRI "
        "volume, or a stack of slices?"
    )
    return m.record(folder, "volume", 0, "PB", image=path), problem


def rgb_volume(m: Modality, folder: Path) -> tuple[dict, str]:
    path = _nifti(folder / "rgb.nii.gz", np.stack([m_volume(m, 0)] * 3, axis=-1))
    problem = "3 channels, shape (3, 12, 10, 6), where 1 is expected; an RGB picture?"
    return m.record(folder, "rgb", 0, "PB", image=path), problem


def four_d_series(m: Modality, folder: Path) -> tuple[dict, str]:
    if m.kwargs["expected_dims"] == 3:  # (H, W, D, T): loads as T channels
        path = _nifti(folder / "dyn.nii.gz", np.stack([m_volume(m, 0)] * 5, axis=-1))
        problem = (
            "5 channels, shape (5, 12, 10, 6), where 1 is expected; a time series or multi-phase study loaded as "
            "channels?"
        )
    else:  # (H, W, 1, T): four dimensions after loading
        path = _nifti(folder / "dyn.nii.gz", np.stack([m_volume(m, 0)[..., None]] * 5, axis=-1))
        problem = (
            "4 dimensions, shape (5, 16, 12, 1), where 3 (C, H, W) are expected; a time series or a multi-phase "
            "study?"
        )
    return m.record(folder, "dyn", 0, "PB", image=path), problem


def empty_volume(m: Modality, folder: Path) -> tuple[dict, str]:
    shape = (8, 8, 0) if m.kwargs["expected_dims"] == 3 else (8, 0)
    path = _nifti(folder / "empty.nii.gz", np.zeros(shape, np.float32))
    return m.record(folder, "empty", 0, "PB", image=path), f"empty volume: the header gives shape {shape} (no voxels)."


def shorter_than_a_section(m: Modality, folder: Path) -> tuple[dict, str]:
    path = _nifti(folder / "short.nii.gz", _ct(0, (12, 10, 3)))
    problem = "3 slice(s) along the last axis, fewer than min_slices = 4 (shape (1, 12, 10, 3))."
    return m.record(folder, "short", 0, "PB", image=path), problem


def nan_and_inf(m: Modality, folder: Path) -> tuple[dict, str]:
    data = m_volume(m, 0)
    flat = data.reshape(-1)
    flat[[3, 7]], flat[11] = np.nan, np.inf
    path = _nifti(folder / "nan.nii.gz", data)
    return m.record(folder, "nan", 0, "PB", image=path), f"2 NaN and 1 infinite voxel(s) of {data.size}."


def constant_image(m: Modality, folder: Path) -> tuple[dict, str]:
    value = -1000.0 if m.name == "ct_volume" else 7.0
    data = np.full(m_volume(m, 0).shape, value, np.float32)
    path = _nifti(folder / "flat.nii.gz", data)
    problem = f"constant volume (every voxel is {value:g}); blank or failed reconstruction?"
    return m.record(folder, "flat", 0, "PB", image=path), problem


def extreme_size(m: Modality, folder: Path) -> tuple[dict, str]:
    shape = (5000, 2, 2) if m.kwargs["expected_dims"] == 3 else (5000, 2)
    if m.suffix == ".png":
        path = _png(folder / "long.png", np.zeros(shape, np.uint8))
    else:
        path = _nifti(folder / "long.nii.gz", np.zeros(shape, np.uint8))
    problem = f"extreme size: shape {shape} has an axis longer than the bound max_dim = 4096 voxels."
    return m.record(folder, "long", 0, "PB", image=path), problem


def label_outside_the_class_range(m: Modality, folder: Path) -> tuple[dict, str]:
    record = m.record(folder, "relabelled", 1, "PB")
    if m.write_label is None:
        record["label"] = m.kwargs["num_classes"]
        return record, f"label {m.kwargs['num_classes']} is outside the class range [0, {m.kwargs['num_classes']})."
    record["label"] = _nifti(folder / "aseg.nii.gz", _label_map(top=43))  # a FreeSurfer code
    problem = "label map aseg.nii.gz: labels [43] are outside the class range [0, 4); labels found: [0, 1, 2, 43]."
    return record, problem


def duplicate_patient_across_splits(m: Modality, folder: Path) -> tuple[dict, str]:
    record = m.record(folder, "again", 2, "PV")  # PV is the validation case's patient
    return record, f"duplicate across splits: patient {pseudonym('PV')} ('patient_id') is also in ['validation']."


CASES = {
    f.__name__: f
    for f in (
        missing_file, truncated_file, text_file_named_as_image, unknown_format, dicom_missing_slice,
        dicom_duplicated_slice, dicom_inconsistent_orientation, dicom_inconsistent_spacing, two_d_where_3d_expected,
        three_d_where_2d_expected, rgb_volume, four_d_series, empty_volume, shorter_than_a_section, nan_and_inf,
        constant_image, extreme_size, label_outside_the_class_range, duplicate_patient_across_splits,
    )
}  # fmt: skip
ALL = ("ct_volume", "image_2d", "brain_mri", "cxr_mask")
VOLUMES = ("ct_volume", "brain_mri")
PLANES = ("image_2d", "cxr_mask")
APPLIES = {
    "missing_file": ALL, "truncated_file": ALL, "text_file_named_as_image": ALL, "unknown_format": ALL,
    "dicom_missing_slice": VOLUMES, "dicom_duplicated_slice": VOLUMES, "dicom_inconsistent_orientation": VOLUMES,
    "dicom_inconsistent_spacing": VOLUMES, "two_d_where_3d_expected": VOLUMES, "three_d_where_2d_expected": PLANES,
    "rgb_volume": VOLUMES, "four_d_series": ALL, "empty_volume": ALL, "shorter_than_a_section": ("ct_volume",),
    "nan_and_inf": ALL, "constant_image": ALL, "extreme_size": ALL,
    "label_outside_the_class_range": ("ct_volume", "image_2d", "brain_mri"), "duplicate_patient_across_splits": ALL,
}  # fmt: skip
PARAMS = [pytest.param(case, m, id=f"{case}-{m}") for case, modalities in APPLIES.items() for m in modalities]


@pytest.mark.parametrize("modality", ALL)
def test_the_good_dataset_of_each_modality_passes(modality, tmp_path):
    summary = validate_dataset(_dataset(MODALITIES[modality], tmp_path), patient_key="patient_id",
                               **MODALITIES[modality].kwargs)  # fmt: skip
    assert summary.records == {"training": 2, "validation": 1} and summary.images_checked == 3


@pytest.mark.parametrize("case, modality", PARAMS)
def test_one_bad_case_gives_one_line_naming_it(case, modality, tmp_path):
    m = MODALITIES[modality]
    records = _dataset(m, tmp_path)
    bad, expected = CASES[case](m, tmp_path)
    records["training"].append(bad)
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, patient_key="patient_id", **m.kwargs)
    found = excinfo.value.problems
    name = Path(bad["image"]).name
    if case == "duplicate_patient_across_splits":
        other = Path(records["validation"][0]["image"]).name
        assert found == [Problem("training", name, expected), Problem("validation", other, expected.replace(
            "['validation']", "['training']"))]
    else:
        assert found == [Problem("training", name, expected)], found
    assert f"[training] {name}: {expected}" in str(excinfo.value)


# ---- label maps (brain_mri) and masks (cxr_mask): what a segmentation target can get wrong ----


def test_brain_label_maps_missing_of_another_shape_or_not_a_map(tmp_path):
    m = MODALITIES["brain_mri"]
    records = _dataset(m, tmp_path)
    gone = tmp_path / "gone_seg.nii.gz"
    small = _nifti(tmp_path / "small_seg.nii.gz", _label_map((12, 10, 5)))
    fractional = _nifti(tmp_path / "blurred_seg.nii.gz", _label_map().astype(np.float32) * 0.5)
    bad = [m.record(tmp_path, f"b{i}", i, f"B{i}") for i in range(4)]
    bad[0]["label"], bad[1]["label"], bad[2]["label"], bad[3]["label"] = str(gone), small, fractional, 2
    records["training"] += bad
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, patient_key="patient_id", **m.kwargs)
    assert excinfo.value.problems == [
        Problem("training", "b0.nii.gz", f"label map gone_seg.nii.gz: image file or folder {gone} does not exist."),
        Problem("training", "b1.nii.gz",
                "label map small_seg.nii.gz has spatial shape (12, 10, 5), the image (12, 10, 6)."),
        Problem("training", "b2.nii.gz",
                "label map blurred_seg.nii.gz: the label map holds fractional values [0.5, 1.5], not class indices."),
        Problem("training", "b3.nii.gz", "label 'label' = 2 is not the path of a label map."),
    ]  # fmt: skip


def test_unlabelled_thin_volumes_may_lack_a_label_map_and_required_keys_are_named(tmp_path):
    m = MODALITIES["brain_mri"]
    records = _dataset(m, tmp_path)
    for record in records["training"] + records["validation"]:
        record["thickness"] = "thick"
    thin = {"image": m.write_image(tmp_path / "thin.nii.gz", 9), "thickness": "thin", "patient_id": "P0"}
    records["training"].append(thin)
    kwargs = dict(patient_key="patient_id", required_keys=["thickness"], **m.kwargs)
    summary = validate_dataset(records, optional_label_when={"thickness": "thin"}, **kwargs)
    assert summary.records == {"training": 3, "validation": 1} and summary.images_checked == 4
    del records["training"][0]["thickness"]  # a thick volume that lost its thickness: not selectable
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, optional_label_when={"thickness": ["thin"]}, **kwargs)
    assert excinfo.value.problems == [Problem("training", "good_0.nii.gz", "the record has no 'thickness'.")]
    records["training"][0]["thickness"] = "thick"
    with pytest.raises(DatasetValidationError) as excinfo:  # without the exemption, the thin volume needs a label
        validate_dataset(records, **kwargs)
    assert excinfo.value.problems == [Problem("training", "thin.nii.gz", "the record has no label 'label'.")]


def test_cxr_lung_masks_missing_unreadable_of_another_shape_or_with_nan(tmp_path):
    m = MODALITIES["cxr_mask"]
    records = _dataset(m, tmp_path)
    bad = [m.record(tmp_path, f"m{i}", i, f"M{i}") for i in range(4)]
    del bad[0]["lung_mask"]
    bad[1]["lung_mask"] = str(tmp_path / "gone_lung.png")
    bad[2]["lung_mask"] = _png(tmp_path / "small_lung.png", np.zeros((8, 12), np.uint8) + 255)
    plane = np.ones(SHAPE_2D, np.float32)
    plane[3, 4] = np.nan
    bad[3]["lung_mask"] = _nifti(tmp_path / "nan_lung.nii.gz", plane)
    records["training"] += bad
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, patient_key="patient_id", **m.kwargs)
    gone = tmp_path / "gone_lung.png"
    assert excinfo.value.problems == [
        Problem("training", "m0.png", "the record has no 'lung_mask'."),
        Problem("training", "m1.png", f"mask 'lung_mask' gone_lung.png: image file or folder {gone} does not exist."),
        Problem("training", "m2.png", "mask 'lung_mask' small_lung.png has spatial shape (8, 12), the image (16, 12)."),
        Problem("training", "m3.png", "mask 'lung_mask' nan_lung.nii.gz holds 1 NaN or infinite value(s)."),
    ]  # fmt: skip


def test_2d_pixel_range_and_rgb_converted_to_grayscale(tmp_path):
    m = MODALITIES["image_2d"]
    records = _dataset(m, tmp_path)
    rgb = np.random.default_rng(3).integers(0, 256, (*SHAPE_2D[::-1], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")  # an RGB export of a CXR: the 2D bundles read it as grayscale
    records["training"].append({"image": str(tmp_path / "rgb.png"), "label": 1, "patient_id": "R"})
    assert validate_dataset(records, **m.kwargs).images_checked == 4
    hounsfield = _nifti(tmp_path / "hu.nii.gz", _ct(0, SHAPE_2D))  # a slice in HU where 8-bit pixels are expected
    records["training"][-1]["image"] = hounsfield
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, **m.kwargs)
    top = float(_ct(0, SHAPE_2D).max())
    assert [str(p) for p in excinfo.value.problems] == [
        f"[training] hu.nii.gz: values in [-1000, {top:g}] exceed the Hounsfield-unit limits (0.0, 255.0); "
        "not a CT in HU?"
    ]


def test_a_split_that_repeats_another_is_checked_once_not_reported_as_a_leak(tmp_path):
    """k-fold cross-validation writes test = validation (medxai.crossval); a partial overlap is still a leak."""
    m = MODALITIES["ct_volume"]
    records = _dataset(m, tmp_path)
    records["test"] = [dict(r) for r in records["validation"]]
    summary = validate_dataset(records, patient_key="patient_id", **m.kwargs)
    assert summary.records == {"training": 2, "validation": 1, "test": 1} and summary.images_checked == 3
    records["test"].append(records["training"][0])
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records, patient_key="patient_id", **m.kwargs)
    assert sorted((p.split, p.case) for p in excinfo.value.problems) == [
        ("test", "good_0.nii.gz"), ("test", "good_v.nii.gz"), ("training", "good_0.nii.gz"),
        ("validation", "good_v.nii.gz"),
    ]  # fmt: skip


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("false", False), ("False", False),
                                             ("true", True), ("0", False), ("yes", True), (None, False), (1, True)])
def test_the_validate_data_switch_reads_command_line_strings(value, expected):
    assert as_switch(value) is expected


def test_a_switched_off_check_reads_nothing_and_a_bad_switch_is_named(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": [{"image": "gone.nii.gz"}]}')  # would fail: no validation list, no file
    assert validate_datalist(datalist, enabled="false") is None
    datalist.write_text('{"training": [{"image": "gone.nii.gz"}], "validation": [{"image": "gone_too.nii.gz"}]}')
    summary = validate_datalist(datalist, label_key=None, check_images="false")  # as `--...#check_images false`
    assert summary.records == {"training": 1, "validation": 1} and summary.images_checked == 0
    with pytest.raises(DatasetError, match=r"validate_data must be true or false, got 'maybe'\."):
        validate_datalist(datalist, enabled="maybe")


def test_threads_give_the_same_problems_in_the_same_order(tmp_path):
    m = MODALITIES["ct_volume"]
    records = _dataset(m, tmp_path)
    for case in (missing_file, nan_and_inf, constant_image, shorter_than_a_section, label_outside_the_class_range):
        records["training"].append(case(m, tmp_path)[0])
    with pytest.raises(DatasetValidationError) as sequential:
        validate_dataset(records, **m.kwargs)
    with pytest.raises(DatasetValidationError) as threaded:
        validate_dataset(records, num_workers=3, **m.kwargs)
    assert len(sequential.value.problems) == 5 and threaded.value.problems == sequential.value.problems
    del records["training"][2:]
    assert validate_dataset(records, num_workers=2, **m.kwargs).images_checked == 3
