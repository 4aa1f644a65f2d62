"""End to end: the covid19_ct_mil_classification bundle trains, evaluates, infers and explains.

Runs ``python -m monai.bundle`` exactly as a user does (a subprocess, from another working directory,
``--bundle_root`` pointing at a copy of the bundle), with a tiny overlay so the chain takes about a minute
on CPU, and checks what each step writes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import BundleCopy, REPO, assert_report_links_every_case, copy_bundle, trained_copy
from PIL import Image

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"

TINY = {
    "demo_args": {"num_cases": 21, "shape": [48, 48, 16]},
    "backbone": "tiny",
    "image_size": [32, 32],
    "train_num_slices": 8,
    "section_length": 4,
    "top_k": 2,
    "batch_size": 2,
    "num_iterations": 14,
    "num_workers": 0,
    "cache_rate": 1.0,
    "explain_num_samples": 64,
    "explain_top_k": 1,
    "explain_superpixels": 10,
}


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("ct_mil"), TINY)


def test_training_writes_a_plain_state_dict_and_tensorboard_maps(trained_bundle):
    bundle = trained_bundle.bundle
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and any(k.startswith("edm.") for k in state)
    events = list((bundle / "eval").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in events:
        acc = EventAccumulator(str(event), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    assert "train_loss" in tags and "val_auc" in tags
    assert any(t.startswith("edm_cam") for t in tags)


def test_evaluate_writes_patient_slice_and_localisation_metrics(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")
    out = trained_bundle.bundle / "eval"
    report = json.loads((out / "metrics.json").read_text())
    test_cases = json.loads(next(trained_bundle.cache.glob("demo_ct_*/datalist.json")).read_text())["test"]
    assert report["n_cases"] == len(test_cases)
    assert sum(report["counts"][k] for k in ("tp", "fp", "tn", "fn")) == len(test_cases)
    for name in ("roc.png", "pr.png", "confusion.png"):
        assert Image.open(out / name).format == "PNG"
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == sorted(Path(c["image"]).name.split(".")[0] for c in test_cases)
    localization = json.loads((out / "localization.json").read_text())
    with_lesions = [c for c in test_cases if c["lesion_slices"]]
    assert localization["summary"]["cases"] == len(with_lesions)
    for record in localization["per_case"]:
        assert 0.0 <= record["energy_share"] <= 1.0 and 0.0 < record["chance_energy_share"] < 1.0
    slices = json.loads((out / "slice_metrics.json").read_text())
    assert slices["n_cases"] == sum(len(c["slice_labels"]) for c in test_cases)


def test_inference_writes_maps_in_input_geometry_boxes_and_sentences(trained_bundle):
    trained_bundle.run("inference.json")
    out = trained_bundle.bundle / "eval" / "inference"
    datalist = next(trained_bundle.cache.glob("demo_ct_*/datalist.json"))
    test_cases = json.loads(datalist.read_text())["test"]
    with open(out / "predictions.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(test_cases)
    for case in test_cases:
        name = Path(case["image"]).name.split(".")[0]
        source = nib.load(datalist.parent / case["image"])
        edm = nib.load(out / name / f"{name}_map.nii.gz")
        assert edm.shape[:3] == source.shape and np.allclose(edm.affine, source.affine, atol=1e-4)
        summary = json.loads((out / name / f"{name}_summary.json").read_text())
        probs = summary["probabilities"]
        assert set(probs) == {"non-COVID-19", "COVID-19"} and all(0.0 <= p <= 1.0 for p in probs.values())
        assert summary["sentence"].startswith("COVID-19 (probability")
        assert all(len(scores) == source.shape[2] for scores in summary["slice_scores"].values())
        boxes = json.loads((out / name / f"{name}_boxes.json").read_text())
        assert isinstance(boxes, (list, dict))
        assert Image.open(out / name / f"{name}_overlay.png").format == "PNG"


def test_explain_writes_lime_shap_and_embeddings(trained_bundle):
    trained_bundle.run("inference.json", "explain.json")
    out = trained_bundle.bundle / "eval" / "explain"
    superpixel_files = list(out.glob("*/*_superpixels.json"))
    assert superpixel_files
    assert_report_links_every_case(out, [p.parent.name for p in sorted(out.glob("*/*_summary.json"))])
    content = json.loads(superpixel_files[0].read_text())
    text = json.dumps(content)
    assert "lime" in text and "kernel_shap" in text
    for method in ("tsne", "pca"):
        with open(out / f"embedding_{method}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and {"case", "slice", "x", "y", "label", "group"} <= set(rows[0])
        assert Image.open(out / f"embedding_{method}.png").format == "PNG"


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "num_iterations": 4})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    bundle = copy.bundle
    # both ranks ran their trainer to the end (each logs its own completion)
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2
    from medxai.networks.ct_mil import CTMILNet

    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DDP
    net = CTMILNet(backbone="tiny", section_length=TINY["section_length"], k=TINY["top_k"])
    net.load_state_dict(state)
