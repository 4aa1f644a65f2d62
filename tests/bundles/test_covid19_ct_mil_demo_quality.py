"""The CPU demo learns: ``medxai demo`` at a smaller in-plane size reaches patient AUC >= 0.9 on held-out volumes.

The README's first command runs ``medxai demo`` (the bundle's ``train.json`` + ``demo.json``: 70 training
patients, normal vs COVID-19 with moderate or severe lesions, 64 x 64 slices, 720 iterations). This test
runs the same command on a copy of the bundle whose ``demo.json`` only shrinks the slices to 48 x 48 and the
schedule to 540 iterations (30 epochs), so it takes about two minutes on 2 CPU cores, and asserts what the
demo promises on the 20 held-out test patients: patient AUC >= 0.9, and an EDM map that puts more of its
energy on the lesions than a uniform map would (``localization.json``).

The demo set is read from the user's cache (``$MEDXAI_CACHE``), where the README's first command left it.
"""

from __future__ import annotations

import json

import pytest
from bundle_runner import REPO, copy_bundle_for_demo

from medxai.cli import demo

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"
SMALLER = {"image_size": [48, 48], "num_iterations": 540, "val_interval": 30}


@pytest.mark.timeout(900)
def test_smaller_demo_reaches_patient_auc_0_9_and_its_maps_find_the_lesions(tmp_path, monkeypatch):
    bundles = copy_bundle_for_demo(BUNDLE.name, tmp_path, SMALLER)
    bundle = bundles / BUNDLE.name
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    demo(steps="training,evaluate", bundles_dir=str(bundles))

    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert metrics["n_cases"] == 20 and metrics["counts"]["per_class"] == {"non-COVID-19": 10, "COVID-19": 10}
    assert metrics["auc"] >= 0.9, metrics
    localization = json.loads((bundle / "eval" / "localization.json").read_text())["summary"]
    assert localization["cases"] == 10
    # share of the positive map energy inside the lesion masks vs a uniform map over the image
    assert localization["mean_energy_share"] > 2 * localization["mean_chance_energy_share"], localization
