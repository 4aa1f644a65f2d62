"""Tracking of every bundle's training: TensorBoard scalars, learning rate and explanation overlays, MLflow
(``--tracking mlflow``, when mlflow is installed), and the GPU-only ``amp``/``channels_last`` switches being
ignored on CPU (issue 9, "Tracking and visual output" and "Mixed precision ... CPU runs ignore them cleanly").

Each bundle trains once, tiny, with ``amp`` and ``channels_last`` switched on and, when mlflow is importable,
``--tracking mlflow`` with a SQLite tracking URI in the test's folder; two bundles train again with the
switches off. All runs share one process (:data:`DRIVER`, module-scoped fixture). Expected step counts come
from each run's own console log (``Epoch: e/E, Iter: i/L``); expected learning rates are computed by hand
from each bundle's schedule.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bundle_runner import BundleCopy, copy_bundle

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
CPU_PRECISION_WARNINGS = ("CUDA is not available", "GradScaler", "autocast")


def _exponential(lr0: float, final: float) -> Callable[[int, int], float]:
    """ExponentialLR stepped per iteration from ``lr0`` to ``final`` over all ``total`` iterations: the rate
    of iteration ``step`` (1-based)."""
    return lambda step, total: lr0 * (final / lr0) ** ((step - 1) / total)


@dataclass(frozen=True)
class Case:
    """One bundle's tiny training and what its TensorBoard logs must hold."""

    bundle: str
    overlay: dict[str, Any]
    metric: str
    overlay_tag: str
    lr_per_iteration: bool
    #: ``expected_lr(step, total_iterations)``: the learning rate of epoch (or iteration) ``step`` (1-based)
    expected_lr: Callable[[int, int], float]


