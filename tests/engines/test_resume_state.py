"""The parts of resumable training that the bundle tests reach only through a whole run.

- :func:`medxai.engines.resume.make_atomic` and :class:`~medxai.engines.resume.AtomicCheckpointSaver`: MONAI's
  ``CheckpointSaver`` writes in place, so a save that dies half way leaves a truncated snapshot; made atomic,
  the half-written snapshot never appears and the earlier snapshots stay whole.
- :class:`medxai.engines.snapshots.SnapshotSelector` writes ``model.pt`` and its JSON record atomically.
- :class:`medxai.engines.thick_thin.ThickThinTrainer` saves its position in the thin-slice loader: a run
  stopped mid-epoch and resumed feeds the network the same thick and thin batches (with the same random
  augmentations) as an uninterrupted run, and ends with the same weights.
- :class:`medxai.engines.resume.KeyMetricState` saves numpy scores (MONAI's ``ROCAUC``) as Python numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointSaver
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from medxai.engines.resume import AtomicCheckpointSaver, KeyMetricState, ResumableTraining, make_atomic
from medxai.engines.snapshots import SnapshotSelector
from medxai.engines.thick_thin import ThickThinTrainer
from medxai.errors import InputError
from medxai.losses import UniformDivergenceLoss


class _DiskFull(Exception):
    """A save that dies after writing part of the file."""


def _fail_half_way(obj, f, **kwargs):
    if isinstance(f, (str, Path)):
        f = open(f, "wb")  # noqa: SIM115 - the in-place write MONAI does, left truncated
    f.write(b"PK\x03\x04 half a checkpoint")
    f.flush()
    raise _DiskFull("disk full (simulated)")


def _snapshot_run(
    folder: Path, atomic: bool, monkeypatch, saver_class: type = CheckpointSaver
) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Three epochs of an engine that changes a network's weights; a snapshot after each; the third save fails."""
    network = nn.Linear(3, 2)
    saver = saver_class(folder, {"model": network}, file_prefix="snapshot", save_interval=1, epoch_level=True,
                        n_saved=None)  # fmt: skip
    if atomic:
        assert make_atomic(saver) is saver
    engine = Engine(lambda e, b: None)
    states = []

    @engine.on(Events.EPOCH_COMPLETED)
    def change_weights(engine):
        with torch.no_grad():
            network.weight.add_(1.0)
        states.append({k: v.clone() for k, v in network.state_dict().items()})
        if engine.state.epoch == 3:
            monkeypatch.setattr(torch, "save", _fail_half_way)

    saver.attach(engine)
    with pytest.raises(_DiskFull):
        engine.run([0], max_epochs=3)
    monkeypatch.undo()
    return network, states


def test_monai_checkpoint_saver_leaves_a_truncated_snapshot_when_a_save_dies(tmp_path, monkeypatch):
    _snapshot_run(tmp_path, atomic=False, monkeypatch=monkeypatch)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"snapshot_model_epoch={e}.pt" for e in (1, 2, 3)]
    assert (tmp_path / "snapshot_model_epoch=3.pt").read_bytes() == b"PK\x03\x04 half a checkpoint"


@pytest.mark.parametrize("how", ["make_atomic", "AtomicCheckpointSaver"])
def test_made_atomic_a_dying_snapshot_save_leaves_only_the_earlier_snapshots_whole(tmp_path, monkeypatch, how):
    if how == "make_atomic":
        _, states = _snapshot_run(tmp_path, atomic=True, monkeypatch=monkeypatch)
    else:  # the saver the bundles' train.json use
        _, states = _snapshot_run(tmp_path, atomic=False, monkeypatch=monkeypatch, saver_class=AtomicCheckpointSaver)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot_model_epoch=1.pt", "snapshot_model_epoch=2.pt"]
    for epoch in (1, 2):
        saved = torch.load(tmp_path / f"snapshot_model_epoch={epoch}.pt", weights_only=True)
        assert torch.equal(saved["weight"], states[epoch - 1]["weight"])
        assert saved["weight"][0, 0] != states[2]["weight"][0, 0]


def test_make_atomic_names_what_is_not_a_checkpoint_saver():
    with pytest.raises(InputError, match="StatsHandler.*handler index in resume.json"):
        from monai.handlers import StatsHandler

        make_atomic(StatsHandler())
    with pytest.raises(InputError, match="ResumableTraining"):
        ResumableTraining("unused", {}, atomic_savers=[ResumableTraining("unused", {})])


