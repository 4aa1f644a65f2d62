"""Tests for ``scripts/explanation_gallery.py``: one quick run shared by the tests, plus its building blocks."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medxai.data.synthetic.ct import generate_ct_case

REPO_ROOT = Path(__file__).resolve().parents[2]
METHOD_KEYS = {
    "cam", "edm", "gradcam", "gradcam++", "saliency", "smoothgrad", "lrp", "occlusion", "lime", "kernel_shap"
}


def _load_script():
    path = REPO_ROOT / "scripts" / "explanation_gallery.py"
    spec = importlib.util.spec_from_file_location("explanation_gallery", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    output = tmp_path_factory.mktemp("gallery")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = script.main(["--quick", "--output", str(output), "--save-maps"])
    return summary, output, stdout.getvalue()


def _regenerate(entry: dict, shape: list[int]):
    return generate_ct_case(entry["case_seed"], entry["class_name"], entry["severity"], entry["centre"], tuple(shape))


def test_quick_run_writes_figure_json_and_prints_the_table(quick_run):
    summary, output, printed = quick_run
    saved = json.loads((output / "explanations_gallery.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert summary["table"] in printed
    with Image.open(output / "explanations_gallery.png") as figure:
        assert figure.format == "PNG"
        width, height = figure.size
    assert width > 600 and height > 500  # 4 columns x 3 rows of panels
    assert summary["mode"] == "quick" and summary["target_class"] == "covid19"


def test_every_method_has_scores_in_range(quick_run):
    summary, _, _ = quick_run
    rows = {row["key"]: row for row in summary["methods"]}
    assert set(rows) == METHOD_KEYS
    n = summary["evaluation"]["num_slices"]
    for row in rows.values():
        assert 0.0 <= row["featured"]["energy"] <= 1.0
        assert len(row["energies"]) == n and all(0.0 <= e <= 1.0 for e in row["energies"])
        assert set(row["hits"]) <= {0.0, 1.0} and set(row["hits_tolerant"]) <= {0.0, 1.0}
        assert all(t >= h for h, t in zip(row["hits"], row["hits_tolerant"]))  # a hit is also a hit with tolerance
        assert row["hit_rate"] == pytest.approx(np.mean(row["hits"]))
        assert row["mean_energy"] == pytest.approx(np.mean(row["energies"]))
        assert row["seconds_per_slice"] > 0.0
        assert f"| {row['title']} |" in summary["table"]


def test_chance_level_equals_the_lesion_fraction_of_the_regenerated_slices(quick_run):
    summary, _, _ = quick_run
    shape = summary["settings"]["shape"]
    fractions, lung_fractions = [], []
    for entry in summary["evaluation"]["slices"]:
        case = _regenerate(entry, shape)
        lesion = case.lesion_mask[:, :, entry["slice_z"]] > 0
        lung = case.lung_mask[:, :, entry["slice_z"]] > 0
        assert entry["class_name"] == "covid19" and lesion.any()
        fractions.append(lesion.sum() / lesion.size)
        lung_fractions.append(lesion.sum() / lung.sum())
    chance = summary["chance"]
    np.testing.assert_allclose(chance["slice"]["per_slice"], fractions, rtol=1e-12)
    assert chance["slice"]["mean_energy"] == pytest.approx(np.mean(fractions), rel=1e-12)
    assert chance["slice"]["hit_rate"] == pytest.approx(np.mean(fractions), rel=1e-12)
    assert chance["lung"]["mean_energy"] == pytest.approx(np.mean(lung_fractions), rel=1e-12)
    featured = summary["evaluation"]["featured_index"]
    assert chance["slice"]["featured"] == pytest.approx(fractions[featured], rel=1e-12)
    assert summary["featured"]["lesion_fraction"] == pytest.approx(fractions[featured], rel=1e-12)
    assert fractions[featured] == max(fractions)  # the featured slice has the largest lesion


def test_featured_scores_match_a_hand_computation_on_the_saved_maps(quick_run):
    summary, output, _ = quick_run
    saved = np.load(output / "explanations_gallery_maps.npz")
    featured = summary["featured"]
    case = _regenerate(featured, summary["settings"]["shape"])
    lesion = case.lesion_mask[:, :, featured["slice_z"]] > 0
    np.testing.assert_array_equal(saved["lesion_mask"], lesion)
    window = np.clip((case.image[:, :, featured["slice_z"]] + 1000.0) / 1200.0, 0.0, 1.0)
    np.testing.assert_allclose(saved["image"], window, atol=1e-6)
    for key in METHOD_KEYS:
        values = saved[key].astype(np.float64)
        positive = np.clip(values, 0.0, None)
        energy = positive[lesion].sum() / positive.sum() if positive.sum() > 0 else 0.0
        hit = float(lesion[values == values.max()].all())
        assert featured["scores"][key]["energy"] == pytest.approx(energy, rel=1e-5, abs=1e-7)
        assert featured["scores"][key]["hit"] == hit


def test_quick_training_reduced_the_loss_and_the_goals_gate_the_full_run(script, quick_run):
    summary, _, _ = quick_run
    losses = summary["training"]["loss_per_epoch"]
    assert len(losses) == summary["settings"]["epochs"] and losses[-1] < losses[0]
    assert script.check_goals(summary) == []
    assert 0.0 <= summary["held_out"]["auc"] <= 1.0
    weak = json.loads(json.dumps(summary)) | {"mode": "full", "held_out": {"auc": 0.75}}
    assert any("AUC 0.750" in failure for failure in script.check_goals(weak))
    flat = json.loads(json.dumps(summary)) | {"training": {"loss_per_epoch": [0.7, 0.7]}}
    assert any("did not reduce the loss" in failure for failure in script.check_goals(flat))


def test_lesion_sentence_names_the_lung_that_holds_the_lesion(quick_run):
    summary, _, _ = quick_run
    featured = summary["featured"]
    case = _regenerate(featured, summary["settings"]["shape"])
    z = featured["slice_z"]
    lesion = case.lesion_mask[:, :, z] > 0
    lungs = case.lung_mask[:, :, z]
    right, left = int((lesion & (lungs == 1)).sum()), int((lesion & (lungs == 2)).sum())
    sentence = summary["sentences"]["lesion_mask"]
    assert sentence.startswith(f"COVID-19 (probability {featured['covid_probability']:.2f}). The lesion mask points")
    # regions are named largest first; on one axial slice each lung lies in one zone, so the first lung
    # named is the one holding most of the lesion
    positions = {side: sentence.find(f"{side} lung") for side in ("right", "left") if f"{side} lung" in sentence}
    assert min(positions, key=positions.get) == ("right" if right >= left else "left")
    assert {"edm", "gradcam"} <= set(summary["sentences"])


def test_edm_net_scores_are_the_mean_of_its_maps_and_cam_differs_by_the_bias(script):
    torch.manual_seed(0)
    model = script.EDMSliceNet((4, 4, 8, 8), num_classes=2).eval()
    torch.nn.init.normal_(model.head.bias)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        maps = model.activation_map(x)
        assert maps.shape == (2, 2, 4, 4)
        torch.testing.assert_close(model(x), maps.mean(dim=(2, 3)))
    methods = {m.key: m for m in script.gallery_methods(model, script.QUICK, seed=0)}
    cam = script.create_explainer("cam", model, **(methods["cam"].kwargs | {"relu": False}))
    edm = script.create_explainer("edm", model, **(methods["edm"].kwargs | {"relu": False}))
    difference = edm.feature_maps(x, 1) - cam.feature_maps(x, 1)
    torch.testing.assert_close(difference, torch.full_like(difference, float(model.head.bias[1].detach())))


def test_radiological_view_puts_anterior_up_and_the_patients_right_on_the_left(script):
    slice_xy = np.zeros((4, 6))  # (X: towards the patient's right, Y: anterior)
    slice_xy[3, 5] = 1.0  # most right, most anterior
    slice_xy[0, 0] = 2.0  # most left, most posterior
    shown = script.radiological(slice_xy)
    assert shown.shape == (6, 4)
    assert shown[0, 0] == 1.0 and shown[-1, -1] == 2.0


def test_chance_levels_on_a_constructed_slice(script):
    lesion = np.zeros((1, 10, 10), dtype=bool)
    lesion[0, 4:6, 4:6] = True  # 4 pixels
    lung = np.zeros((1, 10, 10), dtype=bool)
    lung[0, :5, :] = True  # 50 pixels, holding 2 lesion pixels
    chance = script.chance_levels(lesion, lung, tolerance=1.0)
    assert chance["slice"][0] == pytest.approx(4 / 100)
    assert chance["slice_tolerant"][0] == pytest.approx(12 / 100)  # 2x2 square grown by one pixel, no corners
    assert chance["lung"][0] == pytest.approx(2 / 50)
    assert chance["lung_tolerant"][0] == pytest.approx(6 / 50)  # rows 3-4 of the grown square: 2 + 4 pixels
    assert script.pointing_tolerance(224) == 15.0 and script.pointing_tolerance(128) == pytest.approx(8.5714, rel=1e-4)
