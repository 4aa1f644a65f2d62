"""The CT MIL bundle on real 2D CT slices: COVID19-CT (UCSD-AI4H) through ``configs/real_ucsd_slices.json``.

The staged subset in ``../shared/data/covid_ct_ucsd`` (8-bit PNG slices, many cut from paper figures, no
Hounsfield units) goes through the datalist builder (patient-level split), then ``python -m monai.bundle``
trains and evaluates as a user runs it (a subprocess from another folder, on a copy of the bundle, a tiny
overlay last). A forward pre-hook saves every input the network sees, so the test checks what training and
evaluation actually fed it: one-slice volumes (B, 1, h, w, 1) in [0, 1] equal to the PNG (x = column, MONAI's
convention) scaled by 1/255 and area-resized, over exactly the datalist's cases. Skipped without the data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bundle_runner import REPO, copy_bundle
from PIL import Image

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"
SIZE = 32

TINY = {
    "backbone": "tiny",
    "image_size": [SIZE, SIZE],
    "batch_size": 64,
    "num_iterations": 7,
    "val_interval": 1,
    "num_workers": 0,
    "cache_rate": 1.0,
}

# Save every input of the network the trainer and the evaluators share, named by mode and call order.
INPUT_PROBE = (
    "$@network.register_forward_pre_hook(lambda module, args: torch.save(args[0].detach().cpu(), "
    "@probe_dir + '/' + ('train' if module.training else 'eval') + '_' + str(next(@probe_counter)).zfill(4) "
    "+ '.pt'))"
)


def _probe(bundle: Path, name: str, run: str) -> Path:
    """Write an overlay ``name`` that hooks the network before running ``run``; return its input folder."""
    folder = bundle / f"inputs_{name}"
    folder.mkdir()
    overlay = {
        "probe_dir": str(folder),
        "probe_counter": "$__import__('itertools').count()",
        "run": [INPUT_PROBE, run],
    }
    (bundle / "configs" / f"{name}.json").write_text(json.dumps(overlay))
    return folder


def _inputs(folder: Path, mode: str) -> list[torch.Tensor]:
    return [torch.load(p, weights_only=True) for p in sorted(folder.glob(f"{mode}_*.pt"))]


def _expected_slice(path: str) -> torch.Tensor:
    """The PNG as the network should see it at evaluation: (x, y) = (column, row), / 255, area resize."""
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0  # (rows, columns), 8-bit grayscale
    as_xy = torch.from_numpy(np.ascontiguousarray(pixels.T))[None, None]
    return F.interpolate(as_xy, size=(SIZE, SIZE), mode="area")[0, 0]


def _assert_png_inputs(inputs: list[torch.Tensor], records: list[dict]) -> None:
    """Evaluation inputs, one case per forward in datalist order, equal the PNG slices."""
    assert len(inputs) == len(records)
    for x, record in zip(inputs, records):
        assert tuple(x.shape) == (1, 1, SIZE, SIZE, 1)
        torch.testing.assert_close(x[0, 0, :, :, 0], _expected_slice(record["image"]), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def ucsd_bundle(shared_data, tmp_path_factory):
    from medxai.data.datasets import build_datalist

    source = shared_data / "covid_ct_ucsd"
    if not (source / "manifest.csv").is_file():
        pytest.skip(f"{source} not present")
    root = tmp_path_factory.mktemp("ct_mil_ucsd")
    data_dir = root / "datalist"
    datalist = build_datalist("covid_ct_ucsd_manifest", source, output=data_dir / "datalist.json", relative=False)
    return copy_bundle(BUNDLE.name, root, {**TINY, "dataset_dir": str(data_dir)}), datalist


def test_datalist_is_patient_disjoint_with_absolute_png_paths(ucsd_bundle):
    _, datalist = ucsd_bundle
    splits = ("training", "validation", "test")
    patients = {name: {r["patient_id"] for r in datalist[name]} for name in splits}
    assert not (patients["training"] & patients["test"] or patients["validation"] & patients["test"])
    assert not patients["training"] & patients["validation"]
    assert sum(len(datalist[name]) for name in splits) == 547  # every staged slice, once
    for name in splits:
        for record in datalist[name]:
            assert Path(record["image"]).is_absolute() and record["image"].endswith(".png")
            assert record["label"] == (record["class_name"] == "COVID")


def test_training_feeds_png_slices_and_evaluation_covers_exactly_the_test_split(ucsd_bundle):
    copy, datalist = ucsd_bundle
    bundle = copy.bundle
    overlay = "real_ucsd_slices.json"
    train_probe = _probe(bundle, "probe_train", "$@train#trainer.run()")
    copy.run("train.json", overlay, "probe_train.json", run_id="training")

    # training: 386 slices in batches of 64 -> one epoch of 7 iterations, each slice seen once, depth 1
    n_train = len(datalist["training"])
    train_inputs = _inputs(train_probe, "train")
    assert len(train_inputs) == -(-n_train // TINY["batch_size"])
    assert sum(x.shape[0] for x in train_inputs) == n_train
    for x in train_inputs:
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (1, SIZE, SIZE, 1)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.amax(dim=(1, 2, 3, 4)).min()) > 0.5  # each 8-bit slice reaches bright tissue / bone
    # validation after the epoch: every validation slice, whole, as the PNG says
    _assert_png_inputs(_inputs(train_probe, "eval"), datalist["validation"])
    assert (bundle / "models" / "model.pt").is_file()

    eval_probe = _probe(bundle, "probe_eval", "$@validate#evaluator.run()")
    copy.run("train.json", "evaluate.json", overlay, "probe_eval.json")
    test_cases = datalist["test"]
    _assert_png_inputs(_inputs(eval_probe, "eval"), test_cases)
    report = json.loads((bundle / "eval" / "metrics.json").read_text())
    n_covid = sum(r["label"] for r in test_cases)
    assert report["n_cases"] == len(test_cases) == 107
    assert report["counts"]["tp"] + report["counts"]["fn"] == n_covid
    assert report["counts"]["tn"] + report["counts"]["fp"] == len(test_cases) - n_covid
    with open(bundle / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == sorted(Path(r["image"]).stem for r in test_cases)
    # no lesion masks and no per-slice labels in this set: those reports have no case to measure
    localization = json.loads((bundle / "eval" / "localization.json").read_text())
    assert localization["summary"]["cases"] == 0 and localization["per_case"] == []
    assert not (bundle / "eval" / "slice_metrics.json").exists()
