"""medxai.data.validate: every kind of bad input is reported up front, naming the case and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_utils import FAKE_PATIENT_ID, write_ct_series
from PIL import Image

from medxai.data.privacy import pseudonym
from medxai.data.validate import (
    DatasetSummary,
    DatasetValidationError,
    Problem,
    validate_datalist,
    validate_dataset,
)
from medxai.errors import DatasetError

SHAPE = (12, 10, 6)


def ct(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A small volume in HU: air around soft tissue."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000.0, np.float32)
    vol[2:-2, 2:-2] = rng.normal(40.0, 10.0, size=vol[2:-2, 2:-2].shape)
    return vol


def nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return str(path)


def problems_of(excinfo: pytest.ExceptionInfo) -> list[Problem]:
    assert isinstance(excinfo.value, DatasetError)
    return excinfo.value.problems


def only_problem(records_by_split, **kwargs) -> Problem:
    """The single problem raised for ``records_by_split`` (also checks it is in the message)."""
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(records_by_split, **kwargs)
    found = problems_of(excinfo)
    assert len(found) == 1, found
    assert str(found[0]) in str(excinfo.value)
    return found[0]


@pytest.fixture
def good(tmp_path) -> dict[str, list[dict]]:
    return {
        "training": [{"image": nifti(tmp_path / f"ct_{i}.nii.gz", ct(i)), "label": i % 2} for i in range(3)],
        "validation": [{"image": nifti(tmp_path / "ct_v.nii.gz", ct(9)), "label": 1}],
    }


def test_a_good_dataset_passes_with_its_summary(good):
    summary = validate_dataset(good, num_classes=2, min_depth=4, check_hu=True)
    assert summary == DatasetSummary(
        records={"training": 3, "validation": 1},
        images_checked=4,
        label_counts={"training": {0: 2, 1: 1}, "validation": {1: 1}},
    )


def test_missing_file(good, tmp_path):
    good["training"].append({"image": str(tmp_path / "gone.nii.gz"), "label": 0})
    p = only_problem(good, num_classes=2)
    assert (p.split, p.case) == ("training", "gone.nii.gz") and "does not exist" in p.problem


def test_truncated_files(good, tmp_path):
    whole = Path(good["training"][0]["image"]).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)  # ~4 kB: does not compress
    Image.fromarray(noise).save(tmp_path / "x.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "x.png").read_bytes()[:100])
    good["training"] += [{"image": str(tmp_path / name), "label": 0} for name in ("cut.nii.gz", "cut.png")]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2)
    by_case = {p.case: p.problem for p in problems_of(excinfo)}
    assert set(by_case) == {"cut.nii.gz", "cut.png"}
    assert by_case["cut.nii.gz"].startswith("cannot read nifti") and by_case["cut.png"].startswith("cannot read raster")


def test_text_file_named_nifti_and_unknown_format(good, tmp_path):
    (tmp_path / "notes.nii.gz").write_text("not an image at all\n")
    (tmp_path / "scan.xyz").write_text("?")
    good["validation"] += [{"image": str(tmp_path / name), "label": 0} for name in ("notes.nii.gz", "scan.xyz")]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2)
    by_case = {p.case: p.problem for p in problems_of(excinfo)}
    assert set(by_case) == {"notes.nii.gz", "scan.xyz"}
    assert "cannot read nifti" in by_case["notes.nii.gz"]
    assert "cannot tell the format" in by_case["scan.xyz"]


def test_every_problem_is_listed_not_only_the_first(good, tmp_path):
    good["training"] += [{"image": str(tmp_path / f"gone_{i}.nii.gz"), "label": 0} for i in range(3)]
    good["validation"].append({"image": good["training"][0]["image"], "label": 7})
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2)
    found = problems_of(excinfo)
    missing = sorted(p.case for p in found if "does not exist" in p.problem)
    assert missing == ["gone_0.nii.gz", "gone_1.nii.gz", "gone_2.nii.gz"]
    assert Problem("validation", "ct_0.nii.gz", "label 7 is outside the class range [0, 2).") in found
    assert "dataset check found 6 problem(s) in 5 of 8 record(s)" in str(excinfo.value)


def _series(tmp_path: Path, name: str, n: int = 6, **kwargs) -> tuple[Path, list[Path]]:
    folder = tmp_path / name
    hu = np.stack([ct(k, (8, 8, 1))[..., 0] for k in range(n)])
    return folder, write_ct_series(folder, hu, **kwargs)


def test_dicom_missing_and_duplicated_slices(tmp_path):
    gap, files = _series(tmp_path, "gap_series")
    files[3].unlink()
    dup, files = _series(tmp_path, "dup_series", seed=1)
    dup_copy = dup / "copy.dcm"
    dup_copy.write_bytes(files[2].read_bytes())
    ok, _ = _series(tmp_path, "good_series", seed=2)
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset({"training": [{"image": str(gap)}, {"image": str(dup)}, {"image": str(ok)}]}, label_key=None)
    by_case = {p.case: p.problem for p in problems_of(excinfo)}
    assert set(by_case) == {"gap_series", "dup_series"}
    assert "uneven slice gaps from 2.500 to 5.000 mm" in by_case["gap_series"]
    assert "same slice position" in by_case["dup_series"]


def test_dicom_inconsistent_orientation_and_pixel_spacing(tmp_path):
    tilted, files = _series(tmp_path, "tilted")
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.8, 0.6]
    ds.save_as(files[4])
    tilted_slice = files[4].name
    spaced, files = _series(tmp_path, "spaced")
    ds = pydicom.dcmread(files[1])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(files[1])
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset({"training": [{"image": str(tilted)}, {"image": str(spaced)}]}, label_key=None)
    by_case = {p.case: p.problem for p in problems_of(excinfo)}
    assert f"slice {tilted_slice} has ImageOrientationPatient [1, 0, 0, 0, 0.8, 0.6]" in by_case["tilted"]
    assert "inconsistent orientation" in by_case["tilted"] and "[1, 0, 0, 0, 0.8, 0.6]" in by_case["tilted"]
    assert "inconsistent pixel spacing" in by_case["spaced"] and "[0.9, 0.9]" in by_case["spaced"]
    assert "[0.7, 0.7]" in by_case["spaced"]


def test_2d_image_where_3d_is_expected_and_the_reverse(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "slice.png")
    p = only_problem({"training": [{"image": str(tmp_path / "slice.png"), "label": 0}]}, num_classes=2)
    assert p.case == "slice.png" and "2D image of shape (1, 8, 8) where a 3D volume" in p.problem
    volume = {"training": [{"image": nifti(tmp_path / "vol.nii.gz", ct()), "label": 0}]}
    p = only_problem(volume, num_classes=2, expected_dims=2)
    assert p.case == "vol.nii.gz" and p.problem.startswith(
        "4 dimensions, shape (1, 12, 10, 6): a 3D volume where a 2D image (C, H, W)"
    )


def test_rgb_ct_and_4d_series(tmp_path):
    rgb = np.stack([ct(0)] * 3, axis=-1)  # (H, W, D, 3): NIfTI vector image, loads as 3 channels
    p = only_problem({"training": [{"image": nifti(tmp_path / "rgb.nii.gz", rgb)}]}, label_key=None)
    assert p.case == "rgb.nii.gz" and "3 channels" in p.problem and "RGB" in p.problem
    series = np.stack([ct(0)] * 5, axis=-1)
    p = only_problem({"training": [{"image": nifti(tmp_path / "dyn.nii.gz", series)}]}, label_key=None)
    assert p.case == "dyn.nii.gz" and "5 channels" in p.problem and "time series" in p.problem


def test_empty_volume_and_shorter_than_a_section(tmp_path):
    empty = nifti(tmp_path / "empty.nii.gz", np.zeros((8, 8, 0), np.float32))
    p = only_problem({"training": [{"image": empty}]}, label_key=None)
    assert p.case == "empty.nii.gz" and "empty volume: the header gives shape (8, 8, 0) (no voxels)." in p.problem
    short = nifti(tmp_path / "short.nii.gz", ct(0, (8, 8, 3)))
    p = only_problem({"training": [{"image": short}]}, label_key=None, min_depth=4)
    assert p.case == "short.nii.gz" and "3 slice(s) along the last axis, fewer than min_slices = 4" in p.problem


def test_nan_inf_and_constant(tmp_path):
    vol = ct(0)
    vol[1, 1, 1], vol[2, 2, 2], vol[3, 3, 3] = np.nan, np.nan, np.inf
    flat = np.full(SHAPE, -1000.0, np.float32)
    records = [{"image": nifti(tmp_path / "nan.nii.gz", vol)}, {"image": nifti(tmp_path / "flat.nii.gz", flat)}]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset({"training": records}, label_key=None)
    by_case = {p.case: p.problem for p in problems_of(excinfo)}
    assert by_case["nan.nii.gz"] == f"2 NaN and 1 infinite voxel(s) of {np.prod(SHAPE)}."
    assert by_case["flat.nii.gz"].startswith("constant volume (every voxel is -1000)")


def test_extreme_size_is_refused_from_the_header(tmp_path):
    # A 5000 x 2 x 2 header with a 1-byte dtype; the bound is checked before pixels are read.
    path = nifti(tmp_path / "long.nii.gz", np.zeros((5000, 2, 2), np.uint8))
    p = only_problem({"training": [{"image": path}]}, label_key=None)
    assert p.case == "long.nii.gz" and "extreme size: shape (5000, 2, 2)" in p.problem and "max_dim = 4096" in p.problem
    p = only_problem({"training": [{"image": nifti(tmp_path / "big.nii.gz", ct())}]}, label_key=None, max_voxels=500)
    assert f"holds {np.prod(SHAPE)} voxels, more than the bound max_voxels = 500" in p.problem


def test_labels_outside_the_class_range(good, tmp_path):
    good["training"][0]["label"] = 2
    good["training"][1]["label"] = -1
    good["training"][2]["label"] = "covid"
    del good["validation"][0]["label"]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2, check_images=False)
    assert problems_of(excinfo) == [
        Problem("training", "ct_0.nii.gz", "label 2 is outside the class range [0, 2)."),
        Problem("training", "ct_1.nii.gz", "label -1 is outside the class range [0, 2)."),
        Problem("training", "ct_2.nii.gz", "label 'label' = 'covid' is not an integer class index."),
        Problem("validation", "ct_v.nii.gz", "the record has no label 'label'."),
    ]


def test_label_map_outside_the_class_range_and_of_another_shape(tmp_path):
    image = nifti(tmp_path / "head.nii.gz", ct())
    seg = np.zeros(SHAPE, np.uint8)
    seg[3, 3, 3] = 4  # FreeSurfer code where classes 0..2 are expected
    small = np.zeros((6, 6, 6), np.uint8)
    small[1, 1, 1] = 1
    records = [
        {"image": image, "label": nifti(tmp_path / "head_seg.nii.gz", seg)},
        {"image": image, "label": nifti(tmp_path / "small_seg.nii.gz", small)},
    ]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset({"training": records}, num_classes=3)
    found = [p.problem for p in problems_of(excinfo)]
    assert found[0].startswith("label map head_seg.nii.gz: labels [4] are outside the class range [0, 3)")
    assert found[1] == f"label map small_seg.nii.gz has spatial shape (6, 6, 6), the image {SHAPE}."


def test_duplicate_patients_across_splits_by_key_and_by_path(good):
    for split, records in good.items():
        for i, record in enumerate(records):
            record["patient_id"] = f"P{i}"
    good["validation"][0]["patient_id"] = "P1"
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2, patient_key="patient_id", check_images=False)
    text = str(excinfo.value)
    who = f"duplicate across splits: patient {pseudonym('P1')} ('patient_id') is also in"
    assert problems_of(excinfo) == [
        Problem("training", "ct_1.nii.gz", f"{who} ['validation']."),
        Problem("validation", "ct_v.nii.gz", f"{who} ['training']."),
    ]
    assert "'P1'" not in text  # the raw patient id never reaches the message
    good["validation"][0]["image"] = good["training"][2]["image"]
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset(good, num_classes=2, check_images=False)
    found = [(p.split, p.case) for p in problems_of(excinfo)]
    assert found == [("training", "ct_2.nii.gz"), ("validation", "ct_2.nii.gz")]
    assert "the same image file is also in" in problems_of(excinfo)[0].problem


def test_optional_test_split_and_patient_key_fallback(tmp_path, good):
    datalist = tmp_path / "datalist.json"
    training = [
        {"image": Path(r["image"]).name, "label": r["label"], "patient_id": f"P{i}"} for i, r in enumerate(good["training"])
    ]
    validation = [{"image": "ct_v.nii.gz", "label": 1}]  # no patient id: identified by its image
    test = [{"image": "ct_x.nii.gz", "label": 0, "patient_id": "P2"}, {"image": "ct_v.nii.gz", "label": 1}]
    nifti(tmp_path / "ct_x.nii.gz", ct(5))
    datalist.write_text(json.dumps({"training": training, "validation": validation}))
    summary = validate_datalist(datalist, optional_splits=["test"], num_classes=2, patient_key="patient_id")
    assert summary.records == {"training": 3, "validation": 1}  # an absent optional split is no problem
    datalist.write_text(json.dumps({"training": training, "validation": validation, "test": test}))
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_datalist(datalist, optional_splits=["test"], num_classes=2, patient_key="patient_id")
    assert [(p.split, p.case) for p in problems_of(excinfo)] == [
        ("training", "ct_2.nii.gz"), ("test", "ct_x.nii.gz"), ("validation", "ct_v.nii.gz"), ("test", "ct_v.nii.gz"),
    ]


def test_dicom_series_patient_never_leaks(tmp_path):
    folder, files = _series(tmp_path, "series")
    files[2].unlink()
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_dataset({"training": [{"image": str(folder)}]}, label_key=None)
    assert FAKE_PATIENT_ID not in str(excinfo.value)


def test_malformed_json_datalists(tmp_path, good):
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": [{"image": "a.nii.gz", "label": 0},]}')
    with pytest.raises(DatasetError, match=r"bad.json is not valid JSON: .* at line 1, column"):
        validate_datalist(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="must be a JSON object with one list per split, got list"):
        validate_datalist(bad)
    datalist = tmp_path / "datalist.json"
    training = [{"image": Path(r["image"]).name, "label": r["label"]} for r in good["training"]]
    datalist.write_text(json.dumps({"training": [*training, "ct_9.nii.gz", {"label": 1}], "test": []}))
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_datalist(datalist, num_classes=2)
    assert problems_of(excinfo) == [
        Problem("validation", "-", "datalist datalist.json has no 'validation' list; it has ['training', 'test']."),
        Problem("training", "record 3", "the record is a str, not an object with 'image'."),
        Problem("training", "record 4", "the record has no 'image'."),
    ]
    datalist.write_text(json.dumps({"training": training, "validation": [{"image": "ct_v.nii.gz", "label": 1}]}))
    assert validate_datalist(datalist, num_classes=2, check_images=False).records == {"training": 3, "validation": 1}


def test_malformed_csv_datalists(tmp_path, good):
    names = [Path(r["image"]).name for r in good["training"]]
    table = tmp_path / "datalist.csv"
    table.write_text(
        "image,label,split\n"
        f"{names[0]},0,training\n"
        f"{names[1]},1\n"  # a field short
        f"{names[2]},x,training\n"
        f"missing.nii.gz,1,validation\n"
        f"{names[0]},1,validation\n"
        f"{names[1]},1,traning\n"
        f"{names[2]},1,test\n"
    )
    with pytest.raises(DatasetValidationError) as excinfo:
        validate_datalist(table, num_classes=2)
    assert problems_of(excinfo) == [
        Problem("training", names[1], "datalist datalist.csv line 3 has 2 fields, the header 3."),
        Problem("traning", names[1], "datalist datalist.csv line 7: unknown split 'traning'."),
        Problem("training", names[2], "label 'label' = 'x' is not an integer class index."),
        Problem("validation", "missing.nii.gz", f"image file or folder {tmp_path / 'missing.nii.gz'} does not exist."),
        Problem("training", names[0], "duplicate across splits: the same image file is also in ['validation']."),
        Problem("validation", names[0], "duplicate across splits: the same image file is also in ['training']."),
    ]
    table.write_text("")
    with pytest.raises(DatasetError, match="datalist.csv is empty: no header row"):
        validate_datalist(table)
    table.write_text(f"image,label\n{names[0]},0\n{names[1]},1\n")
    summary = validate_datalist(table, ["training"], num_classes=2)
    assert summary.records == {"training": 2} and summary.label_counts == {"training": {0: 1, 1: 1}}


def test_missing_datalist(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        validate_datalist(tmp_path / "nope.json")


def test_a_good_2d_dataset_passes_and_rgb_without_grayscale_is_named(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(tmp_path / "cxr.png")
    records = {"training": [{"image": str(tmp_path / "cxr.png"), "label": 2}]}
    summary = validate_dataset(records, num_classes=3, expected_dims=2, loader_kwargs={"grayscale": True})
    assert summary.images_checked == 1 and summary.label_counts == {"training": {2: 1}}
    p = only_problem(records, num_classes=3, expected_dims=2)
    assert p.case == "cxr.png" and "3 channels, shape (3, 20, 16)" in p.problem and "RGB" in p.problem
