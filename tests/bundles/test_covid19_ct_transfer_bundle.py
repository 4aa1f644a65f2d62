"""End to end: the covid19_ct_transfer_classification bundle (Alshazly et al. 2021, seed 004) trains a CT slice
classifier on aspect-preserving canvases with LAMB, evaluates, infers with Grad-CAM and a sentence per slice,
explains (lesion localisation and t-SNE of train and test features) and trains on two ranks; its defaults are
the paper's settings.

Runs ``python -m monai.bundle`` as a user does, with a tiny overlay (12 synthetic patients, a 32 x 44 canvas,
the CPU test trunk, two epochs).
"""

from __future__ import annotations

import csv
import json

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

BUNDLE = REPO / "bundles" / "covid19_ct_transfer_classification"
CONFIGS = BUNDLE / "configs"

TINY = {
    "demo_args": {
        "num_cases": 12,
        "shape": [64, 48, 8],
        "slices_per_case": 1,
        "fractions": {"training": 0.5, "validation": 0.17, "test": 0.33},
    },
    "backbone": "small_resnet",
    "pretrained": False,
    "canvas_hw": [32, 44],
    "num_epochs": 2,
    "learning_rate": 0.01,
    "lr_milestones": [1],
    "lr_values": [0.01, 0.001],
    "weight_decay": 0.0001,
    "batch_size": 4,
    "val_interval": 1,
    "num_workers": 0,
    "embedding_method": "pca",
}


def _parser(*configs: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    parser.get_parsed_content("imports")  # what `monai.bundle run` evaluates first
    return parser


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("transfer"), TINY)


def _demo_root(copy: BundleCopy):
    return next(copy.cache.glob("demo_ct_slices_*"))


def test_defaults_are_the_papers_settings():
    """sec. 5.2 and Table 1: DenseNet-201 on a 253 x 349 canvas, LAMB 3e-4 / wd 1, the step schedule, batch 32,
    100 epochs, blur p = 0.25, no rotation or shear; ImageNet weights wanted ('auto')."""
    parser = _parser("train.json")
    assert parser["backbone"] == "densenet201" and parser["pretrained"] == "auto"
    assert tuple(parser.get_parsed_content("canvas_hw")) == (253, 349)
    assert parser.get_parsed_content("spatial_size") == [349, 253]  # PNG axes as loaded: (X = width, Y = height)
    assert (parser["num_epochs"], parser["batch_size"], parser["weight_decay"]) == (100, 32, 1.0)
    assert parser["lr_milestones"] == [50, 70, 80, 90] and parser["lr_values"] == [3e-4, 1e-4, 3e-5, 1e-5, 3e-6]
    parser = _parser("train.json", backbone="small_resnet", pretrained=False)  # optimizer and schedule only
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer).__name__ == "Lamb" and optimizer.defaults["lr"] == 3e-4
    assert optimizer.defaults["weight_decay"] == 1.0
    scheduler = parser.get_parsed_content("lr_scheduler")
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step(), scheduler.step()
    assert [rates[e] for e in (0, 49, 50, 69, 70, 80, 90, 99)] == pytest.approx(
        [3e-4, 3e-4, 1e-4, 1e-4, 3e-5, 1e-5, 3e-6, 3e-6]
    )
    augment = _parser("train.json").get_parsed_content("train#augmentation")
    names = [type(t).__name__ for t in augment]
    assert names == ["RandScaleCropd", "Resized", "RandFlipd", "RandGaussianSmoothd", "RandGaussianNoised",
                     "RandScaleIntensityd", "RandAdjustContrastd"]
    assert augment[3].prob == 0.25
    assert not any("Affine" in n or "Rotat" in n for n in names)
    assert type(_parser("train.json").get_parsed_content("loss")).__name__ == "CrossEntropyLoss"


def test_two_logit_cross_entropy_is_the_binary_cross_entropy_of_the_logit_difference():
    """The decision documented in docs/README.md: softmax CE over two logits == BCE(sigmoid(z1 - z0), y)."""
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.4]])
    labels = torch.tensor([0, 1, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], labels.float())
    # hand value: mean of softplus(-(2y-1)(z1-z0)) = mean(softplus(-1.5), softplus(1.5), softplus(-1.1))
    hand = (np.log1p(np.exp(-1.5)) + np.log1p(np.exp(1.5)) + np.log1p(np.exp(-1.1))) / 3
    assert ce.item() == pytest.approx(bce.item()) == pytest.approx(hand)


def test_overlays_swap_canvas_for_stretch_and_lamb_for_adam():
    stretch = _parser("train.json", "stretch.json").get_parsed_content("resize")
    assert [type(t).__name__ for t in stretch] == ["Resized"]
    canvas = _parser("train.json").get_parsed_content("resize")
    assert [type(t).__name__ for t in canvas] == ["AspectCanvasd"]
    adam = _parser("train.json", "adam.json", backbone="small_resnet", pretrained=False)
    optimizer = adam.get_parsed_content("optimizer")
    assert type(optimizer).__name__ == "Adam" and optimizer.defaults["lr"] == 3e-4


