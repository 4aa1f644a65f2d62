"""Training killed with SIGKILL mid-epoch goes on from its last state and ends where an uninterrupted run ends.

``configs/resume.json`` (cxr_lung_segmentation) adds :class:`medxai.engines.resume.ResumableTraining`: the whole
training state (network, optimiser, scheduler, trainer iteration and epoch, best-model bookkeeping, random
generators) is written atomically to ``models/last_state.pt`` every 30 iterations and after every epoch here
(36 iterations an epoch), and read back at start. The bundle run is a real ``python -m monai.bundle``
subprocess. The test kills it (SIGKILL) right after the log says the state of iteration 60 (epoch 2, batch 24:
mid-epoch) was saved, runs the same command again, kills that right after the end-of-epoch-2 state (iteration
72, an epoch boundary) was saved, and runs it a third time to the end. So that the kill lands at a known point
however loaded the machine is (an iteration takes about 4 ms), the killed copy's overlay holds the run for a
minute right after those two saves (a ``time.sleep`` handler, which changes no number).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO, BundleCopy, copy_bundle
from ignite.handlers import DiskSaver

BUNDLE = REPO / "bundles" / "cxr_lung_segmentation"
TRAIN = ("train.json", "resume.json")
EPOCH_LENGTH = 36  # 60 cases x 0.6 for training, batch size 1
TINY = {
    "demo_args": {"num_cases": 60, "size": [64, 64], "fractions": {"training": 0.6, "validation": 0.2, "test": 0.2}},
    "image_size": [32, 32],
    "unet_channels": [4, 8, 16],
    "unet_strides": [2, 2],
    "unet_num_res_units": 0,
    "batch_size": 1,
    "learning_rate": 0.003,
    "augment_prob": 0.5,
    "num_iterations": 3 * EPOCH_LENGTH,
    "val_interval": 1,
    "num_workers": 0,
    "resume_interval": 30,
}
SAVED = re.compile(r"saved training state: iteration (\d+), epoch (\d+) batch (\d+)/(\d+)")
HOLD = "$@train#trainer.add_event_handler(ignite.engine.Events.{}, lambda engine: time.sleep(60))"
HOLD_AFTER_SAVES = {
    "+imports": ["$import time"],
    "run": [HOLD.format("ITERATION_COMPLETED(once=60)"), HOLD.format("EPOCH_COMPLETED(once=2)"),
            "$@train#trainer.run()"],
}
RESUMED = re.compile(r"resuming from last_state.pt: iteration (\d+) \(epoch (\d+), batch (\d+)/(\d+) done\)")
ITERATION_LOG = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+")


def _command(copy: BundleCopy) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *copy.run_args(*TRAIN, run_id="training")]


def _kill_after_saving(copy: BundleCopy, epoch: int, batch: int) -> str:
    """Start training; SIGKILL it as soon as its log reports the state saved at ``batch`` of ``epoch``."""
    process = subprocess.Popen(
        _command(copy), cwd=copy.cwd, env=copy.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log = []
    try:
        for line in process.stdout:
            log.append(line)
            match = SAVED.search(line)
            if match and (int(match[2]), int(match[3])) == (epoch, batch):
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(log)[-3000:]
    return "".join(log)


def _iteration_at_kill(copy: BundleCopy) -> int:
    return torch.load(copy.bundle / "models" / "last_state.pt", weights_only=True)["trainer"]["iteration"]


def _states(copy: BundleCopy) -> tuple[dict, dict]:
    models = copy.bundle / "models"
    return (
        torch.load(models / "model.pt", weights_only=True),
        torch.load(models / "last_state.pt", weights_only=True),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    whole = copy_bundle(BUNDLE.name, tmp_path_factory.mktemp("whole"), TINY)
    whole_log = whole.run(*TRAIN, run_id="training")
    killed = copy_bundle(BUNDLE.name, tmp_path_factory.mktemp("killed"), {**TINY, **HOLD_AFTER_SAVES})
    killed.env["MEDXAI_CACHE"] = whole.env["MEDXAI_CACHE"]  # the same demo data, made once
    logs = [_kill_after_saving(killed, epoch=2, batch=24)]
    kills = [_iteration_at_kill(killed)]
    state_at_first_kill = torch.load(killed.bundle / "models" / "last_state.pt", weights_only=True)
    logs.append(_kill_after_saving(killed, epoch=2, batch=EPOCH_LENGTH))
    kills.append(_iteration_at_kill(killed))
    logs.append(killed.run(*TRAIN, run_id="training"))
    return {"whole": whole, "whole_log": whole_log, "killed": killed, "logs": logs, "kills": kills,
            "at_first_kill": state_at_first_kill}  # fmt: skip


def _resumed_at(log: str) -> list[int]:
    match = RESUMED.search(log)
    assert match, log[-3000:]
    return [int(v) for v in match.groups()]


def test_a_run_killed_mid_epoch_resumes_at_the_saved_batch_and_counts_on(runs):
    # killed while training on after the state of iteration 60 = epoch 2, batch 24 of 36 (next save: 72)
    assert runs["kills"][0] == 60, runs["logs"][0][-2000:]
    assert not SAVED.search(runs["logs"][1].split("resuming from")[0])  # nothing saved before the resume
    assert _resumed_at(runs["logs"][1]) == [60, 2, 24, EPOCH_LENGTH]
    first = ITERATION_LOG.search(runs["logs"][1])  # the first batch logged after the restart is the 25th
    assert (int(first[1]), int(first[2])) == (2, 25)


def test_a_run_killed_after_an_epoch_resumes_at_the_next_epoch(runs):
    assert runs["kills"][1] == 2 * EPOCH_LENGTH, runs["logs"][1][-2000:]  # next save would be at 90
    assert _resumed_at(runs["logs"][2]) == [72, 3, 0, EPOCH_LENGTH]
    first = ITERATION_LOG.search(runs["logs"][2])
    assert (int(first[1]), int(first[2])) == (3, 1)
    logged = [(int(e), int(i)) for e, i in ITERATION_LOG.findall("".join(runs["logs"]))]
    assert set(logged) == {(e, i) for e in (1, 2, 3) for i in range(1, EPOCH_LENGTH + 1)}


def test_the_resumed_run_ends_with_the_uninterrupted_runs_weights_optimiser_and_schedule(runs):
    whole_model, whole_state = _states(runs["whole"])
    killed_model, killed_state = _states(runs["killed"])
    assert whole_state["trainer"]["iteration"] == killed_state["trainer"]["iteration"] == 3 * EPOCH_LENGTH
    assert whole_model.keys() == killed_model.keys()
    for key in whole_model:  # the best-Dice model.pt: the same epoch chosen, bit-identical weights
        assert torch.equal(whole_model[key], killed_model[key]), key
    for key in whole_state["network"]:
        assert torch.equal(whole_state["network"][key], killed_state["network"][key]), key
    whole_adam, killed_adam = whole_state["optimizer"]["state"], killed_state["optimizer"]["state"]
    assert whole_adam.keys() == killed_adam.keys()
    for index in whole_adam:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(whole_adam[index][name], killed_adam[index][name]), (index, name)
    assert whole_state["lr_scheduler"] == killed_state["lr_scheduler"]
    assert whole_state["best_metric"] == killed_state["best_metric"]
    assert whole_state["best_model_saver"] == killed_state["best_model_saver"]
    # the state at the first kill is a different (earlier) one: the equality above is not a file left over
    assert not torch.equal(
        runs["at_first_kill"]["network"]["model.0.conv.weight"], killed_state["network"]["model.0.conv.weight"]
    )


def test_the_resume_state_file_holds_plain_tensors_and_model_pt_stays_a_plain_state_dict(runs):
    model, state = _states(runs["whole"])
    assert set(state) == {"network", "optimizer", "lr_scheduler", "best_model_saver", "best_metric", "trainer", "rng"}
    assert set(model) == set(state["network"])  # the same keys as inference loads


def test_a_save_that_fails_half_written_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    """ignite DiskSaver(atomic=True) writes to a temporary file in the folder and renames it only when done."""
    saver = DiskSaver(tmp_path, atomic=True, require_empty=False)
    first = {"network": {"w": torch.arange(6.0)}}
    saver(first, "last_state.pt")
    real_save = torch.save

    def fail_half_way(obj, f, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", fail_half_way)
    with pytest.raises(OSError, match="simulated"):
        saver({"network": {"w": torch.zeros(6)}}, "last_state.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last_state.pt"]  # the temporary file was removed
    assert torch.equal(torch.load(tmp_path / "last_state.pt", weights_only=True)["network"]["w"], torch.arange(6.0))


KILL_DURING_SAVE = """
import sys, torch
from ignite.handlers import DiskSaver
saver = DiskSaver(sys.argv[1], atomic=True, require_empty=False)
big = torch.zeros(16_000_000)  # 64 MB: a save lasts long enough to be caught inside it
for i in range(1, 10_000):
    big[0] = i
    saver({"w": big, "i": i}, "last_state.pt")
    print(i, flush=True)
