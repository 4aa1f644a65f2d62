"""Every training bundle, SIGKILLed mid-epoch and run again with ``configs/resume.json``, ends bit-identical to an
uninterrupted run.

For each of the five bundles besides ``cxr_lung_segmentation`` (which ``test_resume_after_kill.py`` covers at
length) three real ``python -m monai.bundle run training`` subprocesses run on a tiny overlay: one
uninterrupted; one that kills itself with SIGKILL from an ``ITERATION_COMPLETED(once=K)`` handler (a real
SIGKILL at a known iteration: no timing involved), where ``K`` lies in the middle of an epoch and one
iteration after the last saved state, so the killed run has done work that was never saved; and the same
command again, which resumes. The resumed run's final training state file (network, optimiser, scheduler,
trainer counters, best-model bookkeeping and every random generator) and its ``model.pt`` must equal the
uninterrupted run's bit for bit; for the snapshot ensemble, also the snapshot files (names, count, tensors),
the chosen ``model.pt`` and ``snapshot_selection.json``. The killed run also prints that the bundle's MONAI
``CheckpointSaver`` (``model.pt`` or the snapshots) writes atomically (``AtomicCheckpointSaver`` of
``train.json``). The brain bundle's thin-slice loader runs over eight unlabelled volumes (thin and thick)
while an epoch has four thick batches, so the kill (epoch 2) lands in the middle of a thin pass begun in
epoch 1.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle_runner import BundleCopy, copy_bundle

TRAIN = ("train.json", "resume.json")
RESUMED = re.compile(r"resuming from last_state.pt: iteration (\d+) \(epoch (\d+), batch (\d+)/(\d+) done\)")
KILL = "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once={}), " \
       "lambda engine: os.kill(os.getpid(), signal.SIGKILL))"  # fmt: skip
# prints the atomic flag of every checkpoint that the run's MONAI CheckpointSavers write (train.json's
# AtomicCheckpointSaver: model.pt or the snapshots). It runs after KILL, which builds
# the trainer and so every object in the usual order (building the handlers first would draw the random
# initial weights in another order than the uninterrupted run).
ATOMIC = "$print('atomic savers:', [c.save_handler._atomic for h in @train#handlers + (@validate#handlers or []) " \
         "for c in (getattr(h, n, None) for n in ('_final_checkpoint', '_key_metric_checkpoint', " \
         "'_interval_checkpoint')) if c is not None], flush=True)"  # fmt: skip

# bundle -> (overlay, epoch in which the run kills itself); a training state is saved every 2 iterations inside
# an epoch and after every epoch (resume_interval 2)
SPECS: dict[str, tuple[dict[str, Any], int]] = {
    "brain_ventricle_segmentation": (
        {
            "demo_args": {"num_subjects": 8, "shape": [32, 32, 16], "spacing_mm": [4.0, 4.0, 2.0],
                          "fractions": {"training": 0.5, "validation": 0.25, "test": 0.25}},  # fmt: skip
            "backbone": "small_resnet",
            "decoder_channels": [4, 4, 4],
            "pixdim": [4.0, 4.0],
            "field_of_view": [32, 32],
            "image_size": [32, 32],
            "batch_size": 2,
            "slices_per_volume": 2,
            "unlabelled_thickness": ["thin", "thick"],  # 8 thin batches a pass, 4 thick batches an epoch
            "num_iterations": 12,
            "val_interval": 1,
            "num_workers": 0,
            "sw_batch_size": 16,
        },
        2,
    ),
    "covid19_ct_mil_classification": (
        {
            "demo_args": {"num_cases": 12, "shape": [32, 32, 8],
                          "fractions": {"training": 0.5, "validation": 0.25, "test": 0.25}},  # fmt: skip
            "backbone": "tiny",
            "image_size": [24, 24],
            "train_num_slices": 4,
            "section_length": 2,
            "top_k": 1,
            "batch_size": 2,
            "num_iterations": 9,
            "num_workers": 0,
            "cache_rate": 1.0,
            "val_interval": 1,
        },
        2,
    ),
    "covid19_ct_transfer_classification": (
        {
            "demo_args": {"num_cases": 12, "shape": [48, 40, 8], "slices_per_case": 1,
                          "fractions": {"training": 0.5, "validation": 0.17, "test": 0.33}},  # fmt: skip
            "backbone": "small_resnet",
            "pretrained": False,
            "canvas_hw": [24, 32],
            "num_epochs": 3,
            "learning_rate": 0.01,
            "lr_milestones": [1, 2],
            "lr_values": [0.01, 0.003, 0.001],
            "weight_decay": 0.0001,
            "batch_size": 2,
            "val_interval": 1,
            "num_workers": 0,
        },
        2,
    ),
    "covid19_cxr_ensemble_classification": (
        {
            "demo_args": {"num_cases": 32, "size": [64, 64],
                          "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375}},  # fmt: skip
            "image_size": [24, 24],
            "backbone": "small_resnet",
            "num_epochs": 4,
            "num_cycles": 2,  # snapshots after epochs 2 and 4; the kill is in epoch 3, mid second cycle
            "learning_rate": 0.05,
            "batch_size": 4,
            "val_interval": 1,
            "num_workers": 0,
            "snapshot_criterion": "val_metric",
        },
        3,
    ),
    "covid19_cxrnet_classification": (
        {
            "demo_args": {"num_cases": 24, "size": [64, 64],
                          "fractions": {"training": 0.5, "validation": 0.125, "test": 0.375}},  # fmt: skip
            "image_size": [32, 32],
            "backbone": "small_resnet",
            "decoder_channels": [4, 4, 4],
            "batch_size": 4,
            "learning_rate": 0.001,
            "num_iterations": 9,
            "val_interval": 1,
            "num_workers": 0,
        },
        2,
    ),
}


def _kill_point(epoch_length: int, epoch: int) -> int:
    """The first iteration of ``epoch`` that is not its last and follows a mid-epoch save (an even iteration)."""
    assert epoch_length >= 3, f"an epoch of {epoch_length} iterations has no mid-epoch save and kill"
    start = (epoch - 1) * epoch_length
    return next(k for k in range(start + 2, start + epoch_length) if (k - 1) % 2 == 0 and (k - 1) % epoch_length)


def _command(copy: BundleCopy) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *copy.run_args(*TRAIN, run_id="training")]


def _run(copy: BundleCopy) -> subprocess.CompletedProcess:
    return subprocess.run(_command(copy), cwd=copy.cwd, env=copy.env, capture_output=True, text=True, timeout=600)


def _models(copy: BundleCopy) -> Path:
    return copy.bundle / "models"


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two loaded checkpoints differ: tensors by ``torch.equal`` (dtype and shape too), the rest by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for key in a for d in _differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}/{i}")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


@pytest.fixture(scope="module", params=sorted(SPECS))
def runs(request, tmp_path_factory) -> dict[str, Any]:
    bundle = request.param
    overlay, kill_epoch = SPECS[bundle]
    overlay = {**overlay, "resume_interval": 2}
    whole = copy_bundle(bundle, tmp_path_factory.mktemp("whole"), overlay)
    whole_result = _run(whole)
    assert whole_result.returncode == 0, (whole_result.stdout + whole_result.stderr)[-4000:]
    trainer = _load(_models(whole) / "last_state.pt")["trainer"]
    epoch_length, epochs = trainer["epoch_length"], trainer["max_epochs"]
    assert epochs >= kill_epoch, f"{bundle}: {epochs} epochs, fewer than the epoch of the kill"
    kill_at = _kill_point(epoch_length, kill_epoch)
    killer = {"+imports": ["$import os", "$import signal", "$import ignite"],
              "run": [KILL.format(kill_at), ATOMIC, "$@train#trainer.run()"]}  # fmt: skip
    killed = copy_bundle(bundle, tmp_path_factory.mktemp("killed"), {**overlay, **killer})
    killed.env["MEDXAI_CACHE"] = whole.env["MEDXAI_CACHE"]  # the same demo data, made once
    killed_result = _run(killed)
    at_kill = {p.name: _load(p) for p in sorted(_models(killed).glob("*.pt"))}
    killed.write_overlay(overlay)
    resumed_result = _run(killed)
    assert resumed_result.returncode == 0, (resumed_result.stdout + resumed_result.stderr)[-4000:]
    return {
        "bundle": bundle, "epoch_length": epoch_length, "epochs": epochs, "kill_at": kill_at,
        "whole": whole, "killed": killed, "killed_result": killed_result, "at_kill": at_kill,
        "resumed_log": resumed_result.stdout + resumed_result.stderr,
    }  # fmt: skip


def test_the_run_was_killed_mid_epoch_after_unsaved_work_and_resumed_at_the_last_state(runs):
    log = runs["killed_result"].stdout + runs["killed_result"].stderr
    assert runs["killed_result"].returncode == -signal.SIGKILL, log[-3000:]
    assert "atomic savers: [True]" in log, log[-3000:]  # its one CheckpointSaver writes atomically
    kill_at, length = runs["kill_at"], runs["epoch_length"]
    saved = kill_at - 1  # saves every 2 iterations; the kill is one iteration after the last one
    assert kill_at % length != 0 and saved % length != 0, "the kill and the last save must be mid-epoch"
    state = runs["at_kill"]["last_state.pt"]
    assert state["trainer"]["iteration"] == saved and state["trainer"]["epoch_length"] == length
    match = RESUMED.search(runs["resumed_log"])
    assert match, runs["resumed_log"][-3000:]
    assert [int(v) for v in match.groups()] == [saved, saved // length + 1, saved % length, length]


def test_the_resumed_run_ends_with_the_uninterrupted_runs_training_state_bit_for_bit(runs):
    whole = _load(_models(runs["whole"]) / "last_state.pt")
    resumed = _load(_models(runs["killed"]) / "last_state.pt")
    assert whole["trainer"]["iteration"] == runs["epoch_length"] * runs["epochs"]
    assert _differences(whole, resumed) == []  # network, optimiser, scheduler, counters, generators
    # not a file left over: the state at the kill holds other weights
    at_kill = runs["at_kill"]["last_state.pt"]
    assert _differences(at_kill["network"], resumed["network"])
    expected = {"network", "optimizer", "best_metric", "trainer", "rng"}
    if runs["bundle"] not in ("brain_ventricle_segmentation", "covid19_ct_mil_classification"):
        expected.add("lr_scheduler")  # the two without a scheduler in train.json
    if runs["bundle"] not in ("covid19_ct_transfer_classification", "covid19_cxr_ensemble_classification"):
        expected.add("best_model_saver")  # the three that keep model.pt by the validation key metric
    assert set(whole) == expected


def test_the_resumed_run_writes_the_same_model_files(runs):
    whole_dir, resumed_dir = _models(runs["whole"]), _models(runs["killed"])
    names = sorted(p.name for p in whole_dir.iterdir())
    assert names == sorted(p.name for p in resumed_dir.iterdir())  # no temporary file left behind either
    for name in names:
        if name.endswith(".pt"):
            assert _differences(_load(whole_dir / name), _load(resumed_dir / name)) == [], name
        else:
            assert (whole_dir / name).read_bytes() == (resumed_dir / name).read_bytes(), name


@pytest.mark.parametrize("runs", ["covid19_cxr_ensemble_classification"], indirect=True)  # the snapshot bundle
def test_the_snapshot_ensemble_resumed_mid_cycle_ends_with_the_same_snapshots(runs):
    assert runs["bundle"] == "covid19_cxr_ensemble_classification"
    snapshots = ["snapshot_model_epoch=2.pt", "snapshot_model_epoch=4.pt"]
    assert sorted(runs["at_kill"]) == ["last_state.pt", snapshots[0]]  # killed in epoch 3, after snapshot 1
    whole_dir, resumed_dir = _models(runs["whole"]), _models(runs["killed"])
    assert sorted(p.name for p in resumed_dir.glob("snapshot_*.pt")) == snapshots
    for name in snapshots:
        assert _differences(_load(whole_dir / name), _load(resumed_dir / name)) == [], name
    assert _differences(runs["at_kill"][snapshots[0]], _load(resumed_dir / snapshots[0])) == []
    whole_record = json.loads((whole_dir / "snapshot_selection.json").read_text())
    assert whole_record == json.loads((resumed_dir / "snapshot_selection.json").read_text())
    assert [s["file"] for s in whole_record["snapshots"]] == snapshots
    # the schedule was restored mid-cycle: epoch 3 restarted at the initial rate, epoch 4 at half of it
    scheduler = _load(resumed_dir / "last_state.pt")["lr_scheduler"]
    assert scheduler["T_0"] == 2 and scheduler["last_epoch"] == 4 and scheduler["T_cur"] == 0
