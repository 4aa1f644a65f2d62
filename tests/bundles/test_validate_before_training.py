"""Every bundle's own ``train.json`` runs :func:`medxai.data.validate.validate_datalist` in ``initialize``: a bad
dataset stops training before the first iteration with every problem listed, a good one passes, and
``validate_data: false`` switches the check off.

The six bundles are checked in-process with ``ConfigWorkflow(...).initialize()`` (the step ``monai.bundle run``
takes before ``run``) on small demo sets copied to a ``dataset_dir``, each spoiled in the ways its modality can
be; one subprocess run of ``python -m monai.bundle run training`` shows that nothing is trained; one in-process
``multi_gpu_train.json`` initialisation (gloo, one rank) shows that the multi-GPU run checks too.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from bundle_runner import REPO, copy_bundle
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from medxai.data.demo import ensure_demo_dataset
from medxai.data.privacy import pseudonym
from medxai.data.validate import DatasetSummary, DatasetValidationError
from medxai.errors import DatasetError

BUNDLES = REPO / "bundles"
CHECK = "$medxai.data.validate.validate_datalist(@datalist, enabled=@validate_data, **@validate_data_args)"

#: small versions of the demo sets: demo set name and generator arguments
DEMOS: dict[str, tuple[str, dict[str, Any]]] = {
    "ct": ("ct", {"num_cases": 8, "shape": [48, 48, 16],
                  "fractions": {"training": 0.5, "validation": 0.25, "test": 0.25}}),
    "ct_slices": ("ct_slices", {"num_cases": 12, "shape": [64, 48, 8], "slices_per_case": 1,
                                "fractions": {"training": 0.5, "validation": 0.17, "test": 0.33}}),
    "cxr": ("cxr", {"num_cases": 12, "size": [64, 64],
                    "fractions": {"training": 0.5, "validation": 0.25, "test": 0.25}}),
    "brain": ("brain", {"num_subjects": 6, "shape": [48, 48, 30], "spacing_mm": [4.0, 4.0, 2.0],
                        "fractions": {"training": 0.5, "validation": 0.2, "test": 0.3}}),
}  # fmt: skip
BUNDLE_DEMO = {
    "covid19_ct_mil_classification": "ct",
    "covid19_ct_transfer_classification": "ct_slices",
    "covid19_cxr_ensemble_classification": "cxr",
    "covid19_cxrnet_classification": "cxr",
    "cxr_lung_segmentation": "cxr",
    "brain_ventricle_segmentation": "brain",
}
OVERRIDES = {"covid19_cxr_ensemble_classification": {"label_key": "label3"}}  # the demo's three-class label


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory) -> dict[str, Path]:
    """The small demo sets (datalist folders), generated once for this module."""
    cache = tmp_path_factory.mktemp("validate_demo_cache")
    return {key: ensure_demo_dataset(name, cache_dir=cache, **args).parent for key, (name, args) in DEMOS.items()}


def _dataset(demo_sets: dict[str, Path], bundle: str, root: Path) -> tuple[Path, dict[str, Any]]:
    """A private copy of the bundle's demo set and its datalist content."""
    folder = root / "dataset"
    shutil.copytree(demo_sets[BUNDLE_DEMO[bundle]], folder)
    return folder, json.loads((folder / "datalist.json").read_text())


def _initialize(bundle: str, dataset: Path, configs: tuple[str, ...] = ("train.json",), **overrides: Any) -> list:
    """``ConfigWorkflow(...).initialize()`` of the bundle's own configs with ``dataset_dir``; its results."""
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLES / bundle / "configs" / name) for name in configs],
        meta_file=str(BUNDLES / bundle / "configs" / "metadata.json"),
        logging_file=str(BUNDLES / bundle / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(BUNDLES / bundle),
        **{"dataset_dir": str(dataset), **OVERRIDES.get(bundle, {}), **overrides},
    )
    return workflow.initialize()


def _check_error(bundle: str, dataset: Path, kind: type = DatasetValidationError, **kwargs: Any) -> Exception:
    """The dataset check's error from :func:`_initialize` (MONAI raises it as the cause of its RuntimeError)."""
    with pytest.raises(RuntimeError, match="Failed to evaluate") as excinfo:
        _initialize(bundle, dataset, **kwargs)
    assert isinstance(excinfo.value.__cause__, kind), excinfo.value.__cause__
    return excinfo.value.__cause__