def test_snapshot_selector_writes_model_pt_and_record_atomically(tmp_path, monkeypatch):
    network = nn.Linear(3, 2)
    torch.save(network.state_dict(), tmp_path / "snapshot_model_epoch=1.pt")
    (tmp_path / "model.pt").write_bytes(b"the previous model")
    (tmp_path / "snapshot_selection.json").write_text('{"previous": true}')
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(val_accuracy=0.5))
    evaluator.run = lambda: Engine.run(evaluator, [0])
    selector = SnapshotSelector(tmp_path, network, evaluator=evaluator)
    monkeypatch.setattr(torch, "save", _fail_half_way)
    with pytest.raises(_DiskFull):
        selector.select()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "snapshot_model_epoch=1.pt",
                                                          "snapshot_selection.json"]  # fmt: skip
    assert (tmp_path / "model.pt").read_bytes() == b"the previous model"
    record = selector.select()
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], network.weight)
    assert json.loads((tmp_path / "snapshot_selection.json").read_text()) == record
    assert record["chosen"] == "snapshot_model_epoch=1.pt"


def test_key_metric_state_saves_numpy_scores_as_python_numbers(tmp_path):
    saver = CheckpointSaver(tmp_path, {"model": nn.Linear(1, 1)}, save_key_metric=True, key_metric_name="auc",
                            key_metric_filename="model.pt")  # fmt: skip
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(auc=np.float64(0.75)))
    saver.attach(evaluator)
    evaluator.run([0])
    state = KeyMetricState(saver).state_dict()
    assert state["_saved"] == [(0.75, "model_key_metric=0.7500.pt")] and type(state["_saved"][0][0]) is float
    torch.save(state, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True) == state


class _Stop(Exception):
    """Stands for SIGKILL: the run ends with no handler running after it."""


def _thick_thin_run(state_dir: Path, stop_at: int | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Two-class segmentation over 5 thick images (batch 2: 3 iterations an epoch) and 7 thin images (batch 2:
    4 batches a pass, so passes and epochs fall apart), both shuffled and randomly flipped / noised, 4 epochs,
    a training state every 2 iterations. Returns the sum of every input the network saw and the final weights."""
    set_determinism(seed=0)
    g = torch.Generator().manual_seed(0)
    thick = [{"image": torch.randn(1, 8, 8, generator=g), "label": (torch.rand(1, 8, 8, generator=g) > 0.5).float()}
             for _ in range(5)]  # fmt: skip
    thin = [{"image": torch.randn(1, 8, 8, generator=g)} for _ in range(7)]
    plain = EnsureTyped(["image", "label"], track_meta=False, allow_missing_keys=True)  # MetaTensor is slow here
    augment = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=0), plain])
    thin_augment = Compose([RandFlipd("image", prob=0.5, spatial_axis=1), RandGaussianNoised("image", prob=0.5), plain])
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(4, 2, 1))
    seen: list[float] = []
    network.register_forward_pre_hook(lambda module, args: seen.append(float(args[0].sum())))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    trainer = ThickThinTrainer(
        device=torch.device("cpu"),
        max_epochs=4,
        train_data_loader=DataLoader(Dataset(thick, augment), batch_size=2, shuffle=True),
        network=network,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0),
        unlabeled_data_loader=DataLoader(Dataset(thin, thin_augment), batch_size=2, shuffle=True),
        unlabeled_loss_function=UniformDivergenceLoss("pearson"),
        unlabeled_weight=0.5,
    )
    ResumableTraining(state_dir, {"network": network, "optimizer": optimizer}, save_interval=2).attach(trainer)
    if stop_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
        def stop(engine):
            raise _Stop

    try:
        trainer.run()
    except _Stop:
        pass
    return seen, {k: v.clone() for k, v in network.state_dict().items()}


# 3 iterations an epoch; 4 thin batches a pass (passes start at iterations 1, 5, 9); states at 2, 3, 4, 6, 8, ...
@pytest.mark.parametrize(("stop_at", "saved"), [(5, 4), (7, 6), (11, 10)])
def test_thick_thin_resumed_mid_epoch_sees_the_same_thick_and_thin_batches(tmp_path, stop_at, saved):
    whole_inputs, whole_weights = _thick_thin_run(tmp_path / "whole")
    before, _ = _thick_thin_run(tmp_path / "stopped", stop_at=stop_at)
    state = torch.load(tmp_path / "stopped" / "last_state.pt", weights_only=True)["trainer"]
    assert state["iteration"] == saved
    assert state["unlabeled"]["drawn"] == (saved - 1) % 4 + 1  # thin batches used of the running pass
    assert state["unlabeled"]["passes"] == (saved - 1) // 4 + 1
    after, resumed_weights = _thick_thin_run(tmp_path / "stopped")
    assert len(whole_inputs) == 2 * 12 and len(before) == 2 * stop_at  # a thick and a thin forward an iteration
    assert before[: 2 * saved] + after == whole_inputs  # every batch after the saved iteration is the same
    for key in whole_weights:
        assert torch.equal(whole_weights[key], resumed_weights[key]), key
