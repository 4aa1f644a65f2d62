"""End to end: the covid19_cxr_ensemble_classification bundle (DeepCOVIDExplainer, seed 002) trains with cyclic
cosine annealing and saves a snapshot per cycle, selects one, evaluates single models and SCPA / PM ensembles,
infers with a heatmap and a sentence per image, explains with Grad-CAM, Grad-CAM++ and LRP, reports bad inputs
and trains on two ranks.

Runs ``python -m monai.bundle`` as a user does (a subprocess from another working directory, ``--bundle_root``
pointing at a copy of the bundle) with a tiny overlay (64 px phantoms, 32 px input, the CPU test trunk).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import (
    BundleCopy,
    REPO,
    assert_report_links_every_case,
    copy_bundle,
    predicted_cases,
    trained_copy,
    write_bad_images,
)
from monai.bundle import ConfigParser
from PIL import Image

from medxai.networks import ImageClassifier

BUNDLE = REPO / "bundles" / "covid19_cxr_ensemble_classification"
CLASSES = ["normal", "pneumonia", "covid19"]

TINY = {
    "demo_args": {
        "num_cases": 32,
        "size": [64, 64],
        "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375},
    },
    "image_size": [32, 32],
    "backbone": "small_resnet",
    "num_epochs": 4,
    "num_cycles": 2,
    "learning_rate": 0.05,
    "batch_size": 8,
    "val_interval": 1,
    "num_workers": 0,
    "snapshot_criterion": "val_metric",
}


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("ensemble"), TINY)


def _demo_root(copy: BundleCopy) -> Path:
    return next(copy.cache.glob("demo_cxr_*"))


def _split(copy: BundleCopy, split: str) -> list[dict]:
    return json.loads((_demo_root(copy) / "datalist.json").read_text())[split]


def _network(state: dict) -> ImageClassifier:
    network = ImageClassifier("small_resnet", num_classes=3)
    network.load_state_dict(state)  # strict: no DDP prefix, nothing missing
    return network.eval()


def _scalars(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for event in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, [])
    return out


def test_training_saves_one_snapshot_per_cycle_and_selects_one(trained_bundle):
    models = trained_bundle.bundle / "models"
    # T = 4 epochs, C = 2 cycles: cycle length ceil(T / C) = 2, snapshots at the bottom of each cycle
    snapshots = sorted(p.name for p in models.glob("snapshot_*.pt"))
    assert snapshots == ["snapshot_model_epoch=2.pt", "snapshot_model_epoch=4.pt"]
    record = json.loads((models / "snapshot_selection.json").read_text())
    assert record["criterion"] == "val_metric" and record["metric_name"] == "val_accuracy"
    scores = {Path(s["file"]).name: s["score"] for s in record["snapshots"]}
    assert sorted(scores) == snapshots
    best = max(scores.values())
    chosen = [name for name in snapshots if scores[name] == best][-1]  # ties: the later snapshot
    assert Path(record["chosen"]).name == chosen
    model = torch.load(models / "model.pt", weights_only=True)
    snapshot = torch.load(models / chosen, weights_only=True)
    assert model.keys() == snapshot.keys() and all(torch.equal(model[k], snapshot[k]) for k in model)
    _network(model)


def test_learning_rate_follows_eq_1_and_tensorboard_has_scalars_and_maps(trained_bundle):
    scalars = _scalars(trained_bundle.bundle / "eval")
    assert {"train_loss", "val_accuracy", "val_auc"} <= set(scalars)
    assert any(tag.startswith("gradcampp") for tag in scalars)
    lr = dict(scalars["learning_rate"])
    # eq. 1: alpha(t) = alpha_0 / 2 (cos(pi mod(t - 1, 2) / 2) + 1), alpha_0 = 0.05
    expected = {t: 0.05 / 2 * (math.cos(math.pi * ((t - 1) % 2) / 2) + 1) for t in range(1, 5)}
    assert expected == pytest.approx({1: 0.05, 2: 0.025, 3: 0.05, 4: 0.025})
    logged = {t: v for t, v in lr.items() if t in expected}
    assert logged and all(v == pytest.approx(expected[t], rel=1e-5) for t, v in logged.items())


def test_evaluate_reports_per_class_metrics_consistent_with_the_confusion_matrix(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")
    out = trained_bundle.bundle / "eval"
    report = json.loads((out / "metrics.json").read_text())
    test = _split(trained_bundle, "test")
    confusion = np.array(report["confusion_matrix"])
    assert report["class_names"] == CLASSES and confusion.shape == (3, 3)
    assert confusion.sum(1).tolist() == [sum(c["label3"] == k for c in test) for k in range(3)]
    for k, name in enumerate(CLASSES):
        if confusion[:, k].sum():  # PPV, Table III
            assert report["per_class"][name]["precision"] == pytest.approx(confusion[k, k] / confusion[:, k].sum())
    for plot in ("roc.png", "pr.png", "confusion.png"):
        assert Image.open(out / plot).format == "PNG"


def _preprocessed_test_images(copy: BundleCopy) -> tuple[list[str], torch.Tensor]:
    parser = ConfigParser()
    parser.read_config([str(p) for p in copy.config_files("inference.json")])
    parser["bundle_root"] = str(copy.bundle)
    parser["use_lung_mask"] = False
    records = parser.get_parsed_content("records")
    preprocessing = parser.get_parsed_content("preprocessing")
    images = torch.stack([preprocessing(dict(r))["image"].as_tensor().float() for r in records])
    return [Path(r["image"]).stem for r in records], images


@pytest.mark.parametrize("mode", ["scpa", "pm"])
def test_ensemble_of_the_snapshots_gives_eq_2_or_pm_posteriors(trained_bundle, tmp_path, mode, monkeypatch):
    monkeypatch.setenv("MEDXAI_CACHE", str(trained_bundle.cache))
    out = tmp_path / mode
    trained_bundle.monai_bundle(
        "run", "--config_file", str(trained_bundle.config_files("inference.json", "ensemble.json")),
        "--bundle_root", str(trained_bundle.bundle), "--output_dir", str(out), "--ensemble_mode", mode,
    )  # fmt: skip
    names, images = _preprocessed_test_images(trained_bundle)
    snapshots = sorted((trained_bundle.bundle / "models").glob("snapshot_*.pt"))
    with torch.no_grad():
        posteriors = torch.stack([_network(torch.load(p, weights_only=True))(images).softmax(1) for p in snapshots])
    expected = posteriors.sum(0).softmax(1) if mode == "scpa" else posteriors.amax(0) / posteriors.amax(0).sum(1, True)
    with open(out / "predictions.csv") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    for name, probs in zip(names, expected):
        written = [float(rows[name][f"probability_{c}"]) for c in CLASSES]
        assert written == pytest.approx(probs.tolist(), abs=2e-4)
        summary = json.loads((out / name / f"{name}_summary.json").read_text())
        assert summary["predicted_class"] == CLASSES[int(probs.argmax())]


def test_ensemble_evaluation_writes_metrics(trained_bundle, tmp_path):
    out = tmp_path / "ensemble_eval"
    trained_bundle.monai_bundle(
        "run", "--config_file", str(trained_bundle.config_files("train.json", "evaluate.json", "ensemble.json")),
        "--bundle_root", str(trained_bundle.bundle), "--output_dir", str(out),
    )  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_cases"] == len(_split(trained_bundle, "test"))
    confusion = np.array(report["confusion_matrix"])
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert report["macro"]["f1"] is not None


def test_inference_writes_heatmaps_in_input_geometry_boxes_and_sentences(trained_bundle):
    trained_bundle.run("inference.json")
    out = trained_bundle.bundle / "eval" / "inference"
    test = _split(trained_bundle, "test")
    assert json.loads((out / "bad_cases.json").read_text()) == []
    with open(out / "predictions.csv") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(Path(c["image"]).stem for c in test)
    for case in test:
        name = Path(case["image"]).stem
        summary = json.loads((out / name / f"{name}_summary.json").read_text())
        probs = np.array([summary["probabilities"][c] for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and summary["predicted_class"] == CLASSES[probs.argmax()]
        # the sentence of Figs. 2-4: class, probability, method, and a lung zone named anatomically
        sentence = summary["sentence"]
        assert sentence.startswith(f"{summary['predicted_class']} (probability {probs.max():.2f})")
        assert "Grad-CAM++" in sentence and "lung" in sentence
        values = nib.load(str(out / name / f"{name}_map.nii.gz")).get_fdata().squeeze()
        assert values.shape == (64, 64) and values.min() >= 0.0 and values.max() > 0.0  # on the 64 px original
        assert np.array(Image.open(out / name / f"{name}_overlay.png")).shape == (64, 64, 3)


def test_explain_writes_three_maps_per_case_and_compares_their_localisation(trained_bundle):
    trained_bundle.run("inference.json", "explain.json")
    out = trained_bundle.bundle / "eval" / "explain"
    test = _split(trained_bundle, "test")
    for method, label in (("gradcam", "Grad-CAM"), ("gradcampp", "Grad-CAM++"), ("lrp", "LRP")):
        for case in test:
            name = Path(case["image"]).stem
            summary = json.loads((out / method / name / f"{name}_summary.json").read_text())
            assert f"{label} " in summary["sentence"] or f"{label}," in summary["sentence"]
            assert "(probability " in summary["sentence"]  # LRP too: the score written is the probability
            assert (out / method / name / f"{name}_map.nii.gz").is_file()
    assert_report_links_every_case(out, [Path(case["image"]).stem for case in test])
    result = json.loads((out / "explanation_comparison.json").read_text())
    covid = [c for c in test if c["label3"] == 2]
    assert result["n_cases"] == len(covid) > 0 and set(result["methods"]) == {"gradcam", "gradcampp", "lrp"}
    with open(out / "explanation_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    for method, entry in result["methods"].items():
        hits = [float(r["pointing"]) for r in rows if r["method"] == method]
        assert entry["pointing_game"]["mean"] == pytest.approx(np.mean(hits))
        lesion = np.mean([float(r["lesion_fraction"]) for r in rows if r["method"] == method])
        assert entry["uniform_map_energy_in_lesion"]["mean"] == pytest.approx(lesion)


def test_bad_inputs_are_reported_and_good_cases_still_written(trained_bundle, tmp_path):
    root = _demo_root(trained_bundle)
    good = _split(trained_bundle, "test")[:2]
    bad_images = write_bad_images(tmp_path, root / good[0]["image"])
    records = [{"image": str(root / c["image"]), "lung_mask": str(root / c["lung_mask"])} for c in good]
    mask = str(root / good[0]["lung_mask"])
    records += [{"image": str(p), "lung_mask": mask} for p in bad_images.values()]
    bad, out = trained_bundle.infer_on(records, tmp_path)
    assert set(bad) == {"missing", "truncated", "volume", "with_nan"}
    assert "dimension" in bad["volume"] and "NaN" in bad["with_nan"]
    assert predicted_cases(out) == sorted(Path(c["image"]).stem for c in good)


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "num_epochs": 2, "num_cycles": 1})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2
    assert [p.name for p in (copy.bundle / "models").glob("snapshot_*.pt")] == ["snapshot_model_epoch=2.pt"]
    _network(torch.load(copy.bundle / "models" / "model.pt", weights_only=True))


def test_balanced_training_draws_every_class_equally_often(trained_bundle, monkeypatch):
    """Table I's balanced setting: ``balance_classes`` swaps shuffling for 1 / n_class sampling."""
    from torch.utils.data import WeightedRandomSampler

    parser = ConfigParser()
    parser.read_config([str(p) for p in trained_bundle.config_files("train.json")])
    parser["bundle_root"] = str(trained_bundle.bundle)
    parser["balance_classes"] = True
    monkeypatch.setenv("MEDXAI_CACHE", str(trained_bundle.cache))
    loader = parser.get_parsed_content("train#dataloader", instantiate=True)
    records = parser.get_parsed_content("train#records")
    assert isinstance(loader.sampler, WeightedRandomSampler)
    counts = np.bincount([r["label"] for r in records], minlength=3)
    assert counts.min() < counts.max()  # the demo split is imbalanced (pneumonia = bacterial + viral)
    weights = loader.sampler.weights.numpy()
    per_class = [weights[[r["label"] == k for r in records]].sum() for k in range(3)]
    np.testing.assert_allclose(per_class, 1.0)  # each class carries total weight 1
