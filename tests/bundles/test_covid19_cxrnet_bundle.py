"""End to end: the covid19_cxrnet_classification bundle trains, evaluates, infers and explains; bad inputs are
reported; the original-input baseline and the two-rank run work.

Runs ``python -m monai.bundle`` as a user does (a subprocess, from another working directory, ``--bundle_root``
pointing at a copy of the bundle) with a tiny overlay (64 px phantoms, 32 px network input, the CPU test trunk),
and checks what each step writes and that the numbers agree with each other.
"""

from __future__ import annotations

import csv
import json
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
from PIL import Image

from medxai.networks import CXRNet

BUNDLE = REPO / "bundles" / "covid19_cxrnet_classification"
CLASSES = ["normal", "bacterial", "viral", "covid19"]

TINY = {
    "demo_args": {
        "num_cases": 32,
        "size": [64, 64],
        "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375},
    },
    "image_size": [32, 32],
    "backbone": "small_resnet",
    "decoder_channels": [8, 8, 8],
    "batch_size": 4,
    "learning_rate": 0.001,
    "num_iterations": 8,
    "val_interval": 1,
    "num_workers": 0,
}


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("cxrnet"), TINY)


def _demo_root(copy: BundleCopy) -> Path:
    return next(copy.cache.glob("demo_cxr_*"))


def _split(copy: BundleCopy, split: str) -> list[dict]:
    return json.loads((_demo_root(copy) / "datalist.json").read_text())[split]


def test_training_saves_a_plain_cxrnet_state_dict_and_tensorboard_logs(trained_bundle):
    state = torch.load(trained_bundle.bundle / "models" / "model.pt", weights_only=True)
    network = CXRNet("small_resnet", 4, decoder_channels=(8, 8, 8))
    network.load_state_dict(state)  # strict: the whole network, decoder included, no DDP prefix
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in (trained_bundle.bundle / "eval").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    assert {"train_loss", "val_accuracy", "val_auc"} <= tags
    assert any("reconstruction" in tag or "output" in tag for tag in tags - {"train_loss", "val_accuracy", "val_auc"})


