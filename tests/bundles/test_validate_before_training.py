"""A bundle's ``initialize`` runs :func:`medxai.data.validate.validate_datalist`: a bad dataset stops training
before the first iteration, with every problem listed; a good one passes.

The check is added by the overlay (``+imports``, ``+initialize``) on a copy of covid19_ct_mil_classification,
exactly as proposed for its ``train.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_runner import REPO, BundleCopy, copy_bundle
from monai.bundle import ConfigWorkflow

from medxai.data.demo import ensure_demo_dataset

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"

VALIDATE = (
    "$medxai.data.validate.validate_datalist(@datalist, ['training', 'validation'], optional_splits=['test'], "
    "label_key=@label_key, num_classes=@num_classes, expected_dims=3, min_depth=@section_length, "
    "patient_key='patient_id', check_hu=True)"
)
OVERLAY = {
    "backbone": "tiny",
    "image_size": [32, 32],
    "train_num_slices": 8,
    "section_length": 4,
    "top_k": 2,
    "batch_size": 2,
    "num_iterations": 2,
    "num_workers": 0,
    "+imports": ["$import medxai.data.validate"],
    "+initialize": [VALIDATE],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A copy of an 8-case demo CT set (48 x 48 x 16 voxels), to be given as ``dataset_dir``."""
    root = tmp_path_factory.mktemp("validate_ct")
    fractions = {"training": 0.5, "validation": 0.25, "test": 0.25}
    demo = ensure_demo_dataset("ct", cache_dir=root / "cache", num_cases=8, shape=[48, 48, 16], fractions=fractions)
    folder = root / "dataset"
    shutil.copytree(demo.parent, folder)
    return folder


def _copy(tmp_path: Path, dataset: Path) -> BundleCopy:
    return copy_bundle(BUNDLE.name, tmp_path, {**OVERLAY, "dataset_dir": str(dataset)})


def test_a_good_dataset_passes_the_initialize_check(tmp_path, dataset):
    copy = _copy(tmp_path, dataset)
    workflow = ConfigWorkflow(
        config_file=copy.config_files("train.json"),
        meta_file=str(copy.bundle / "configs" / "metadata.json"),
        workflow_type="train",
        bundle_root=str(copy.bundle),
    )
    workflow.initialize()  # runs "initialize": set_determinism, then the dataset check
    summary = workflow.parser.get_parsed_content("initialize")[-1]
    datalist = json.loads((dataset / "datalist.json").read_text())
    assert summary.records == {s: len(datalist[s]) for s in ("training", "validation", "test")}
    assert summary.images_checked == sum(summary.records.values())


def test_a_bad_datalist_stops_training_before_the_first_iteration(tmp_path, dataset):
    bad = tmp_path / "bad_dataset"
    shutil.copytree(dataset, bad)
    content = json.loads((bad / "datalist.json").read_text())
    training, validation = content["training"], content["validation"]
    shared, relabelled = training[0], training[1]  # two of the original, good cases
    volume = nib.load(bad / training[0]["image"])
    data = np.asarray(volume.dataobj, np.float32)
    data[10, 10, 3] = np.nan
    nib.save(nib.Nifti1Image(data, volume.affine), str(bad / "images" / "with_nan.nii.gz"))
    nib.save(nib.Nifti1Image(data[..., :3], volume.affine), str(bad / "images" / "short.nii.gz"))
    training += [
        {**training[1], "image": "images/with_nan.nii.gz", "patient_id": "nan-case"},
        {**training[1], "image": "images/short.nii.gz", "patient_id": "short-case"},
        {**training[1], "image": "images/gone.nii.gz", "patient_id": "gone-case"},
    ]
    relabelled["covid"] = 3
    validation.append({**validation[0], "image": shared["image"], "patient_id": shared["patient_id"]})
    (bad / "datalist.json").write_text(json.dumps(content))

    copy = _copy(tmp_path, bad)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(copy.config_files("train.json")), "--bundle_root", str(copy.bundle),
        "--meta_file", str(copy.bundle / "configs" / "metadata.json"),
        "--logging_file", str(copy.bundle / "configs" / "logging.conf"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=copy.cwd, env=copy.env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DatasetValidationError: dataset check found 6 problem(s) in 6 of" in log, log[log.find("DatasetValidationError"):][:1500]
    case = Path(shared["image"]).name
    for line in (
        "[training] with_nan.nii.gz: 1 NaN and 0 infinite voxel(s) of 36864.",
        "[training] short.nii.gz: 3 slice(s) along the last axis, fewer than min_slices = 4",
        "[training] gone.nii.gz: image file or folder",
        f"[training] {Path(relabelled['image']).name}: label 3 is outside the class range [0, 2).",
        f"[training] {case}: duplicate across splits: patient",
        f"[validation] {case}: duplicate across splits: patient",
    ):
        assert line in log, line
    assert shared["patient_id"] not in log  # named by pseudonym only
    # stopped before the trainer started: no iteration, no checkpoint, no TensorBoard events
    assert "Engine run starting" not in log and "Epoch[1]" not in log
    assert not (copy.bundle / "models" / "model.pt").exists()
    assert not list((copy.bundle / "eval").glob("events.out.tfevents.*"))