"""


def test_a_kill_during_a_save_leaves_the_previous_state_loadable(tmp_path):
    command = [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    saved = int(process.stdout.readline())  # the first save is complete and renamed; the second one begins
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # kill once the next save's temporary file is partly written
        partial = [p for p in tmp_path.iterdir() if p.name != "last_state.pt"]
        if partial and 0 < _size(partial[0]) < 60_000_000:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    state = torch.load(tmp_path / "last_state.pt", weights_only=True)
    assert state["i"] in (saved, saved + 1) and state["w"][0] == state["i"] and state["w"].numel() == 16_000_000


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed in between
        return 0


class _Killed(Exception):
    """Stands for SIGKILL inside one process: the run stops with no handler running after it."""


def _sampled_run(state_dir: Path, kill_at: int | None = None) -> list[tuple[list[float], float]]:
    """A seeded ignite run over a class-balanced sampler and a random transform; each step draws a dropout-like
    number from the global generator. Returns (batch values, draw) per iteration, up to a kill at ``kill_at``."""
    from ignite.engine import Engine
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandGaussianNoised
    from monai.utils import set_determinism
    from torch.utils.data import WeightedRandomSampler

    from medxai.engines.resume import ResumableTraining

    set_determinism(seed=0)
    data = [{"x": torch.full((1,), float(i))} for i in range(10)]
    sampler = WeightedRandomSampler([1.0] * 5 + [3.0] * 5, 10, generator=torch.Generator().manual_seed(7))
    loader = DataLoader(Dataset(data, Compose([RandGaussianNoised("x", prob=0.5)])), batch_size=2, sampler=sampler)
    seen = []

    def step(engine, batch):
        if kill_at is not None and engine.state.iteration == kill_at:
            raise _Killed
        seen.append((batch["x"].flatten().tolist(), torch.rand(1).item()))

    engine = Engine(step)
    ResumableTraining(state_dir, save_dict={}, save_interval=2).attach(engine)
    try:
        engine.run(loader, max_epochs=3)
    except _Killed:
        pass
    return seen


# 5 iterations an epoch, a state every 2 inside an epoch and after each epoch: killed at 4, 8 and 11, the runs
# resume from the states of iteration 2 (epoch 1, batch 2), 6 (epoch 2, batch 1) and 10 (end of epoch 2)
@pytest.mark.parametrize(("kill_at", "saved"), [(4, 2), (8, 6), (11, 10)])
def test_resumed_batches_augmentations_and_draws_are_those_of_the_uninterrupted_run(tmp_path, kill_at, saved):
    whole = _sampled_run(tmp_path / "whole")
    before = _sampled_run(tmp_path / "killed", kill_at=kill_at)
    saved_at = torch.load(tmp_path / "killed" / "last_state.pt", weights_only=True)["trainer"]["iteration"]
    after = _sampled_run(tmp_path / "killed")
    assert len(whole) == 15 and len(before) == kill_at - 1 and saved_at == saved
    assert before[:saved_at] + after == whole  # the iterations after the saved one are run again, identically