def test_evaluate_reports_per_class_metrics_consistent_with_the_confusion_matrix(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")
    out = trained_bundle.bundle / "eval"
    report = json.loads((out / "metrics.json").read_text())
    test = _split(trained_bundle, "test")
    confusion = np.array(report["confusion_matrix"])
    assert report["class_names"] == CLASSES and confusion.shape == (4, 4)
    assert confusion.sum() == report["n_cases"] == len(test)
    # rows are true classes: they count the test labels
    assert confusion.sum(1).tolist() == [sum(c["label"] == k for c in test) for k in range(4)]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    for k, name in enumerate(CLASSES):
        tp, predicted, actual = confusion[k, k], confusion[:, k].sum(), confusion[k].sum()
        per_class = report["per_class"][name]
        if predicted:
            assert per_class["precision"] == pytest.approx(tp / predicted)
        if actual:
            assert per_class["sensitivity"] == pytest.approx(tp / actual)
    for plot in ("roc.png", "pr.png", "confusion.png"):
        assert Image.open(out / plot).format == "PNG"


def test_inference_writes_probabilities_maps_in_input_geometry_boxes_and_sentences(trained_bundle):
    trained_bundle.run("inference.json")
    out = trained_bundle.bundle / "eval" / "inference"
    test = _split(trained_bundle, "test")
    assert json.loads((out / "bad_cases.json").read_text()) == []
    with open(out / "predictions.csv") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(Path(c["image"]).stem for c in test)
    for case in test:
        name = Path(case["image"]).stem
        folder = out / name
        summary = json.loads((folder / f"{name}_summary.json").read_text())
        probs = np.array([summary["probabilities"][c] for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and summary["predicted_class"] == CLASSES[probs.argmax()]
        assert float(rows[name][f"probability_{summary['predicted_class']}"]) == pytest.approx(probs.max())
        assert summary["sentence"].startswith(f"{summary['predicted_class']} (probability {probs.max():.2f})")
        # the representation image (sigmoid output, seed 001 Fig. 12c) back on the 64 x 64 input grid
        nifti = nib.load(str(folder / f"{name}_map.nii.gz"))
        values = nifti.get_fdata().squeeze()
        assert values.shape == (64, 64) and 0.0 <= values.min() and values.max() <= 1.0
        overlay = np.array(Image.open(folder / f"{name}_overlay.png"))
        assert overlay.shape == (64, 64, 3)
        side_by_side = np.array(Image.open(folder / f"{name}_input.png"))
        assert side_by_side.shape[0] == 64 and side_by_side.shape[1] > 128
        boxes = json.loads((folder / f"{name}_boxes.json").read_text())["boxes"]
        assert boxes == summary["boxes"] and len(boxes) == int(rows[name]["num_boxes"])
        # the input view shows the lung-segmented image: black outside the (resized) lung mask
        lung = np.array(Image.open(_demo_root(trained_bundle) / case["lung_mask"])) > 0
        network_view = side_by_side[:, 68:].astype(float)
        assert network_view[~lung].mean() < 0.25 * network_view[lung].mean()


def test_explain_compares_cxrnet_gradcam_and_saliency_by_aoppc_on_covid_cases(trained_bundle):
    trained_bundle.run("inference.json", "explain.json")
    out = trained_bundle.bundle / "eval" / "explain"
    result = json.loads((out / "explanation_comparison.json").read_text())
    covid = [c for c in _split(trained_bundle, "test") if c["label"] == 3]
    assert result["n_cases"] == len(covid) > 0 and result["target_class"] == "covid19"
    assert set(result["methods"]) == {"cxrnet", "gradcam", "saliency"}
    assert_report_links_every_case(out, [p.parent.name for p in sorted(out.glob("*/*_summary.json"))])
    assert result["x"] == pytest.approx([0.0] + [k / 10 for k in range(1, 11)])
    with open(out / "explanation_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(covid)
    for method, entry in result["methods"].items():
        curve = np.array(entry["mean_curve"])
        # eq. 12: AOPPC = mean over x of p(f(0)) - p(f(x)), here on the mean curve (the mean is linear)
        assert entry["aoppc"]["mean"] == pytest.approx(curve[0] - curve[1:].mean(), abs=1e-6)
        per_case = [float(r["aoppc"]) for r in rows if r["method"] == method]
        assert entry["aoppc"]["mean"] == pytest.approx(np.mean(per_case), abs=1e-6)
        # a uniform map's energy in the lesion = the lesion's share of the image
        lesion = np.mean([float(r["lesion_fraction"]) for r in rows if r["method"] == method])
        assert entry["uniform_map_energy_in_lesion"]["mean"] == pytest.approx(lesion)
        assert 0.0 <= entry["energy_in_lesion"]["mean"] <= 1.0
    assert Image.open(out / "perturbation_curves.png").format == "PNG"


def test_original_input_overlay_feeds_the_unsegmented_image(trained_bundle, tmp_path):
    """Fig. 10's baseline: without lung extraction the network sees the whole radiograph."""
    out = tmp_path / "original"
    trained_bundle.monai_bundle(
        "run", "--config_file", str(trained_bundle.config_files("inference.json", "original_input.json")),
        "--bundle_root", str(trained_bundle.bundle), "--output_dir", str(out),
    )  # fmt: skip
    case = _split(trained_bundle, "test")[0]
    name = Path(case["image"]).stem
    side_by_side = np.array(Image.open(out / name / f"{name}_input.png")).astype(float)
    lung = np.array(Image.open(_demo_root(trained_bundle) / case["lung_mask"])) > 0
    network_view = side_by_side[:, 68:]
    assert network_view[~lung].mean() > 0.5 * network_view[lung].mean()  # the body outside the lungs is shown


def test_bad_inputs_are_reported_and_good_cases_still_written(trained_bundle, tmp_path):
    root = _demo_root(trained_bundle)
    good = _split(trained_bundle, "test")[:2]
    bad_images = write_bad_images(tmp_path, root / good[0]["image"])
    records = [{"image": str(root / c["image"]), "lung_mask": str(root / c["lung_mask"])} for c in good]
    mask = str(root / good[0]["lung_mask"])
    records += [{"image": str(path), "lung_mask": mask} for path in bad_images.values()]
    bad, out = trained_bundle.infer_on(records, tmp_path)
    assert set(bad) == {"missing", "truncated", "volume", "with_nan"}
    assert "3" in bad["volume"] and "dimension" in bad["volume"]  # a 3D volume is not a radiograph
    assert "NaN" in bad["with_nan"]
    for case in good:
        name = Path(case["image"]).stem
        assert (out / name / f"{name}_summary.json").is_file() and (out / name / f"{name}_map.nii.gz").is_file()
    assert predicted_cases(out) == sorted(Path(c["image"]).stem for c in good)


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "num_iterations": 4})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2
    state = torch.load(copy.bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    CXRNet("small_resnet", 4, decoder_channels=(8, 8, 8)).load_state_dict(state)