# ---- how each bundle's dataset is spoiled: (datalist content, folder) -> the expected problem lines ----


def _name(record: dict) -> str:
    return Path(record["image"]).name


def _duplicate(content: dict) -> list[str]:
    """Put the first training case's patient into validation as well; the two expected lines."""
    shared = content["training"][0]
    content["validation"][0]["patient_id"] = shared["patient_id"]
    who = f"duplicate across splits: patient {pseudonym(shared['patient_id'])} ('patient_id') is also in"
    return [f"[training] {_name(shared)}: {who} ['validation'].",
            f"[validation] {_name(content['validation'][0])}: {who} ['training']."]  # fmt: skip


def _with_nan(folder: Path, source: str, name: str) -> str:
    """A float copy of the image ``source`` with one NaN voxel, saved as NIfTI ``images/name``."""
    path = folder / source
    data = np.asarray(nib.load(path).dataobj if path.suffix == ".gz" else Image.open(path), np.float32)
    data[(1,) * data.ndim] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / "images" / name))
    return f"images/{name}"


def spoil_ct_mil(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    volume = nib.load(folder / training[0]["image"])
    short = nib.Nifti1Image(np.asarray(volume.dataobj)[..., :3], volume.affine)
    nib.save(short, str(folder / "images" / "short.nii.gz"))
    nan = _with_nan(folder, training[0]["image"], "with_nan.nii.gz")
    training += [{**training[1], "image": nan, "patient_id": "x1"},
                 {**training[1], "image": "images/short.nii.gz", "patient_id": "x2"},
                 {**training[1], "image": "images/gone.nii.gz", "patient_id": "x3"}]  # fmt: skip
    training[1]["covid"] = 3
    return [
        f"[training] with_nan.nii.gz: 1 NaN and 0 infinite voxel(s) of {48 * 48 * 16}.",
        "[training] short.nii.gz: 3 slice(s) along the last axis, fewer than min_slices = 16 (shape (1, 48, 48, 3)).",
        f"[training] gone.nii.gz: image file or folder {folder / 'images' / 'gone.nii.gz'} does not exist.",
        f"[training] {_name(training[1])}: label 3 is outside the class range [0, 2).",
        *_duplicate(content),
    ]


def spoil_ct_transfer(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    nib.save(nib.Nifti1Image(np.full((64, 48, 4), 100.0, np.float32) + np.arange(4), np.eye(4)),
             str(folder / "images" / "volume.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image(np.linspace(-1000, 200, 64 * 48, dtype=np.float32).reshape(64, 48), np.eye(4)),
             str(folder / "images" / "hu.nii.gz"))  # fmt: skip
    training += [{**training[1], "image": "images/volume.nii.gz", "patient_id": "x1"},
                 {**training[1], "image": "images/hu.nii.gz", "patient_id": "x2"}]  # fmt: skip
    training[1]["label"] = 2
    return [
        "[training] volume.nii.gz: 4 dimensions, shape (1, 64, 48, 4): a 3D volume where a 2D image (C, H, W) is "
        "expected; a CT or MRI volume, or a stack of slices?",
        "[training] hu.nii.gz: values in [-1000, 200] exceed the Hounsfield-unit limits (0.0, 255.0); not a CT in HU?",
        f"[training] {_name(training[1])}: label 2 is outside the class range [0, 2).",
        *_duplicate(content),
    ]


def spoil_cxr_ensemble(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    (folder / "images" / "cut.png").write_bytes((folder / training[0]["image"]).read_bytes()[:100])
    training += [{**training[1], "image": "images/cut.png", "patient_id": "x1"},
                 {**training[1], "image": "images/gone.png", "patient_id": "x2"}]  # fmt: skip
    training[1]["label3"] = 3
    cut = folder / "images" / "cut.png"
    return [
        f"[training] cut.png: cannot read raster {cut}: OSError: image file is truncated",
        f"[training] gone.png: image file or folder {folder / 'images' / 'gone.png'} does not exist.",
        f"[training] {_name(training[1])}: label 3 is outside the class range [0, 3).",
        *_duplicate(content),
    ]


def spoil_cxrnet(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    nan = _with_nan(folder, training[0]["image"], "with_nan.nii.gz")
    training.append({**training[1], "image": nan, "patient_id": "x1"})
    del training[2]["lung_mask"]
    training[1]["label"] = 4
    return [
        f"[training] {_name(training[1])}: label 4 is outside the class range [0, 4).",
        f"[training] {_name(training[2])}: the record has no 'lung_mask'.",
        f"[training] with_nan.nii.gz: 1 NaN and 0 infinite voxel(s) of {64 * 64}.",
        *_duplicate(content),
    ]


def spoil_lung_segmentation(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(folder / "labels" / "small_lung.png")
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(folder / "images" / "blank.png")
    training[1]["lung_mask"] = "labels/small_lung.png"
    training[2]["lung_mask"] = "labels/gone_lung.png"
    training.append({**training[3], "image": "images/blank.png", "patient_id": "x1"})
    return [
        f"[training] {_name(training[1])}: mask 'lung_mask' small_lung.png has spatial shape (64, 32), "
        "the image (64, 64).",
        # a relative path that does not exist stays as the datalist wrote it (MONAI resolves only existing ones)
        f"[training] {_name(training[2])}: mask 'lung_mask' gone_lung.png: image file or folder "
        "labels/gone_lung.png does not exist.",
        "[training] blank.png: constant volume (every voxel is 90); blank or failed reconstruction?",
        *_duplicate(content),
    ]


def spoil_brain(content: dict, folder: Path) -> list[str]:
    training = content["training"]
    thick = next(r for r in training if r["thickness"] == "thick")
    thin = next(r for r in training if r["thickness"] == "thin")
    label = nib.load(folder / thick["label"])
    seg = np.asarray(label.dataobj).copy()
    seg[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(seg, label.affine), str(folder / "labels" / "aseg.nii.gz"))
    found = sorted({int(v) for v in np.unique(seg)})
    good_label = thick["label"]
    thick["label"] = "labels/aseg.nii.gz"
    del thin["label"]  # an unlabelled thin volume is what semi-supervised training expects: no problem
    volume = nib.load(folder / thick["image"])
    plane = nib.Nifti1Image(np.asarray(volume.dataobj)[:, :, 0], volume.affine)
    nib.save(plane, str(folder / "images" / "plane.nii.gz"))
    training.append({**thick, "image": "images/plane.nii.gz", "label": good_label, "patient_id": "x1"})
    training.append({"image": thick["image"], "label": good_label, "patient_id": "x2"})  # no thickness to select by
    lines = [
        f"[training] {_name(thick)}: label map aseg.nii.gz: labels [7] are outside the class range [0, 4); "
        f"labels found: {found}.",
        "[training] plane.nii.gz: 2D image of shape (1, 48, 48) where a 3D volume (C, H, W, D) is expected; a single "
        "slice or a 2D picture?",
        f"[training] {_name(thick)}: the record has no 'thickness'.",
    ]
    content["validation"][0]["patient_id"] = thick["patient_id"]
    who = f"duplicate across splits: patient {pseudonym(thick['patient_id'])} ('patient_id') is also in"
    same = [r for r in training if r.get("patient_id") == thick["patient_id"]]
    lines += [f"[training] {_name(r)}: {who} ['validation']." for r in same]
    lines.append(f"[validation] {_name(content['validation'][0])}: {who} ['training'].")
    return lines


SPOIL: dict[str, Callable[[dict, Path], list[str]]] = {
    "covid19_ct_mil_classification": spoil_ct_mil,
    "covid19_ct_transfer_classification": spoil_ct_transfer,
    "covid19_cxr_ensemble_classification": spoil_cxr_ensemble,
    "covid19_cxrnet_classification": spoil_cxrnet,
    "cxr_lung_segmentation": spoil_lung_segmentation,
    "brain_ventricle_segmentation": spoil_brain,
}


@pytest.mark.parametrize("bundle", list(BUNDLE_DEMO))
def test_train_json_checks_the_dataset_in_initialize(bundle, demo_sets, tmp_path):
    folder, content = _dataset(demo_sets, bundle, tmp_path)
    summary = _initialize(bundle, folder)[-1]  # set_determinism, then the check
    assert isinstance(summary, DatasetSummary)
    assert summary.records == {s: len(content[s]) for s in ("training", "validation", "test")}
    assert summary.images_checked == sum(summary.records.values())

    expected = SPOIL[bundle](content, folder)
    (folder / "datalist.json").write_text(json.dumps(content))
    error = _check_error(bundle, folder)
    found = [str(p) for p in error.problems]
    assert sorted(found) == sorted(expected), "\n".join(found)
    assert str(error).startswith(f"dataset check found {len(expected)} problem(s)")
    assert "synthetic-" not in str(error)  # patients are named by pseudonym only

    # switched off: nothing is read; "false" is what `--validate_data false` gives on the command line
    assert _initialize(bundle, folder, validate_data=False)[-1] is None
    assert _initialize(bundle, folder, validate_data="false")[-1] is None

    (folder / "datalist.json").write_text('{"training": [{"image": "images/a.png", "label": 0},]}')  # a stray comma
    error = _check_error(bundle, folder, kind=DatasetError)
    assert str(error) == f"datalist {folder / 'datalist.json'} is not valid JSON: Expecting value at line 1, column 53."


@pytest.mark.parametrize("bundle", list(BUNDLE_DEMO))
def test_multi_gpu_train_json_keeps_the_check(bundle):
    """``multi_gpu_train.json`` replaces ``initialize``: the check follows the process group set-up, on every rank."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    train = ConfigParser.load_config_file(str(BUNDLES / bundle / "configs" / "train.json"))
    assert train["initialize"][-1] == CHECK and train["validate_data"] is True
    assert parser["initialize"][-1] == CHECK and "init_process_group" in parser["initialize"][0]


def test_multi_gpu_initialize_stops_on_a_bad_dataset(demo_sets, tmp_path, monkeypatch):
    """One gloo rank through ``train.json`` + ``multi_gpu_train.json``: the process group starts, the check raises."""
    import torch.distributed as dist

    bundle = "covid19_ct_mil_classification"
    folder, content = _dataset(demo_sets, bundle, tmp_path)
    content["training"][0]["covid"] = 5
    (folder / "datalist.json").write_text(json.dumps(content))
    with socket.socket() as probe:  # a free port for the one-rank process group
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": port}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    try:
        error = _check_error(bundle, folder, configs=("train.json", "multi_gpu_train.json"))
        assert dist.is_initialized()  # the check ran after the process group was set up
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    name = Path(content["training"][0]["image"]).name
    assert [str(p) for p in error.problems] == [f"[training] {name}: label 5 is outside the class range [0, 2)."]


TINY = {"backbone": "tiny", "image_size": [32, 32], "train_num_slices": 8, "section_length": 4, "top_k": 2,
        "batch_size": 2, "num_iterations": 2, "num_workers": 0}  # fmt: skip


def test_monai_bundle_run_training_stops_before_the_first_iteration(demo_sets, tmp_path):
    bundle = "covid19_ct_mil_classification"
    folder, content = _dataset(demo_sets, bundle, tmp_path)
    expected = spoil_ct_mil(content, folder)
    (folder / "datalist.json").write_text(json.dumps(content))
    copy = copy_bundle(bundle, tmp_path, {**TINY, "dataset_dir": str(folder)})
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(copy.config_files("train.json")), "--bundle_root", str(copy.bundle),
        "--meta_file", str(copy.bundle / "configs" / "metadata.json"),
        "--logging_file", str(copy.bundle / "configs" / "logging.conf"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=copy.cwd, env=copy.env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    # TINY's section_length 4 is what min_depth follows
    expected = [line.replace("min_slices = 16", "min_slices = 4") for line in expected]
    assert f"DatasetValidationError: dataset check found {len(expected)} problem(s) in" in log, log[-3000:]
    for line in expected:
        assert line in log, line
    assert content["training"][0]["patient_id"] not in log  # named by pseudonym only
    assert "Engine run starting" not in log and "Epoch[1]" not in log
    assert not (copy.bundle / "models" / "model.pt").exists()
    assert not list((copy.bundle / "eval").glob("events.out.tfevents.*"))
