"""End to end on DICOM: both CT bundles read pydicom-written CT, predict, explain and write DICOM back, and no
patient identifier of the source reaches any output file, DICOM object, log or TensorBoard file.

The inputs are two synthetic chest CT phantoms written as DICOM CT series (one file per slice, shuffled file
names, HU through RescaleIntercept) of two fake patients; one series folder is named after its patient, as
exports often are. ``covid19_ct_mil_classification`` reads each series folder as a volume;
``covid19_ct_transfer_classification`` classifies 2D slices and reads single DICOM slice files of the same
series. Each bundle runs ``inference.json`` + ``explain.json`` + ``dicom_output.json`` (and the tiny overlay)
as a user does, with the tiny network's initial weights (the test is about reading, geometry, references and
privacy, not accuracy).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle_runner import REPO, BundleCopy, copy_bundle
from monai.bundle import ConfigParser

sys.path.insert(0, str(REPO / "tests" / "data"))
from dicom_utils import write_ct_series  # noqa: E402

from medxai.data.io import load_image  # noqa: E402
from medxai.data.privacy import pseudonym  # noqa: E402

PATIENTS = [  # (folder, name, ID, birth date, accession number); the second folder is named after its patient
    ("series_a", "Doe^Jane-SECRET", "PID-SECRET-4711", "19411123", "ACC-SECRET-0815"),
    ("Roe_Richard_HIDDEN", "Roe^Richard-HIDDEN", "PID-HIDDEN-0042", "19520229", "ACC-HIDDEN-0007"),
]
SECRETS = [s for p in PATIENTS for s in p[1:]] + ["SECRET", "HIDDEN", "Jane", "Richard", "Roe_Richard"]
SLICE = 8  # the slice file of each series the transfer bundle classifies (and, for training, its neighbours)

MIL_TINY = {
    "backbone": "tiny",
    "image_size": [32, 32],
    "section_length": 4,
    "top_k": 2,
    "num_workers": 0,
    "explain_num_samples": 32,
    "explain_top_k": 1,
    "explain_superpixels": 8,
    "embedding_methods": ["pca"],
}
TRANSFER_TINY = {
    "backbone": "small_resnet",
    "pretrained": False,
    "canvas_hw": [32, 44],
    "num_workers": 0,
    "embedding_method": "pca",
    "use_lesion_masks": False,
    # the bundle's PNG slices hold 0..255; DICOM slices hold HU: window them (the MIL bundle's lung window) and
    # accept the whole stored HU range in the input check
    "pixel_range": [-1350, 150],
    "load_image#1#hu_limits": [-32768, 32767],
}


@pytest.fixture(scope="module")
def dicom_data(tmp_path_factory) -> Path:
    """Two phantoms as DICOM series under ``root/dicom/<folder>``, with the fake patients' identities."""
    from medxai.data.synthetic.ct import generate_ct_dataset

    root = tmp_path_factory.mktemp("dicom_e2e")
    generated = json.loads(generate_ct_dataset(root / "nifti", num_cases=2, shape=(48, 48, 16), seed=0).read_text())
    cases = (r for split in generated.values() if isinstance(split, list) for r in split)
    records = sorted(cases, key=lambda r: r["image"])
    for record, (folder, name, pid, birth, accession) in zip(records, PATIENTS):
        volume = np.asarray(nib.load(root / "nifti" / record["image"]).dataobj, dtype=float)
        hu = np.clip(volume, -1024, 3000).transpose(2, 1, 0)  # (X, Y, Z) -> (slices, rows, columns)
        files = write_ct_series(root / "dicom" / folder, hu, patient_name=name, patient_id=pid, seed=len(folder))
        for f in files:
            ds = pydicom.dcmread(f)
            ds.PatientBirthDate, ds.AccessionNumber, ds.PatientSex, ds.StudyID = birth, accession, "O", "S1"
            ds.save_as(f)
    return root


def _ordered_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))


def _with_initial_weights(copy: BundleCopy) -> None:
    """The tiny network exactly as the inference config builds it, before any training, as ``model.pt``."""
    parser = ConfigParser()
    parser.read_config(copy.config_files("inference.json"))
    torch.manual_seed(0)
    (copy.bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), copy.bundle / "models" / "model.pt")


def _assert_nothing_identifies_the_patients(places: list[Path], logs: list[str]) -> int:
    """Search every file under ``places`` (bytes; text and binary alike) and the logs; returns the file count."""
    files = [f for place in places for f in place.rglob("*") if f.is_file()]
    for f in files:
        raw = f.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in raw and secret not in f.name, (f, secret)
    for log in logs:
        for secret in SECRETS:
            assert secret not in log, secret
    return len(files)


def _check_dicom_objects(case_folder: Path, source_folder: Path, boxes: list[dict]) -> int:
    """The written Parametric Map and box Segmentation reference the source and carry its map and boxes;
    returns the number of boxes."""
    case = case_folder.name
    source = pydicom.dcmread(next(source_folder.glob("*.dcm")), stop_before_pixels=True)
    pm = pydicom.dcmread(case_folder / f"{case}_map_pm.dcm")
    nifti = np.asarray(nib.load(case_folder / f"{case}_map.nii.gz").dataobj, dtype=np.float32)
    for ds in [pm] + ([pydicom.dcmread(case_folder / f"{case}_boxes_seg.dcm")] if boxes else []):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert ds.PatientName.family_name == ds.PatientID == pseudonym(source.PatientID)
    # the same float32 numbers as the NIfTI map, one frame per referenced source slice
    np.testing.assert_array_equal(np.sort(pm.pixel_array.ravel()), np.sort(nifti.ravel()))
    assert pm.NumberOfFrames == (nifti.shape[2] if nifti.ndim == 3 else 1)
    if boxes:
        seg = pydicom.dcmread(case_folder / f"{case}_boxes_seg.dcm")
        assert len(seg.SegmentSequence) == len(boxes)
        pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
        counts = np.zeros(len(boxes), dtype=int)
        shared = seg.SharedFunctionalGroupsSequence[0]
        for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
            identification = fg if "SegmentIdentificationSequence" in fg else shared  # shared with one segment
            counts[identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber - 1] += int(pixels[i].sum())
        expected = [int(np.prod(np.subtract(b["max"], b["min"]) + 1)) for b in boxes]
        assert counts.tolist() == expected
    return len(boxes)


