"""The CPU demo learns: CXRNet tells the four synthetic classes apart well above chance, and its explanation
maps put more of their energy on the known lesions than a uniform map would.

``medxai demo --bundle covid19_cxrnet_classification`` runs the bundle's ``train.json`` + ``demo.json`` (240
synthetic 128 x 128 radiographs with moderate or severe disease, 96 px network input, 1000 iterations;
docs/README.md reports test accuracy 0.79 and the explanation comparison). This test runs that demo (about
4 minutes on one core), with ``explain.json`` scoring every test image for its own class, and asserts the
held-out quality (48 test radiographs, 12 per class; chance accuracy 0.25), that every map's energy share
inside the lesion masks beats the lesion's share of the image (paired bootstrap interval above 0; on one core
it measured lifts of 0.008 for the representation image, 0.256 Grad-CAM, 0.059 saliency) and that the
AOPPC figures are consistent with their curves. (At 64 px the representation image fell below chance, -0.005:
the demo's size is what the claim needs.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_runner import REPO, copy_bundle_for_demo

from medxai.cli import demo

BUNDLE = REPO / "bundles" / "covid19_cxrnet_classification"
EVERY_CASE = {"explain_target_class": None}  # explain every test image for its own class (36 with lesions)


@pytest.mark.timeout(1200)
def test_demo_beats_chance_and_its_maps_land_on_lesions(tmp_path, monkeypatch):
    bundles = copy_bundle_for_demo(BUNDLE.name, tmp_path, EVERY_CASE)
    bundle = bundles / BUNDLE.name
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    demo(bundle=BUNDLE.name, steps="training,evaluate,explain", bundles_dir=str(bundles))

    report = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert report["n_cases"] == 48
    assert report["accuracy"] >= 0.6, report["confusion_matrix"]  # measured 0.79
    assert report["macro"]["f1"] >= 0.6, report["per_class"]  # measured 0.80
    assert report["per_class"]["covid19"]["auc"] >= 0.9, report["per_class"]["covid19"]  # measured 0.99
    comparison = json.loads((bundle / "eval" / "explain" / "explanation_comparison.json").read_text())
    assert comparison["n_cases"] == 48 and set(comparison["methods"]) == {"cxrnet", "gradcam", "saliency"}
    for method, entry in comparison["methods"].items():
        assert entry["energy_lift"]["n"] == 36  # the normal images have no lesion
        low, _ = entry["energy_lift"]["ci95"]
        assert low > 0.0, (method, entry["energy_lift"])
        curve = np.array(entry["mean_curve"])
        assert entry["aoppc"]["mean"] == pytest.approx(curve[0] - curve[1:].mean(), abs=1e-6)