CASES = {
    "cxr_lung_segmentation": Case(
        "cxr_lung_segmentation",
        {"demo_args": {"num_cases": 20, "size": [64, 64],
                       "fractions": {"training": 0.6, "validation": 0.2, "test": 0.2}},
         "image_size": [32, 32], "unet_channels": [4, 8, 16], "unet_strides": [2, 2], "unet_num_res_units": 0,
         "batch_size": 4, "learning_rate": 0.003, "num_iterations": 6, "val_interval": 1, "num_workers": 0},
        "val_mean_dice", "predicted_mask/0", True, _exponential(0.003, 1e-6),
    ),
    "brain_ventricle_segmentation": Case(
        "brain_ventricle_segmentation",
        {"demo_args": {"num_subjects": 6, "shape": [48, 48, 30], "spacing_mm": [4.0, 4.0, 2.0],
                       "fractions": {"training": 0.5, "validation": 0.2, "test": 0.3}},
         "backbone": "small_resnet", "decoder_channels": [8, 8, 8], "unet_features": [4, 4, 8, 8, 16, 4],
         "pixdim": [4.0, 4.0], "field_of_view": [48, 48], "image_size": [48, 48], "batch_size": 4,
         "slices_per_volume": 2, "num_iterations": 4, "val_interval": 1, "num_workers": 0, "sw_batch_size": 8},
        "val_mean_dice", "predicted_mask/0", False, lambda step, total: 0.001,
    ),
    "covid19_ct_mil_classification": Case(
        "covid19_ct_mil_classification",
        {"demo_args": {"num_cases": 21, "shape": [48, 48, 16]}, "backbone": "tiny", "image_size": [32, 32],
         "train_num_slices": 8, "section_length": 4, "top_k": 2, "batch_size": 2, "num_iterations": 7,
         "num_workers": 0, "cache_rate": 1.0},
        "val_auc", "edm_cam/0", False, lambda step, total: 0.001,
    ),
    "covid19_ct_transfer_classification": Case(
        "covid19_ct_transfer_classification",
        {"demo_args": {"num_cases": 12, "shape": [64, 48, 8], "slices_per_case": 1,
                       "fractions": {"training": 0.5, "validation": 0.17, "test": 0.33}},
         "backbone": "small_resnet", "pretrained": False, "canvas_hw": [32, 44], "num_epochs": 2,
         "learning_rate": 0.01, "lr_milestones": [1], "lr_values": [0.01, 0.001], "weight_decay": 0.0001,
         "batch_size": 4, "val_interval": 1, "num_workers": 0, "embedding_method": "pca"},
        "val_accuracy", "gradcam/0", False, lambda step, total: 0.01 if step == 1 else 0.001,
    ),
    "covid19_cxr_ensemble_classification": Case(
        "covid19_cxr_ensemble_classification",
        {"demo_args": {"num_cases": 32, "size": [64, 64],
                       "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375}},
         "image_size": [32, 32], "backbone": "small_resnet", "num_epochs": 4, "num_cycles": 2,
         "learning_rate": 0.05, "batch_size": 8, "val_interval": 1, "num_workers": 0,
         "snapshot_criterion": "val_metric"},
        # cyclic cosine, cycles of 4 / 2 = 2 epochs: 0.05 / 2 * (cos(pi * ((t - 1) mod 2) / 2) + 1)
        "val_accuracy", "gradcampp/0", False, lambda step, total: 0.05 if step % 2 == 1 else 0.025,
    ),
    "covid19_cxrnet_classification": Case(
        "covid19_cxrnet_classification",
        {"demo_args": {"num_cases": 32, "size": [64, 64],
                       "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375}},
         "image_size": [32, 32], "backbone": "small_resnet", "decoder_channels": [8, 8, 8], "batch_size": 4,
         "learning_rate": 0.001, "num_iterations": 8, "val_interval": 1, "num_workers": 0},
        "val_accuracy", "gradcam/0", True, _exponential(0.001, 1e-6),
    ),
}  # fmt: skip


#: Bundles trained a second time with the switches off, to compare with the run with them on.
COMPARED = ("cxr_lung_segmentation", "covid19_cxrnet_classification")
MARKER = "=== tracking-test job: "

#: All trainings run one after the other in ONE fresh Python process through ``monai.bundle.run`` (the
#: function behind ``python -m monai.bundle run``), which saves importing torch, MONAI and mlflow again for
#: each of the eight runs. Each job gets its own bundle copy, demo-data cache and tracking database.
DRIVER = """
import json, os, sys
from monai.bundle import run
for job in json.loads(sys.argv[1]):
    os.environ["MEDXAI_CACHE"] = job.pop("cache")
    name = job.pop("name")
    print(MARKER + name, flush=True)
    run("training", **job)
    sys.stdout.flush()
    sys.stderr.flush()
""".replace("MARKER", repr(MARKER))


@dataclass(frozen=True)
class Run:
    """A finished tiny training."""

    case: Case
    copy: BundleCopy
    log: str
    tracking_uri: str | None
    epochs: int
    iterations_per_epoch: int

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch

    @property
    def validation_epochs(self) -> list[int]:
        interval = int(self.case.overlay.get("val_interval", 1))
        return list(range(interval, self.epochs + 1, interval))


def _epochs_and_length(log: str) -> tuple[int, int]:
    """``(E, L)`` from the StatsHandler lines ``Epoch: e/E, Iter: i/L``."""
    found = set(re.findall(r"Epoch: \d+/(\d+), Iter: \d+/(\d+)", log))
    assert len(found) == 1, f"expected one 'Epoch: e/E, Iter: i/L' pattern, found {found}"
    epochs, length = found.pop()
    return int(epochs), int(length)


def _train_all(root: Path) -> dict[str, Run]:
    """Train every case with the switches on (and ``--tracking mlflow`` when mlflow is installed), then the
    :data:`COMPARED` ones with them off (as ``<bundle>:off``, reusing the first run's demo data)."""
    jobs, copies, uris = [], {}, {}
    plan = [(name, True) for name in sorted(CASES)] + [(name, False) for name in COMPARED]
    for name, switched_on in plan:
        key = name if switched_on else f"{name}:off"
        case = CASES[name]
        folder = root / key.replace(":", "_")
        folder.mkdir()
        copy = copy_bundle(case.bundle, folder, {**case.overlay, "amp": switched_on, "channels_last": switched_on})
        job = {"name": key, "cache": str((copies[name] if not switched_on else copy).cache),
               "config_file": copy.config_files("train.json"), "bundle_root": str(copy.bundle),
               "meta_file": str(copy.bundle / "configs" / "metadata.json"),
               "logging_file": str(copy.bundle / "configs" / "logging.conf")}  # fmt: skip
        if switched_on and HAS_MLFLOW:
            uris[key] = f"sqlite:///{folder / 'mlflow.db'}"
            job.update(tracking="mlflow", tracking_uri=uris[key], experiment_name="tracking_test")
        jobs.append(job)
        copies[key] = copy
    anywhere = next(iter(copies.values()))
    # "-W always": a precision warning shows in the log of every run that triggers it, not only the first
    command = [sys.executable, "-W", "always::UserWarning", "-c", DRIVER, json.dumps(jobs)]
    result = subprocess.run(
        command, cwd=anywhere.cwd, env=anywhere.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    logs = dict(part.split("\n", 1) for part in result.stdout.split(MARKER)[1:])
    runs = {}
    for key, copy in copies.items():
        case = CASES[key.split(":")[0]]
        runs[key] = Run(case, copy, logs[key], uris.get(key), *_epochs_and_length(logs[key]))
    return runs


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory) -> dict[str, Run]:
    return _train_all(tmp_path_factory.mktemp("tracking"))


@pytest.fixture(params=sorted(CASES))
def run(request, all_runs) -> Run:
    return all_runs[request.param]


def _events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """Scalars ``{tag: [(step, value)]}`` and images ``{tag: [step]}`` of every event file in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    return scalars, images


def test_tensorboard_logs_loss_learning_rate_metric_and_overlays(run):
    scalars, images = _events(run.copy.bundle / "eval")
    case, n = run.case, run.iterations
    assert [step for step, _ in scalars["train_loss"]] == list(range(1, n + 1))
    assert all(math.isfinite(value) for _, value in scalars["train_loss"])
    lr_steps = list(range(1, (n if case.lr_per_iteration else run.epochs) + 1))
    assert [step for step, _ in scalars["learning_rate"]] == lr_steps
    for step, value in scalars["learning_rate"]:
        assert value == pytest.approx(case.expected_lr(step, n), rel=1e-5), f"learning rate at step {step}"
    # validation during training (the ensemble's SnapshotSelector evaluates its snapshots again afterwards)
    validations = len(run.validation_epochs)
    assert [step for step, _ in scalars[case.metric]][:validations] == run.validation_epochs
    assert images[case.overlay_tag][:validations] == run.validation_epochs
    assert len(images[case.overlay_tag]) == len(scalars[case.metric])
    # the metric in TensorBoard is the one the console log printed
    printed = [float(v) for v in re.findall(rf"Metrics -- .*?{case.metric}: ([0-9.]+)", run.log)]
    assert printed == pytest.approx([value for _, value in scalars[case.metric]], abs=5e-5)


def test_cpu_run_with_amp_and_channels_last_emits_no_precision_warning(run):
    # without the CPU guard MONAI's trainer warns "torch.cuda.amp.GradScaler is enabled, but CUDA is not
    # available" and torch.autocast("cuda") "... CUDA is not available or torch_xla is imported"
    for text in CPU_PRECISION_WARNINGS:
        assert text not in run.log, f"{run.case.bundle}: '{text}' in the log of a CPU run with amp/channels_last"


@pytest.mark.parametrize("bundle", COMPARED)
def test_amp_and_channels_last_do_not_change_cpu_results(bundle, all_runs):
    on, _ = _events(all_runs[bundle].copy.bundle / "eval")
    off, _ = _events(all_runs[f"{bundle}:off"].copy.bundle / "eval")
    for tag in ("train_loss", "learning_rate", CASES[bundle].metric):
        assert len(on[tag]) > 1 and on[tag] == off[tag], f"{tag} differs with amp/channels_last switched on (CPU)"


def test_mlflow_tracking_logs_the_runs_loss_metric_and_learning_rate(run):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run.tracking_uri)
    experiment = client.get_experiment_by_name("tracking_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    scalars, _ = _events(run.copy.bundle / "eval")

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    for key in ("train_loss", run.case.metric):
        tracked, logged = history(key), sorted(scalars[key])
        assert [step for step, _ in tracked] == [step for step, _ in logged], key
        assert [v for _, v in tracked] == pytest.approx([v for _, v in logged], rel=1e-6), key
    # MLFlowHandler reads the optimizer after every iteration (after an iteration-level scheduler stepped)
    n, length = run.iterations, run.iterations_per_epoch
    lr = history("lr_group_0")
    assert [step for step, _ in lr] == list(range(1, n + 1))
    for step, value in lr:
        expected = run.case.expected_lr(step + 1, n) if run.case.lr_per_iteration else run.case.expected_lr(
            (step - 1) // length + 1, n)
        assert value == pytest.approx(expected, rel=1e-6), f"lr_group_0 at iteration {step}"
