"""Tests for ``scripts/benchmarks/benchmark_explain.py`` in its quick (CI) mode: one run shared by the tests."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def script_labels() -> tuple[str, ...]:
    return (
        "(a) LIME / bare forwards",
        "(a) Kernel SHAP / bare forwards",
        "(b) lime_image / our LIME",
        "(c) Grad-CAM / forward+backward",
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
    }
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
    lime_image N in calls of 10, our methods in batches of the best batch size."""
    results, _, _ = quick_run
    n, best = results["settings"]["samples"], results["settings"]["best_batch_size"]
    counts = results["counts"]
    assert counts["bare_forwards"] == {"images": n, "forward_calls": math.ceil(n / best)}
    assert counts["lime"] == {"images": n + 1, "forward_calls": 1 + math.ceil(n / best)}
    assert counts["kernel_shap"]["images"] == n + 3
    assert counts["lime_image"] == {"images": n, "forward_calls": math.ceil(n / 10)}
    assert counts["gradcam"] == counts["forward_backward"] == {"images": 4, "forward_calls": 1}
    assert best in results["settings"]["batch_sizes_searched"]
    assert counts["inference"] == counts["edm_map"] == {"images": 4, "forward_calls": 1}  # the EDM trunk, once


def test_overhead_is_time_outside_the_model_forward_passes(quick_run):
    results, _, printed = quick_run
    times, overheads = results["times_s"], results["overheads_s"]
    assert set(overheads) == {"bare_forwards", "lime", "kernel_shap", "lime_image", "inference", "edm_map"}
    for name, overhead in overheads.items():
        for clock in ("wall", "cpu"):
            total, in_model = times[name][clock][0], times[name][f"model_{clock}"][0]
            assert 0 < in_model <= total
            assert overhead[clock] == pytest.approx(total - in_model)
    assert "own overhead outside the model's forward passes" in printed


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
