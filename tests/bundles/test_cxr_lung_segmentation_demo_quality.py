"""The CPU demo learns: the lung U-Net reaches Dice >= 0.92 and IoU >= 0.85 on held-out synthetic radiographs.

``medxai demo --bundle cxr_lung_segmentation`` runs the bundle's ``train.json`` + ``demo.json`` (100 synthetic
128 x 128 radiographs, 70 training / 10 validation / 20 test, 600 iterations; docs/README.md reports test
Dice 0.97 / IoU 0.95). This test runs the same command on a copy of the bundle whose ``demo.json`` shrinks
the network input to 64 x 64 and the schedule to 480 iterations, and asserts the quality it must still reach
on the 20 held-out test images, plus the consistency of the two metrics (IoU = Dice / (2 - Dice) per image).

The demo set is read from the user's cache (``$MEDXAI_CACHE``), generated there on first use.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from bundle_runner import REPO, copy_bundle_for_demo

from medxai.cli import demo

BUNDLE = REPO / "bundles" / "cxr_lung_segmentation"
SMALLER = {"image_size": [64, 64], "num_iterations": 480, "val_interval": 20}


@pytest.mark.timeout(600)
def test_smaller_demo_reaches_dice_0_92_on_held_out_images(tmp_path, monkeypatch):
    bundles = copy_bundle_for_demo(BUNDLE.name, tmp_path, SMALLER)
    bundle = bundles / BUNDLE.name
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    demo(bundle=BUNDLE.name, steps="training,evaluate", bundles_dir=str(bundles))

    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_cases"] == 20
    assert metrics["mean_dice"] >= 0.92, metrics
    assert metrics["mean_iou"] >= 0.85, metrics
    with open(bundle / "eval" / "val_mean_dice_raw.csv") as f:
        dice = np.array([float(row["mean"]) for row in csv.DictReader(f)])
    with open(bundle / "eval" / "val_mean_iou_raw.csv") as f:
        iou = np.array([float(row["mean"]) for row in csv.DictReader(f)])
    np.testing.assert_allclose(iou, dice / (2 - dice), atol=1e-4)
    assert dice.min() >= 0.75, dice  # no held-out image is badly missed
