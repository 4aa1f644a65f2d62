"""Tests for ``scripts/benchmarks/benchmark_explain.py`` in its quick (CI) mode: one run shared by the tests."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def script_labels() -> tuple[str, ...]:
    return (
        "(a) LIME / bare forwards",
        "(a) Kernel SHAP / bare forwards",
        "(b) lime_image / our LIME",
        "(b) shap.KernelExplainer / our Kernel SHAP",
        "(b) shap Partition default / our Kernel SHAP",
        "(c) Grad-CAM / forward+backward",
        "(c) pytorch-grad-cam / our Grad-CAM",
        "(d) EDM map / inference",
    )


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "benchmark_explain", REPO_ROOT / "scripts" / "benchmarks" / "benchmark_explain.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):  # lime_image's tqdm bar
        results = script.main(["--quick", "--json", str(path), "--device", "cpu"])
    return results, path, stdout.getvalue()


def test_quick_run_saves_what_it_returns_and_prints_the_table(quick_run):
    results, path, printed = quick_run
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    for label in script_labels():
        assert label in printed
    assert results["settings"]["input"] == [1, 3, 32, 32] and results["settings"]["repeats"] == 1
    assert results["machine"]["device"] == "cpu"
    assert results["versions"]["torch"] == torch.__version__


def test_ratios_are_the_ratios_of_the_median_times(quick_run):
    results, _, _ = quick_run
    times = results["times_s"]
    assert all(len(t["wall"]) == len(t["cpu"]) == 1 and t["median_wall"] > 0 and t["median_cpu"] > 0 for t in times.values())
    pairs = {
        "lime_vs_bare": ("lime", "bare_forwards"),
        "kernel_shap_vs_bare": ("kernel_shap", "bare_forwards"),
        "lime_image_vs_lime": ("lime_image", "lime"),
        "lime_image_vs_lime_free_model": ("lime_image_free_model", "lime_free_model"),
        "gradcam_vs_forward_backward": ("gradcam", "forward_backward"),
        "gradcam_vs_inference": ("gradcam", "inference"),
        "edm_vs_inference": ("edm_map", "inference"),
        "shap_kernel_library_vs_kernel_shap": ("shap_kernel_library", "kernel_shap"),
        "shap_partition_library_vs_kernel_shap": ("shap_partition_library", "kernel_shap"),
        "gradcam_library_vs_gradcam": ("gradcam_library", "gradcam"),
    }
    assert set(results["ratios"]) == set(pairs)
    for clock in ("wall", "cpu"):
        for name, (method, reference) in pairs.items():
            expected = times[method][f"median_{clock}"] / times[reference][f"median_{clock}"]
            assert results[f"ratios_{clock}"][name] == pytest.approx(expected)
    assert results["clock"] in ("wall", "cpu") and results["ratios"] == results[f"ratios_{results['clock']}"]
    r = results["ratios"]
    for name, goal in results["goals"].items():
        assert goal["met"] == (r[name] <= goal["value"] if goal["op"] == "<=" else r[name] >= goal["value"])


def test_auto_clock_is_cpu_time_only_for_single_threaded_cpu_runs(script):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert script.choose_clock("auto", torch.device("cpu")) == "cpu"
        assert script.choose_clock("auto", torch.device("cuda")) == "wall"
        torch.set_num_threads(2)
        assert script.choose_clock("auto", torch.device("cpu")) == "wall"
        assert script.choose_clock("cpu", torch.device("cpu")) == "cpu"
    finally:
        torch.set_num_threads(threads)


def test_each_method_did_the_work_it_claims(quick_run):
    """Same N for all: LIME sees N images (+1 prediction), Kernel SHAP N + 3 (prediction, all off, all on),
    shap.KernelExplainer N + 2 (its background row, the instance, then the N coalitions in one call of the
    model function, which runs them in batches of the best batch size), shap's Partition explainer N (all off,
    all on, then N - 2 masks in pairs), lime_image N in calls of 10, our methods in batches of the best batch
    size; pytorch-grad-cam one forward of the slices."""
    results, _, _ = quick_run
    n, best = results["settings"]["samples"], results["settings"]["best_batch_size"]
    counts = results["counts"]
    assert counts["bare_forwards"] == {"images": n, "forward_calls": math.ceil(n / best)}
    assert counts["lime"] == {"images": n + 1, "forward_calls": 1 + math.ceil(n / best)}
    assert counts["kernel_shap"]["images"] == n + 3
    assert counts["lime_image"] == {"images": n, "forward_calls": math.ceil(n / 10)}
    assert counts["shap_kernel_library"] == {"images": n + 2, "forward_calls": 2 + math.ceil(n / best)}
    assert n % 2 == 0 and counts["shap_partition_library"]["images"] == n
    assert counts["shap_partition_library"]["forward_calls"] >= 2 + math.ceil((n - 2) / best)
    assert counts["gradcam"] == counts["forward_backward"] == counts["gradcam_library"]
    assert counts["gradcam"] == {"images": 4, "forward_calls": 1}
    assert best in results["settings"]["batch_sizes_searched"]
    assert counts["inference"] == counts["edm_map"] == {"images": 4, "forward_calls": 1}  # the EDM trunk, once


def test_overhead_is_time_outside_the_model_forward_passes(quick_run):
    results, _, printed = quick_run
    times, overheads = results["times_s"], results["overheads_s"]
    assert set(overheads) == {
        "bare_forwards",
        "lime",
        "kernel_shap",
        "lime_image",
        "inference",
        "edm_map",
        "shap_kernel_library",
        "shap_partition_library",
    }
    for name, overhead in overheads.items():
        for clock in ("wall", "cpu"):
            total, in_model = times[name][clock][0], times[name][f"model_{clock}"][0]
            assert 0 < in_model <= total
            assert overhead[clock] == pytest.approx(total - in_model)
    assert "own overhead outside the model's forward passes" in printed


def test_pytorch_grad_cam_hooks_are_released_outside_the_timing(quick_run):
    """Its two layer4 hooks exist only around its own timed calls: none while any other measurement ran (the
    only hooks then were ForwardMeter's two), none left on the model after the run."""
    results, _, printed = quick_run
    cam = results["gradcam_library"]
    assert cam["forward_hooks_during_other_measurements"] == 0
    assert cam["forward_hooks_left"] == 0
    assert cam["median_setup_wall"] > 0 and cam["median_teardown_wall"] > 0
    assert "pytorch-grad-cam vs our Grad-CAM" in printed


def test_quick_run_grad_cam_maps_agree(quick_run):
    """At 32x32 ResNet-18's layer4 is 1x1, so both maps are constant: ours (unnormalised) is ReLU of one number
    upsampled, pytorch-grad-cam's is min-max normalised to zeros; after normalisation both are exactly zero."""
    agreement = quick_run[0]["gradcam_library"]["map_agreement"]
    assert agreement == {
        "max_abs_difference": 0.0,
        "pearson_median": None,
        "pearson_min": None,
        "maps_correlated": 0,
        "maps": 4,
    }


def test_our_grad_cam_and_pytorch_grad_cam_compute_the_same_map(script):
    """At 64x64 (layer4 2x2): pytorch-grad-cam is min-max(resize(min-max(ReLU(cam)))), ours resize(ReLU(cam)); a
    bilinear resize commutes with the affine min-max, so after min-max both agree to float32 rounding."""
    from pytorch_grad_cam import GradCAM as LibraryGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from medxai.explain.cam import GradCAM

    torch.manual_seed(0)
    model = script.torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = model(x).argmax(1)
    ours = GradCAM(model, "layer4")(x, targets)[:, 0].detach().numpy()
    cam = LibraryGradCAM(model=model, target_layers=[model.layer4])
    assert script.forward_hook_count(model) == 2  # what the benchmark releases after each timed call
    theirs = cam(x, [ClassifierOutputTarget(int(t)) for t in targets])
    cam.activations_and_grads.release()
    assert script.forward_hook_count(model) == 0
    assert float(ours.min()) >= 0 and float(ours.max()) > 1e-3 and float(ours.max()) != pytest.approx(1.0)
    agreement = script.map_agreement(ours, theirs)
    assert agreement["maps_correlated"] == agreement["maps"] == 3
    assert agreement["max_abs_difference"] < 1e-5
    assert agreement["pearson_min"] > 0.99999


def test_map_agreement_by_hand(script):
    ours = np.array([[[0.0, 2.0], [1.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    theirs = np.array([[[1.0, 1.5], [1.25, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])  # 1 + ours / 4, and a constant
    agreement = script.map_agreement(ours, theirs)
    assert agreement == {
        "max_abs_difference": 0.0,
        "pearson_median": pytest.approx(1.0),
        "pearson_min": pytest.approx(1.0),
        "maps_correlated": 1,
        "maps": 2,
    }
    flipped = script.map_agreement(ours[:1], 2.0 - theirs[:1])
    assert flipped["max_abs_difference"] == 1.0 and flipped["pearson_median"] == pytest.approx(-1.0)


def test_shap_kernel_library_matches_our_kernel_shap_when_all_coalitions_are_enumerated(script):
    """With N >= 2^M - 2 both run every coalition, so both are the exact Shapley values of the same game (same
    superpixels, same mean baseline, softmax of the target); shap's default num_features(10) selects every one
    of M <= 10 superpixels. It sees N + 2 images: background, instance, 2^M - 2 coalitions."""
    from medxai.explain.kernel_shap import KernelSHAP
    from medxai.explain.superpixels import SlicSuperpixels

    torch.manual_seed(0)
    model = script.torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = script.make_image(3, 32)
    ours = KernelSHAP(model, segmenter=SlicSuperpixels(n_segments=8), num_samples=200, batch_size=16)
    ours(x, 1)
    meter = script.ForwardMeter(torch.device("cpu"), model)
    values, segments = script.shap_kernel_library(model, x, ours, batch_size=16, seed=3)
    meter.remove()
    m = values.shape[0]
    assert m == 6 and values.shape == (m, 3)
    assert np.array_equal(segments, ours.last_explanation.segments[0].numpy())
    assert meter.images == 2 + 2**m - 2
    np.testing.assert_allclose(values[:, 1], ours.last_explanation.weights[0].numpy(), rtol=1e-6, atol=1e-12)


def test_shap_partition_evaluates_max_evals_rounded_up_to_even(script):
    """All off and all on, then masks in pairs while fewer than max_evals - 2 are queued: 20 -> 20, 21 -> 22.
    (Compiles shap's numba code if the quick run has not, about 6 s.)"""
    import shap

    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)).eval()
    image = script.make_image(3, 16)[0].permute(1, 2, 0).numpy()
    meter = script.ForwardMeter(torch.device("cpu"), model)
    masker = shap.maskers.Image(script.SHAP_IMAGE_MASK, image.shape)
    explainer = shap.Explainer(script.shap_image_model(model, 8, torch.device("cpu")), masker)
    for max_evals, images in ((20, 20), (21, 22)):
        meter.reset()
        explainer(image[None], max_evals=max_evals, batch_size=8, silent=True)
        assert meter.images == images
    meter.remove()


def test_edm_model_score_is_the_mean_of_its_map(script):
    model = script.EDMResNet(num_classes=3).eval()
    x = script.make_image(3, 64)
    with torch.no_grad():
        maps = model.activation_map(x)
        assert maps.shape == (1, 3, 2, 2)
        assert torch.allclose(model(x), maps.mean(dim=(2, 3)))


def test_make_image_is_deterministic_and_in_range(script):
    a, b = script.make_image(3, 40, seed=1), script.make_image(3, 40, seed=1)
    assert torch.equal(a, b) and a.shape == (1, 3, 40, 40)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, script.make_image(3, 40, seed=2))


def test_bad_arguments_are_rejected(script):
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        script.main(["--samples", "0"])
