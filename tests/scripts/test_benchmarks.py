"""Tests for ``scripts/benchmarks/`` (issue 11): one quick run of ``run_all.py`` shared by the tests, and the
shared measurement helpers of ``bench_utils.py``."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "scripts" / "benchmarks"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_utils
        import run_all
        import scaling
        import training_throughput

        yield {"bench_utils": bench_utils, "run_all": run_all, "scaling": scaling, "training": training_throughput}
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def quick(modules, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "all.json"
    stdout = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout):
            results = modules["run_all"].main(["--quick", "--threads", "1", "--device", "cpu", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    return results, path, stdout.getvalue()


def _finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_quick_run_saves_what_it_returns_and_prints_every_goal(quick):
    results, path, printed = quick
    assert json.loads(path.read_text()) == json.loads(json.dumps(results, default=str))
    assert {"training", "ct_inference", "scaling", "explain", "goals"} <= set(results)
    for row in results["goals"]:
        assert row["case"] in printed
        if "op" in row:
            assert row["met"] == (row["value"] >= row["bound"] if row["op"] == ">=" else row["value"] <= row["bound"])
    assert "== goals" in printed


def test_training_pipeline_and_bare_loop_trained_on_the_same_samples(quick):
    training = quick[0]["training"]
    assert training["clock"] == "cpu" and training["machine"]["torch_threads"] == 1
    assert len(training["bundles"]) == 6
    iterations = training["settings"]["iterations"]
    for name, bundle in training["bundles"].items():
        counts = bundle["counts"]
        assert counts["samples"]["pipeline_config"] == counts["samples"]["bare"] > 0, name
        assert counts["iterations"]["pipeline_config"] == counts["iterations"]["bare"] == iterations, name
        # the thick/thin trainer trains on the thick batch's samples; the thin batch is its second step
        assert counts["samples"]["bare"] == iterations * bundle["batch_size"], name
        for label, rate in bundle["rates"].items():
            for clock in ("wall", "cpu"):
                expected = iterations / bundle["times_s"][label][f"median_{clock}"]
                assert rate[f"iterations_per_s_{clock}"] == pytest.approx(expected)
        for clock in ("wall", "cpu"):
            ratio = bundle["rates"]["pipeline_config"][f"iterations_per_s_{clock}"] / bundle["rates"]["bare"][
                f"iterations_per_s_{clock}"
            ]
            assert bundle[f"ratios_{clock}"]["config"] == pytest.approx(ratio)
            # the data / model / after split lies inside the pipeline's measured time
            parts = bundle["per_iteration_s"]["config"]
            total = bundle["times_s"]["pipeline_config"][clock][0] / iterations
            assert all(parts[p][clock] >= 0 for p in parts)
            assert sum(parts[p][clock] for p in parts) <= total * 1.001 + 1e-4
            assert parts["model"][clock] > 0
        assert bundle["goal"]["met"] == (bundle["goal"]["value"] >= 0.9)
        profile = bundle["random_transforms"]
        assert profile["records"] == 2 and "collate" in profile["per_batch_cpu_s"]
        assert all(math.isfinite(v) and v >= 0 for v in profile["per_batch_cpu_s"].values())
        assert sum(v for v in profile["per_batch_cpu_s"].values()) > 0
        assert bundle["train_step_flops"] > 0 and _finite_positive(bundle["bare_fraction_of_matmul_peak"])


def test_ct_inference_pipeline_and_bare_backbone_saw_the_same_slices(quick):
    ct = quick[0]["ct_inference"]
    settings = ct["settings"]
    assert settings["volumes"] == 2 and len(settings["slices_per_volume"]) == 2
    total_slices = sum(settings["slices_per_volume"])
    assert set(ct["rows"]) == {f"{v}_{m}" for v in ("predictions", "outputs") for m in ("contiguous", "channels_last")}
    for label, row in ct["rows"].items():
        setting = row["memory_format"]
        assert ct["counts"][f"pipeline_{label}"] == {"volumes": 2, "slices": total_slices}
        assert ct["counts"][f"bare_{setting}"] == {"volumes": 2, "slices": total_slices}
        for clock in ("wall", "cpu"):
            pipeline = ct["times_s"][f"pipeline_{label}"][f"median_{clock}"]
            assert row["volumes_per_s"][clock] == pytest.approx(2 / pipeline)
            bare = ct["times_s"][f"bare_{setting}"][f"median_{clock}"]
            assert row[f"ratio_{clock}"] == pytest.approx(pipeline / bare)
            per_volume = row["per_volume_s"]
            assert row["ratio_to_own_backbone"][clock] == pytest.approx(pipeline / (2 * per_volume["backbone"][clock]))
            assert row["ratio_to_own_backbone"][clock] >= 1.0
            assert 0 < per_volume["backbone"][clock] <= per_volume["model"][clock] * 1.001 + 1e-4
            assert per_volume["data"][clock] > 0
        assert row["goal"]["met"] == (row["ratio"] <= 1.15)
    assert ct["network_flops_first_volume"] > ct["backbone_flops_first_volume"] > 0


def test_scaling_rows_fit_and_memory_are_well_formed(quick):
    sc = quick[0]["scaling"]
    s = sc["settings"]
    expected = {f"chunked_D{d}_S{s['base_size']}" for d in s["slices"]}
    expected |= {f"chunked_D{s['base_slices']}_S{size}" for size in s["sizes"]}
    expected |= {f"unchunked_D{d}_S{s['base_size']}" for d in s["unchunked_slices"]}
    assert set(sc["rows"]) == expected
    for name, row in sc["rows"].items():
        assert _finite_positive(row["median_cpu"]) and _finite_positive(row["median_wall"]), name
        assert row["peak_extra_mib"] is None or row["peak_extra_mib"] >= 0
        assert row["chunk"] == (0 if name.startswith("unchunked") else s["chunk"])
    assert sc["time_vs_slices_fit"]["slope"] > 0
    assert isinstance(sc["linear_in_slices"], bool)
    assert all(f > 0 for f in sc["flops_per_slice"].values())


def test_linear_fit_recovers_a_line_exactly(modules):
    fit = modules["scaling"].linear_fit([32, 64, 128], [1.5, 2.5, 4.5])  # y = 0.5 + x / 32
    assert fit["intercept"] == pytest.approx(0.5) and fit["slope"] == pytest.approx(1 / 32)
    assert fit["r2"] == pytest.approx(1)
    assert modules["scaling"].linear_fit([1, 2, 3], [1, 3, 2])["r2"] == pytest.approx(0.25)


def test_goal_record_and_margin(modules):
    bu = modules["bench_utils"]
    expected = {"value": 0.8, "op": ">=", "bound": 0.9, "met": False, "margin": pytest.approx(0.8 / 0.9)}
    assert bu.goal(0.8, ">=", 0.9) == expected
    assert bu.goal(1.1, "<=", 1.15)["met"] and bu.goal(1.1, "<=", 1.15)["margin"] == pytest.approx(1.15 / 1.1)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux resident-set peak only")
def test_cpu_peak_memory_sees_a_known_allocation(modules):
    bu = modules["bench_utils"]
    device = torch.device("cpu")
    bu.reset_peak_memory(device)
    before = bu.current_memory_bytes(device)
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
    extra = bu.peak_memory_bytes(device) - before
    assert 60 * 2**20 <= extra <= 80 * 2**20


def test_forward_meter_counts_outermost_calls_only(modules):
    bu = modules["bench_utils"]
    inner = torch.nn.Linear(3, 3)
    outer = torch.nn.Sequential(inner, torch.nn.ReLU())
    meter = bu.ForwardMeter(torch.device("cpu"), outer, inner)
    outer(torch.zeros(5, 3))
    inner(torch.zeros(2, 3))
    assert (meter.calls, meter.images) == (2, 7) and meter.cpu >= 0
    meter.remove()
    outer(torch.zeros(5, 3))
    assert meter.calls == 2


def test_training_overlay_switches_dataset_and_loader(modules, tmp_path):
    tt = modules["training"]
    args = tt.build_parser().parse_args(["--quick", "--device", "cpu"])
    args.iterations = 2
    parser = tt.load_pipeline("cxr_lung_segmentation", "persistent", tmp_path, args)
    assert parser["train#dataset#_target_"] == "PersistentDataset"
    assert parser["train#dataset#cache_dir"] == str(tmp_path / "persistent_cache")
    assert parser["num_workers"] == 0 and parser["image_size"] == [32, 32]
    assert not any("ValidationHandler" in str(h.get("_target_")) for h in parser["train#handlers"])
    thread = tt.load_pipeline("cxr_lung_segmentation", "thread_loader", tmp_path, args)
    assert thread["train#dataloader#_target_"] == "ThreadDataLoader"
    assert tt.load_pipeline("cxr_lung_segmentation", "no_cache", tmp_path, args)["cache_rate"] == 0.0
    assert tt.load_pipeline("cxr_lung_segmentation", "config", tmp_path, args)["train#dataset#copy_cache"] is False
    monai = tt.load_pipeline("brain_ventricle_segmentation", "monai_cache", tmp_path, args)
    for dataset_id in ("train#dataset", "train#unlabeled_dataset"):
        assert monai[f"{dataset_id}#_target_"] == "CacheDataset" and monai[f"{dataset_id}#copy_cache"] is True
    tuned = tt.load_pipeline("cxr_lung_segmentation", "tuned", tmp_path, args)
    assert tuned["train#trainer#decollate"] is False and tuned["train#trainer#optim_set_to_none"] is True


def test_workers_variant_trains_the_same_samples_and_is_judged_on_wall_clock(modules, tmp_path):
    tt = modules["training"]
    args = tt.build_parser().parse_args(["--quick", "--device", "cpu", "--workers", "2"])
    parser = tt.load_pipeline("cxr_lung_segmentation", "workers", tmp_path, args)
    assert parser["train#dataloader#num_workers"] == 2 and parser["train#dataloader#persistent_workers"] is True
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            results = tt.main(["--quick", "--threads", "1", "--device", "cpu", "--bundles",
                               "covid19_cxr_ensemble_classification", "--variants", "config", "workers"])
    finally:
        torch.set_num_threads(threads)
    bundle = results["bundles"]["covid19_cxr_ensemble_classification"]
    assert results["clock"] == "cpu"  # one torch thread on a CPU: CPU time, except for the workers variant
    assert bundle["ratio_clocks"] == {"config": "cpu", "workers": "wall"}
    assert bundle["ratios"]["workers"] == bundle["ratios_wall"]["workers"]
    assert bundle["ratios"]["config"] == bundle["ratios_cpu"]["config"]
    samples = bundle["counts"]["samples"]
    assert samples["pipeline_workers"] == samples["pipeline_config"] == samples["bare"] > 0
    assert "workers" in printed.getvalue() and "(it/s and ratio on wall-clock time" in printed.getvalue()
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            tt.main(["--quick", "--workers", "0"])


def test_paper_size_puts_back_the_published_network_and_input_sizes(modules, tmp_path):
    tt = modules["training"]
    args = tt.build_parser().parse_args(["--paper-size", "--device", "cpu"])
    demo = tt.load_pipeline("covid19_cxr_ensemble_classification", "config", tmp_path / "demo",
                            tt.build_parser().parse_args(["--device", "cpu"]))
    paper = tt.load_pipeline("covid19_cxr_ensemble_classification", "config", tmp_path / "paper", args)
    assert (demo["backbone"], demo["image_size"], demo["batch_size"]) == ("small_resnet", [64, 64], 16)
    assert (paper["backbone"], paper["image_size"], paper["batch_size"]) == ("densenet161", [224, 224], 16)
    assert paper["num_workers"] == 0 and paper["demo_args"] == demo["demo_args"]  # still the demo data
    transfer = tt.load_pipeline("covid19_ct_transfer_classification", "config", tmp_path / "transfer", args)
    assert transfer["backbone"] == "densenet201" and transfer["pretrained"] is False
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            tt.main(["--quick", "--paper-size"])