def test_ct_mil_reads_dicom_series_and_writes_dicom_without_identifiers(dicom_data, tmp_path):
    folders = [dicom_data / "dicom" / p[0] for p in PATIENTS]
    # a bad case in a folder named after its patient: the series with a missing slice (uneven gaps)
    broken = dicom_data / "dicom" / "Doe_Jane_SECRET_incomplete"
    shutil.copytree(folders[0], broken)
    _ordered_files(broken)[5].unlink()
    datalist = dicom_data / "mil_datalist.json"
    test = [{"image": str(f), "covid": i, "centre": "A"} for i, f in enumerate([*folders, broken])]
    datalist.write_text(json.dumps({"test": test}))
    copy = copy_bundle("covid19_ct_mil_classification", tmp_path, {**MIL_TINY, "dataset_dir": str(datalist)})
    _with_initial_weights(copy)
    log = copy.run("inference.json", "explain.json", "dicom_output.json")
    out = copy.bundle / "eval" / "explain"
    with open(out / "predictions.csv") as handle:
        rows = {r["case"]: r for r in csv.DictReader(handle)}
    bad = json.loads((out / "bad_cases.json").read_text())
    assert [b["case"] for b in bad] == [pseudonym(str(broken))] and "uneven slice gaps" in bad[0]["error"]
    cases = {pseudonym(str(f)): f for f in folders}  # DICOM series are named by the pseudonym of their path
    assert set(rows) == set(cases)
    n_boxes = 0
    for case, folder in cases.items():
        assert 0.0 <= float(rows[case]["probability_COVID-19"]) <= 1.0
        image = load_image(folder, orientation="RAS")  # the input as the bundle reads it
        edm = nib.load(out / case / f"{case}_map.nii.gz")
        assert edm.shape == image.shape[1:] and np.allclose(edm.affine, image.affine.numpy(), atol=1e-4)
        boxes = json.loads((out / case / f"{case}_boxes.json").read_text())["boxes"]
        n_boxes += _check_dicom_objects(out / case, folder, boxes)
        assert list((out / case).glob("*_superpixels.json"))  # LIME / Kernel SHAP of explain.json ran
    assert n_boxes > 0  # the box Segmentation was written and checked
    assert (out / "embedding_pca.csv").is_file()
    n_files = _assert_nothing_identifies_the_patients([copy.bundle, copy.cwd], [log])
    assert n_files > 20


def test_ct_transfer_reads_dicom_slices_trains_and_writes_dicom_without_identifiers(dicom_data, tmp_path):
    slices = [_ordered_files(dicom_data / "dicom" / p[0]) for p in PATIENTS]
    test = [{"image": str(files[SLICE]), "label": i} for i, files in enumerate(slices)]
    training = [{"image": str(files[k]), "label": i} for i, files in enumerate(slices) for k in (SLICE - 2, SLICE + 2)]
    datalist = dicom_data / "transfer_datalist.json"
    # validation: other slices than training's (the dataset check in train.json refuses a file in two splits)
    validation = [{"image": str(files[SLICE - 4]), "label": i} for i, files in enumerate(slices)]
    datalist.write_text(json.dumps({"training": training, "validation": validation, "test": test}))
    overlay = {**TRANSFER_TINY, "dataset_dir": str(datalist), "num_epochs": 1, "batch_size": 2, "val_interval": 1}
    copy = copy_bundle("covid19_ct_transfer_classification", tmp_path, overlay)
    # a short training run on the DICOM slices: TensorBoard scalars and explanation images are written too
    train_log = copy.run("train.json", run_id="training")
    assert list((copy.bundle / "eval").glob("events.out.tfevents.*"))
    log = copy.run("inference.json", "explain.json", "dicom_output.json")
    out = copy.bundle / "eval" / "explain"
    with open(out / "predictions.csv") as handle:
        rows = {r["case"]: r for r in csv.DictReader(handle)}
    cases = {pseudonym(r["image"]): Path(r["image"]) for r in test}
    assert set(rows) == set(cases)
    n_boxes = 0
    for case, file in cases.items():
        image = load_image(file)  # (1, X, Y): columns by rows, with the 4x4 affine of the slice
        saliency = nib.load(out / case / f"{case}_map.nii.gz")
        assert saliency.shape[:2] == image.shape[1:] and np.allclose(saliency.affine, image.affine.numpy(), atol=1e-4)
        boxes = json.loads((out / case / f"{case}_boxes.json").read_text())["boxes"]
        n_boxes += _check_dicom_objects(out / case, file.parent, boxes)
    assert n_boxes > 0
    n_files = _assert_nothing_identifies_the_patients([copy.bundle, copy.cwd], [train_log, log])
    assert n_files > 10