def test_train_evaluate_infer_explain(trained_bundle):
    copy = trained_bundle
    state = torch.load(copy.bundle / "models" / "model.pt", weights_only=True)
    network = ImageClassifier("small_resnet", num_classes=2, in_channels=3)
    network.load_state_dict(state)
    assert list((copy.bundle / "eval").glob("events.out.tfevents.*"))

    # validation preprocessing: a landscape slice on the 32 x 44 canvas, aspect kept, ImageNet-normalised
    parser = ConfigParser()
    parser.read_config(copy.config_files("train.json"))
    parser["bundle_root"] = str(copy.bundle)
    parser.get_parsed_content("imports")
    import os

    os.environ["MEDXAI_CACHE"] = str(copy.cache)
    try:
        records = parser.get_parsed_content("validate#records")
        item = parser.get_parsed_content("validate#preprocessing")(records[0])
    finally:
        del os.environ["MEDXAI_CACHE"]
    width, height = Image.open(records[0]["image"]).size
    image = item["image"]
    assert tuple(image.shape) == (3, 44, 32)  # (C, X, Y) = (3, W_canvas, H_canvas)
    background = float((0 - 0.485) / 0.229)
    content = (image[0] != background).nonzero()
    box_w = int(content[:, 0].max() - content[:, 0].min() + 1)
    box_h = int(content[:, 1].max() - content[:, 1].min() + 1)
    assert box_w / box_h == pytest.approx(width / height, rel=0.12)
    torch.testing.assert_close(image[0], image[2] * 0.225 / 0.229 + (0.406 - 0.485) / 0.229, atol=1e-5, rtol=0)

    copy.run("train.json", "evaluate.json")
    report = json.loads((copy.bundle / "eval" / "metrics.json").read_text())
    test_records = json.loads((_demo_root(copy) / "datalist.json").read_text())["test"]
    assert report["n_cases"] == len(test_records) == int(np.sum(report["confusion_matrix"]))
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc"):
        assert key in report

    copy.run("inference.json", "explain.json")
    out = copy.bundle / "eval" / "explain"
    first = test_records[0]
    stem = first["image"].rsplit("/", 1)[1][: -len(".png")]
    summary = json.loads((out / stem / f"{stem}_summary.json").read_text())
    assert sum(summary["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert summary["sentence"].startswith(summary["predicted_class"])
    width, height = Image.open(_demo_root(copy) / first["image"]).size
    cam = nib.load(out / stem / f"{stem}_map.nii.gz").get_fdata()
    assert cam.shape[:2] == (width, height)  # Grad-CAM mapped back from the canvas onto the slice
    assert (out / stem / f"{stem}_overlay.png").is_file()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == len(test_records)
    assert_report_links_every_case(out, [p.parent.name for p in sorted(out.glob("*/*_summary.json"))])
    comparison = json.loads((out / "explanation_comparison.json").read_text())
    assert comparison["methods"]["gradcam"]["energy_in_lesion"]["n"] == sum(r["label"] for r in test_records)
    embedding = list(csv.DictReader((out / "embedding" / "embedding_pca.csv").open()))
    train_records = json.loads((_demo_root(copy) / "datalist.json").read_text())["training"]
    assert [r["split"] for r in embedding].count("train") == len(train_records)
    assert [r["split"] for r in embedding].count("test") == len(test_records)
    assert (out / "embedding" / "embedding_pca.png").is_file()



def test_bad_inputs_are_reported_and_good_cases_still_written(trained_bundle, tmp_path):
    root = _demo_root(trained_bundle)
    good = json.loads((root / "datalist.json").read_text())["test"][:2]
    bad_images = write_bad_images(tmp_path, root / good[0]["image"], plane_shape=(64, 48))
    bad_images["too_bright"] = tmp_path / "too_bright.png"
    Image.fromarray(np.full((48, 64), 4000, np.uint16)).save(bad_images["too_bright"])  # 16-bit, outside 8-bit range
    records = [{"image": str(root / c["image"])} for c in good] + [{"image": str(p)} for p in bad_images.values()]
    bad, out = trained_bundle.infer_on(records, tmp_path)
    assert set(bad) == {"missing", "truncated", "volume", "with_nan", "too_bright"}, bad
    assert "dimension" in bad["volume"] and "NaN" in bad["with_nan"]
    assert predicted_cases(out) == sorted(c["image"].rsplit("/", 1)[1][: -len(".png")] for c in good)


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "num_epochs": 1})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    assert log.count("SupervisedTrainer - INFO - Engine run finished") == 2
    network = ImageClassifier("small_resnet", num_classes=2, in_channels=3)
    network.load_state_dict(torch.load(copy.bundle / "models" / "model.pt", weights_only=True))


UCSD = REPO.parent / "shared" / "data" / "covid_ct_ucsd"


@pytest.mark.skipif(not (UCSD / "manifest.csv").is_file(), reason="../shared/data/covid_ct_ucsd is absent")
def test_real_ucsd_slices_land_on_the_densenet201_canvas_with_their_aspect_ratio(tmp_path):
    """The real COVID19-CT subset through the datalist builder and the bundle's own preprocessing (Table 1 canvas)."""
    from medxai.data.datasets import build_datalist

    build_datalist("covid_ct_ucsd_manifest", str(UCSD), output=str(tmp_path / "datalist.json"), relative=False)
    parser = _parser("train.json", "real_ucsd.json", dataset_dir=str(tmp_path))
    records = parser.get_parsed_content("validate#records")
    assert len(records) == 54 and {r["label"] for r in records} == {0, 1}
    transform = parser.get_parsed_content("validate#preprocessing")
    for record in records[:3]:
        width, height = Image.open(record["image"]).size
        image = transform(record)["image"]
        assert tuple(image.shape) == (3, 349, 253)
        content = (image[0] != float((0 - 0.485) / 0.229)).nonzero()
        box_w = int(content[:, 0].max() - content[:, 0].min() + 1)
        box_h = int(content[:, 1].max() - content[:, 1].min() + 1)
        assert max(box_w / 349, box_h / 253) == pytest.approx(1.0, abs=0.01)  # one side fills the canvas
        assert box_w / box_h == pytest.approx(width / height, rel=0.05)
