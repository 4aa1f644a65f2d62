"""End to end: the covid19_ct_mil_classification inference reports bad cases and still writes every good one.

Runs ``python -m monai.bundle run`` as a user does (a subprocess, from another folder, on a copy of the
bundle with a tiny overlay) on a datalist of two good synthetic volumes, a missing file and a volume with
NaN voxels. The checkpoint is the tiny network's initial state dict (no training needed: the test is about
which cases get outputs, not about their accuracy).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import OVERLAY_NAME, REPO, copy_bundle

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"

TINY = {
    "backbone": "tiny",
    "image_size": [32, 32],
    "section_length": 4,
    "top_k": 2,
    "num_workers": 0,
}
GOOD = ["ct_0000", "ct_0001"]


def _write_cases(root: Path) -> Path:
    """Two good phantoms, a missing file and a NaN copy of the first phantom; returns the datalist path."""
    from medxai.data.synthetic.ct import generate_ct_dataset

    generated = json.loads(generate_ct_dataset(root, num_cases=2, shape=(48, 48, 16), seed=0).read_text())
    good = sorted((r for split in ("training", "validation", "test") for r in generated[split]),
                  key=lambda r: r["image"])
    assert [Path(r["image"]).name.split(".")[0] for r in good] == GOOD
    source = nib.load(root / good[0]["image"])
    volume = np.asarray(source.dataobj, dtype=np.float32)
    volume[10:14, 20:24, 5] = np.nan
    nib.save(nib.Nifti1Image(volume, source.affine), root / "images" / "ct_nan.nii.gz")
    test = [
        {"image": good[0]["image"]},
        {"image": "images/ct_missing.nii.gz"},
        {"image": "images/ct_nan.nii.gz"},
        {"image": good[1]["image"]},
    ]
    datalist = root / "bad_cases_datalist.json"
    datalist.write_text(json.dumps({"test": test}))
    return datalist


@pytest.fixture(scope="module")
def bundle_with_bad_cases(tmp_path_factory):
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("ct_mil_bad")
    datalist = _write_cases(root / "data")
    copy = copy_bundle(BUNDLE.name, root, {**TINY, "dataset_dir": str(datalist)})
    # the checkpoint: the tiny network exactly as the inference config builds it, before any training
    parser = ConfigParser()
    parser.read_config(copy.config_files("inference.json"))
    torch.manual_seed(0)
    (copy.bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), copy.bundle / "models" / "model.pt")
    log = copy.run("inference.json")
    return copy.bundle, datalist, log


def test_every_good_case_gets_its_outputs(bundle_with_bad_cases):
    bundle, datalist, _ = bundle_with_bad_cases
    out = bundle / "eval" / "inference"
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == GOOD
    for row in rows:
        probabilities = [float(row["probability_non-COVID-19"]), float(row["probability_COVID-19"])]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == GOOD  # no folder for a bad case
    for name in GOOD:
        source = nib.load(datalist.parent / "images" / f"{name}.nii.gz")
        edm = nib.load(out / name / f"{name}_map.nii.gz")
        assert edm.shape[:3] == source.shape and np.allclose(edm.affine, source.affine, atol=1e-4)
        summary = json.loads((out / name / f"{name}_summary.json").read_text())
        assert len(next(iter(summary["slice_scores"].values()))) == source.shape[2]


def test_bad_cases_are_named_with_their_reason(bundle_with_bad_cases):
    bundle, _, log = bundle_with_bad_cases
    report = json.loads((bundle / "eval" / "inference" / "bad_cases.json").read_text())
    assert [entry["case"] for entry in report] == ["ct_missing", "ct_nan"]
    missing, nan = (entry["error"] for entry in report)
    # named as predictions.csv names cases; the folder path stays out of the report
    assert missing == "InputError: image file or folder ct_missing does not exist."
    # 4 x 4 voxels on one slice of a 48 x 48 x 16 volume
    assert nan == f"InputError: case 'ct_nan' (key 'image'): 16 NaN and 0 infinite voxel(s) of {48 * 48 * 16}."
    # one warning line per bad case, then the count
    assert log.count("skipped case ct_missing: InputError") == 1
    assert log.count("skipped case ct_nan: InputError") == 1
    assert "2 of 4 cases skipped" in log


def test_explain_overlay_moves_the_report_with_its_outputs(bundle_with_bad_cases):
    from monai.bundle import ConfigParser

    bundle, _, _ = bundle_with_bad_cases
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("inference.json", "explain.json")] + [str(bundle / OVERLAY_NAME)])
    parser["bundle_root"] = str(bundle)
    assert parser.get_parsed_content("bad_cases_path") == f"{bundle}/eval/explain/bad_cases.json"
    assert parser["dataloader"]["report_path"] == "@bad_cases_path"
