"""Output folders as the bundles write them, for the report tests (fixtures registered in conftest.py).

- ``ensemble_run``: a CXR ensemble explain run (per-explainer layout ``<method>/<case>/``) written by the
  bundles' own writer :class:`~medxai.transforms.radiograph_outputs.WriteRadiographOutputsd` for three cases
  and two explainers (maps with known blobs give known boxes), then the bundle's own ``finalize`` steps of
  ``[inference.json, explain.json]`` (per-method ``predictions.csv``, then the report); next to it an
  evaluation folder with ``metrics.json``, a ROC PNG, ``predictions.csv`` with labels, and a bad case.
- ``lung_run``: a lung segmentation explain run in the one-folder-per-case layout (the files of
  ``WriteLungSegmentationd``: summary JSON, mask and Grad-CAM PNGs) and its ``finalize`` steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "pneumonia", "covid19"]
METHODS = ["gradcam", "lrp"]
#: case -> (probabilities, (row slice, column slice) of the map's blob)
CASES = {
    "cxr_0001": ([0.2, 0.3, 0.5], (slice(5, 15), slice(10, 30))),
    "cxr_0002": ([0.7, 0.2, 0.1], (slice(20, 35), slice(4, 12))),
    "cxr_0003": ([0.1, 0.6, 0.3], (slice(0, 8), slice(40, 48))),
}
#: a sentence with characters HTML must escape, written into one summary
ODD_SENTENCE = 'covid19 <script>alert("x")</script> & <b>bold</b>'


@dataclass(frozen=True)
class Run:
    bundle: Path
    output_dir: Path
    eval_dir: Path


def run_finalize(bundle: str, bundle_root: Path, **overrides: object) -> None:
    """Evaluate the ``finalize`` list of ``[inference.json, explain.json]`` of ``bundles/<bundle>`` with
    ``bundle_root`` and ``overrides`` (what ``monai.bundle run`` does last), on the files already under its ``eval/explain``."""
    parser = ConfigParser()
    configs = REPO / "bundles" / bundle / "configs"
    parser.read_config([str(configs / "inference.json"), str(configs / "explain.json")])
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    parser.get_parsed_content("finalize")


def _png(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="session")
def ensemble_run(tmp_path_factory) -> Run:
    from medxai.transforms.radiograph_outputs import WriteRadiographOutputsd

    root = tmp_path_factory.mktemp("ensemble")
    output_dir, eval_dir = root / "eval" / "explain", root / "eval"
    for method in METHODS:
        writer = WriteRadiographOutputsd(
            output_dir / method, lung_key=None, class_names=CLASSES, method=method, input_key="image",
            box_min_size=4, case_name_fn=lambda d: d["case"],
        )  # fmt: skip
        for i, (case, (probs, blob)) in enumerate(CASES.items()):
            saliency = torch.zeros(1, 40, 48)
            saliency[(0, *blob)] = 1.0 if method == "gradcam" else 0.5
            generator = torch.Generator().manual_seed(i)
            writer({"case": case, "image_original": torch.rand(1, 40, 48, generator=generator), "map": saliency,
                    "pred": torch.tensor(probs), "image": torch.rand(1, 32, 32, generator=generator)})  # fmt: skip
    summary_path = output_dir / "lrp" / "cxr_0002" / "cxr_0002_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["sentence"] = ODD_SENTENCE
    summary_path.write_text(json.dumps(summary))
    (output_dir / "bad_cases.json").write_text(json.dumps([{"case": "cxr_0009", "error": "truncated PNG <100 bytes>"}]))
    metrics = {
        "task": "multiclass", "class_names": CLASSES, "n_cases": 3, "accuracy": 2 / 3, "auc": 0.8125,
        "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 1, 0]], "macro": {"f1": 0.5555555555555555},
        "curves": {"covid19": {"roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0]}}},
    }  # fmt: skip
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    _png(eval_dir / "roc.png", 60, 50, seed=1)
    (eval_dir / "predictions.csv").write_text(
        "case,label,label_name,predicted,predicted_name\n"
        "cxr_0001,2,covid19,2,covid19\ncxr_0002,0,normal,0,normal\ncxr_0003,2,covid19,1,pneumonia\n"
    )
    run_finalize("covid19_cxr_ensemble_classification", root, explain_methods=METHODS)
    return Run(bundle=root, output_dir=output_dir, eval_dir=eval_dir)


@pytest.fixture(scope="session")
def lung_run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("lungseg")
    output_dir = root / "eval" / "explain"
    for i, (case, pixels) in enumerate((("cxr_0003", 783), ("cxr_0004", 791))):
        folder = output_dir / case
        folder.mkdir(parents=True)
        summary = {"case": case, "image_shape": [64, 64], "lung_pixels": pixels, "lung_fraction": pixels / 4096,
                   "bounding_box": [2, 60, 5, 58], "mean_lung_probability": 0.55 + i / 100,
                   "gradcam_lung_share_in_lung": 0.19 + i / 100}  # fmt: skip
        (folder / f"{case}_summary.json").write_text(json.dumps(summary))
        for j, name in enumerate(("lung", "gradcam_lung", "lung_cropped")):
            _png(folder / f"{case}_{name}.png", 64 - 8 * j, 64, seed=10 * i + j)
    (output_dir / "bad_cases.json").write_text("[]")
    (root / "eval" / "metrics.json").write_text(json.dumps({"split": "test", "n_cases": 2, "mean_dice": 0.875, "mean_iou": 0.7777777777777778}))
    run_finalize("cxr_lung_segmentation", root)
    return Run(bundle=root, output_dir=output_dir, eval_dir=root / "eval")
