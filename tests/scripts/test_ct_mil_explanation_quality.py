"""Tests for ``scripts/experiments/ct_mil_explanation_quality.py``: one quick run shared by the tests (an
untrained tiny network saved as the checkpoint), plus its building blocks on constructed inputs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medxai.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "experiments" / "ct_mil_explanation_quality.py"
BUNDLE = REPO_ROOT / "bundles" / "covid19_ct_mil_classification"
METHOD_KEYS = ("edm", "gradcam", "lime", "kernel_shap")
MAP_KEYS = (*METHOD_KEYS, "uniform_lung", "uniform_slice", "random", "oracle")


def _load_script():
    spec = importlib.util.spec_from_file_location("ct_mil_explanation_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _medseg_root() -> Path:
    shared = Path(os.environ.get("MEDXAI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return shared / "covid_ct_infection_seg_medseg100"


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    root = tmp_path_factory.mktemp("explanation_quality")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDXAI_CACHE", str(root / "cache"))
        torch.manual_seed(0)
        parser = script.load_bundle_config(BUNDLE, [], script.QUICK_OVERRIDES)
        checkpoint = root / "model.pt"
        torch.save(script.build_network(parser, None).state_dict(), checkpoint)
        argv = ["--quick", "--checkpoint", str(checkpoint), "--output", str(root / "out"), "--save-maps"]
        if _medseg_root().is_dir():
            argv += ["--medseg-root", str(_medseg_root())]
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            summary = script.main(argv)
    return summary, root / "out", stdout.getvalue(), checkpoint


def _datasets(summary):
    return [name for name in ("phantom", "medseg") if name in summary["datasets"]]


def test_quick_run_writes_json_figure_and_table_with_provenance(quick_run):
    summary, output, printed, checkpoint = quick_run
    saved = json.loads((output / "explanation_quality.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert summary["table"] in printed and "| EDM activation map |" in summary["table"]
    assert summary["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert summary["machine"]["cpu_count"] == os.cpu_count() and summary["machine"]["machine"]
    assert "--checkpoint" in summary["command"] and summary["date"][:2] == "20"
    assert summary["reference_check_failures"] == []
    with Image.open(output / "explanation_quality.png") as figure:
        assert figure.format == "PNG"
        width, height = figure.size
    assert width >= 1200 and height >= 250 * len(_datasets(summary))  # 5 panels per data set row


def test_explainer_settings_come_from_the_bundle_configs(quick_run, script):
    summary, _, _, _ = quick_run
    explain = summary["settings"]["explainers"]
    assert explain["num_samples"] == script.QUICK_OVERRIDES["explain_num_samples"]
    assert explain["n_segments"] == script.QUICK_OVERRIDES["explain_superpixels"]
    assert explain["baseline"] == "mean" and explain["output"] == "probability"
    assert explain["lime"]["kernel_width"] == 2.0  # seed 000 eq. 7, from the handler's LIME
    assert summary["bundle"]["image_size"] == script.QUICK_OVERRIDES["image_size"]
    assert summary["bundle"]["hu_window"] == [-1350, 150]  # inference.json's window, not overridden
    assert summary["target_class"] == {"index": 1, "name": "COVID-19"}


def test_scores_equal_a_hand_computation_on_the_saved_maps(quick_run):
    summary, output, _, _ = quick_run
    saved = np.load(output / "explanation_quality_maps.npz")
    tolerance = summary["settings"]["pointing_tolerance_px"]
    for name in _datasets(summary):
        result = summary["datasets"][name]
        lesions, regions = saved[f"{name}/lesion"], saved[f"{name}/region"]
        assert lesions.dtype == bool and len(lesions) == result["num_slices"] > 0
        for i, entry in enumerate(result["slices"]):
            lesion, region = lesions[i], regions[i]
            near = ndimage.distance_transform_edt(~lesion) <= tolerance + 1e-9
            assert entry["lesion_fraction"] == pytest.approx(lesion.mean(), rel=1e-9)
            assert entry["chance"] == pytest.approx((lesion & region).sum() / region.sum(), rel=1e-9)
            assert entry["chance_tolerant"] == pytest.approx((near & region).sum() / region.sum(), rel=1e-9)
            for key in MAP_KEYS:
                values = saved[f"{name}/{key}"][i].astype(np.float64)
                positive = np.clip(values, 0.0, None)
                energy = positive[lesion].sum() / positive.sum() if positive.sum() > 0 else 0.0
                at_max = values == values.max()
                scores = entry["scores"][key]
                assert scores["energy"] == pytest.approx(energy, rel=1e-5, abs=1e-7), (name, i, key)
                assert scores["hit"] == float(lesion[at_max].all()), (name, i, key)
                assert scores["hit_tolerant"] == float(near[at_max].all()), (name, i, key)
            # the references' known values: the oracle is perfect, a flat map never points, and a uniform map's
            # energy share is the mask's share of its support
            assert entry["scores"]["oracle"] == {"hit": 1.0, "hit_tolerant": 1.0, "energy": 1.0}
            assert entry["scores"]["uniform_slice"]["energy"] == pytest.approx(lesion.mean(), rel=1e-6)
            assert entry["scores"]["uniform_slice"]["hit"] == 0.0
            assert entry["scores"]["uniform_lung"]["energy"] == pytest.approx(entry["chance"], rel=1e-6)


def test_summary_means_intervals_and_differences_to_chance(quick_run):
    summary, _, _, _ = quick_run
    for name in _datasets(summary):
        result = summary["datasets"][name]
        chance = np.array([e["chance"] for e in result["slices"]])
        chance_tolerant = np.array([e["chance_tolerant"] for e in result["slices"]])
        for key in MAP_KEYS:
            row = result["summary"][key]
            for metric in ("hit", "hit_tolerant", "energy"):
                values = np.array([e["scores"][key][metric] for e in result["slices"]])
                low, high = row[metric]["ci95"]
                assert row[metric]["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert low - 1e-12 <= row[metric]["mean"] <= high + 1e-12
                reference = chance_tolerant if metric == "hit_tolerant" else chance
                assert row[metric]["minus_chance"] == pytest.approx((values - reference).mean(), abs=1e-12)
        assert result["summary"]["oracle"]["energy"]["ci95"] == [1.0, 1.0]
        assert result["summary"]["chance"]["strict"]["mean"] == pytest.approx(chance.mean(), abs=1e-12)
        for key in METHOD_KEYS:
            assert result["summary"][key]["seconds_per_slice"] > 0.0
    assert summary["datasets"]["phantom"]["bootstrap_unit"] == "volume"


def test_phantom_slices_are_the_top_scoring_lesion_slices_and_the_mask_follows_the_image(quick_run):
    summary, output, _, _ = quick_run
    phantom = summary["datasets"]["phantom"]
    n = summary["settings"]["slices_per_volume"]
    minimum = summary["settings"]["min_lesion_fraction"]
    explained = {(e["case"], e["slice"]): e for e in phantom["slices"]}
    for volume in phantom["volumes"]:
        scores = np.array(volume["slice_scores"])
        candidates = volume["lesion_slices"]
        expected = sorted(candidates, key=lambda z: (-scores[z], z))[:n]
        assert volume["explained_slices"] == expected
        for z in expected:
            assert explained[(volume["case"], z)]["lesion_fraction"] >= minimum
    assert len(explained) == phantom["num_slices"]
    # the lesion mask went through the same crop and resize as the image: ground-glass lesions lie in the
    # lungs and are denser (brighter in the lung window) than the aerated lung around them
    saved = np.load(output / "explanation_quality_maps.npz")
    for image, lesion, lung in zip(saved["phantom/image"], saved["phantom/lesion"], saved["phantom/region"]):
        assert (lesion & lung).sum() / lesion.sum() > 0.6
        assert image[lesion].mean() > image[lung & ~lesion].mean() + 0.05


def test_a_constant_network_gives_a_uniform_edm_map_and_no_signal_to_the_others(script):
    torch.manual_seed(0)
    parser = script.load_bundle_config(BUNDLE, [], script.QUICK_OVERRIDES)
    network = script.build_network(parser, None)
    with torch.no_grad():
        network.edm.conv.weight.zero_()
        network.edm.conv.bias.copy_(torch.tensor([-1.0, 2.5]))
    explainers = script.build_explainers(network, script.superpixel_handler(parser), class_index=1)
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    maps, seconds = explainers.explain(image)
    assert set(maps) == set(METHOD_KEYS) and set(seconds) == {*METHOD_KEYS, "slic"}
    torch.testing.assert_close(maps["edm"], torch.full((1, 1, 32, 32), 2.5))  # A_c = b_c everywhere
    for key in ("gradcam", "lime", "kernel_shap"):  # the score does not depend on the input
        assert maps[key].abs().max() < 1e-6, key
    lesion = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    lesion[..., 4:12, 8:16] = True
    scores = script.localisation_scores(torch.cat([maps["edm"], maps["gradcam"]]), lesion.expand(2, -1, -1, -1), 2.0)
    np.testing.assert_allclose(scores["energy"], [64 / 1024, 0.0], rtol=1e-6)
    assert scores["energy_defined"].tolist() == [True, False]
    assert scores["hit"].tolist() == [0.0, 0.0]  # a flat map does not point


def test_cluster_bootstrap_resamples_whole_volumes(script):
    assert script.bootstrap_interval(np.full(7, 0.3)) == pytest.approx((0.3, 0.3))
    # two volumes, one with three zeros and one with a single one: the resampled mean is 0 (both draws the
    # first volume, p = 1/4), 1/4 (p = 1/2) or 1 (p = 1/4), so the 95 % interval spans [0, 1]
    values, groups = np.array([0.0, 0.0, 0.0, 1.0]), np.array([0, 0, 0, 1])
    assert script.bootstrap_interval(values, groups, 4000, seed=0) == pytest.approx((0.0, 1.0))
    low, high = script.bootstrap_interval(values, None, 4000, seed=0)  # slices as independent: narrower
    assert 0.0 <= low and high <= 0.75 + 1e-12
    sample = np.random.default_rng(3).normal(0.5, 0.1, size=400)
    low, high = script.bootstrap_interval(sample, None, 4000, seed=0)
    assert (high - low) == pytest.approx(2 * 1.96 * sample.std(ddof=1) / np.sqrt(400), rel=0.1)
    assert script.bootstrap_interval(sample, None, 500, seed=5) == script.bootstrap_interval(sample, None, 500, seed=5)


def test_medseg_png_is_rotated_into_the_ras_layout_and_resized_like_the_bundle(script, tmp_path):
    png = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(script.radiological(script.png_to_ras(png)), png.T)  # PNG = radiological view.T
    image = np.zeros((64, 64), dtype=np.uint8)
    image[:32, :32] = 255  # top-left quarter bright
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:16, :] = 1
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    parser = script.load_bundle_config(BUNDLE, [], script.QUICK_OVERRIDES)
    record = {"image": str(tmp_path / "image.png"), "infection_mask": str(tmp_path / "mask.png")}
    x, lesion = script.load_medseg_slice(record, script.slice_resizer(parser))
    assert x.shape == (1, 1, 32, 32) and lesion.shape == (1, 1, 32, 32) and lesion.dtype == torch.bool
    expected = np.zeros((32, 32), dtype=np.float32)
    expected[16:, 16:] = 1.0  # rotated by 180 degrees, area-resized by 2: exact
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-6)
    expected_mask = np.zeros((32, 32), dtype=bool)
    expected_mask[24:, :] = True
    np.testing.assert_array_equal(lesion[0, 0].numpy(), expected_mask)


def test_the_lesion_mask_joins_every_transform_that_moves_the_lung_mask(script):
    parser = script.load_bundle_config(BUNDLE, [])
    touched = script.add_mask_to_preprocessing(parser)
    assert [t.rsplit(".", 1)[-1] for t in touched] == ["LoadMedicalImaged", "CropToLungd", "ResizeSlicesd"]
    resize = next(t for t in parser["preprocessing"]["transforms"] if t["_target_"].endswith("ResizeSlicesd"))
    assert resize["keys"] == ["image", "lung_mask", "lesion_mask"]
    assert resize["mode"] == ["area", "nearest-exact", "nearest-exact"]
    assert "lesion_mask" in parser["case_keys"]


def test_a_full_run_needs_a_checkpoint(script, tmp_path):
    with pytest.raises(InputError, match="--checkpoint is required"):
        script.main(["--output", str(tmp_path)])
