"""Cyclic cosine annealing and snapshot selection (DeepCOVIDExplainer, Karim et al. 2020, Sec. II-B, III).

The schedule is checked against eq. 1 written out by hand, the snapshots are written by a real MONAI
``SupervisedTrainer`` with ``CheckpointSaver``, the validation-metric choice uses hand-set classifiers whose
accuracy is known, and the WeightWatcher choice uses weight matrices with a prescribed singular value
spectrum, whose power-law exponent is computed by hand.
"""

from __future__ import annotations

import json
import logging
import math
import sys

import ignite.distributed as idist
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, LrScheduleHandler

import medxai.engines.snapshots as snapshots
from medxai.engines import (
    SnapshotSelector,
    cycle_length,
    cyclic_cosine_scheduler,
    list_snapshots,
    weightwatcher_alpha,
)
from medxai.errors import InputError

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------- schedule
def eq1(t: int, total: int, cycles: int, alpha_0: float) -> float:
    """Karim et al. 2020, eq. 1."""
    period = math.ceil(total / cycles)
    return alpha_0 / 2 * (math.cos(math.pi * ((t - 1) % period) / period) + 1)


def lrs_per_epoch(total: int, cycles: int, eta_min: float = 0.0) -> list[float]:
    """Learning rate at the start of epochs 1..total, stepping the scheduler once after each epoch."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cyclic_cosine_scheduler(optimizer, total, cycles, eta_min=eta_min)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cycle_length_is_ceil_t_over_c():
    assert cycle_length(200, 20) == 10  # the paper's setting
    assert cycle_length(12, 3) == 4
    assert cycle_length(10, 3) == 4  # ceil(10/3)
    assert cycle_length(1, 1) == 1
    for total, cycles, message in [(0, 1, "total_epochs"), (5, 0, "cycles"), (5, 6, "cycles=6"), (5.0, 1, "5.0"),
                                   (True, 1, "total_epochs")]:
        with pytest.raises(InputError, match=message):
            cycle_length(total, cycles)


def test_scheduler_follows_eq1_once_per_epoch():
    lrs = lrs_per_epoch(12, 3)  # cycle length 4
    for t, lr in enumerate(lrs, start=1):
        assert lr == pytest.approx(eq1(t, 12, 3, 1.0), abs=1e-12)
    assert lrs[0] == pytest.approx(1.0)  # t=1: alpha_0
    assert lrs[1] == pytest.approx(0.5 * (math.sqrt(0.5) + 1))  # t=2: cos(pi/4)
    assert lrs[2] == pytest.approx(0.5)  # t=3: cos(pi/2) = 0
    assert lrs[3] == pytest.approx(0.5 * (1 - math.sqrt(0.5)))  # t=4: bottom of the cycle
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(1.0)  # t=5, 9: restarts
    # eta_min lifts the floor: eta_min + (alpha_0 - eta_min) * 0.5 at t=3
    assert lrs_per_epoch(12, 3, eta_min=0.1)[2] == pytest.approx(0.55)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert cyclic_cosine_scheduler(optimizer, 200, 20).T_0 == 10
    with pytest.raises(InputError, match="eta_min"):
        cyclic_cosine_scheduler(optimizer, 200, 20, eta_min=-1.0)


def test_monai_trainer_saves_one_snapshot_per_cycle_bottom(tmp_path):
    torch.manual_seed(0)
    data = [{"image": torch.randn(8, 3), "label": torch.randint(0, 2, (8,))}]
    network = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    scheduler = cyclic_cosine_scheduler(optimizer, total_epochs=6, cycles=3)  # cycle length 2
    trainer = SupervisedTrainer(
        device=CPU, max_epochs=6, train_data_loader=data, network=network, optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),
        train_handlers=[
            LrScheduleHandler(scheduler, print_lr=False, epoch_level=True),
            CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": network}, save_interval=2, epoch_level=True,
                            n_saved=None, file_prefix="snapshot"),
        ],
    )
    lrs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run()

    assert lrs == pytest.approx([1 * 0.5, 0.5 * 0.5] * 3)  # eq. 1 with alpha_0 = 0.5, cycle length 2
    names = ["snapshot_model_epoch=2.pt", "snapshot_model_epoch=4.pt", "snapshot_model_epoch=6.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    found = list_snapshots(tmp_path)
    assert [p.name for p in found] == names
    states = [torch.load(p, weights_only=True) for p in found]
    for state in states:  # the bare state dict of the network
        assert set(state) == {"weight", "bias"}
        nn.Linear(3, 2).load_state_dict(state)
    for first in range(3):
        for second in range(first + 1, 3):
            assert not torch.equal(states[first]["weight"], states[second]["weight"])
    assert torch.equal(states[-1]["weight"], network.weight.detach())  # epoch 6 = the trained network


def test_list_snapshots_numeric_epoch_order(tmp_path):
    for epoch in (10, 2, 11, 9, 1):
        torch.save({"w": torch.zeros(1)}, tmp_path / f"snapshot_model_epoch={epoch}.pt")
    others = ("model.pt", "snapshot_model_key_metric=0.9000.pt", "best_model_epoch=3.pt", "snapshot_model_epoch=4.pth")
    for other in others:
        (tmp_path / other).write_bytes(b"x")
    assert [p.name for p in list_snapshots(tmp_path)] == [f"snapshot_model_epoch={e}.pt" for e in (1, 2, 9, 10, 11)]
    assert [p.name for p in list_snapshots(tmp_path, prefix="best")] == ["best_model_epoch=3.pt"]
    assert snapshots.snapshot_epoch(tmp_path / "snapshot_model_epoch=10.pt") == 10


def test_list_snapshots_errors_name_folder_and_pattern(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"no snapshot file 'snapshot_\*epoch=<N>\.pt'") as info:
        list_snapshots(tmp_path)
    assert str(tmp_path) in str(info.value) and "model.pt" in str(info.value)
    with pytest.raises(InputError, match="does not exist"):
        list_snapshots(tmp_path / "missing")


# ------------------------------------------------------------------------------- val_metric selection
# Eight 2D points, class 1 iff x0 > 0. A linear classifier (W, b) predicts argmax(W x + b).
POINTS = torch.tensor([[-2.0, 0], [-1, 1], [-1, -1], [-0.5, 0], [0.5, 0], [1, 1], [1, -1], [2, 0]])
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
PERFECT = ([[-1.0, 0], [1, 0]], [0.0, 0])  # class 1 iff 2 x0 > 0: 8/8
INVERTED = ([[1.0, 0], [-1, 0]], [0.0, 0])  # class 1 iff x0 < 0: 0/8
CONSTANT = ([[0.0, 0], [0, 0]], [1.0, 0])  # always class 0: 4/8
SHIFTED = ([[-1.0, 0], [1, 0]], [0.0, -1.2])  # class 1 iff 2 x0 > 1.2: misses x0 = 0.5 -> 7/8


def linear_state(weights_bias: tuple[list, list], scale: float = 1.0) -> dict[str, torch.Tensor]:
    weight, bias = weights_bias
    return {"weight": scale * torch.tensor(weight), "bias": scale * torch.tensor(bias)}


def logits_and_labels(output: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's decollated output as one (B, C) logits and one (B,) label batch for ignite's ``Accuracy``.

    (``from_engine(["pred", "label"])`` with one-hot ``pred``/``label`` makes ignite update per case with
    (C,) vectors, i.e. a binary accuracy over the C entries: 2/3 instead of 0 for a wrong 3-class case.)
    """
    return torch.stack([torch.as_tensor(o["pred"]) for o in output]), torch.as_tensor([int(o["label"]) for o in output])


def evaluator_of(network: nn.Module, data: list[dict], metric_name: str = "val_accuracy") -> SupervisedEvaluator:
    return SupervisedEvaluator(
        device=CPU, val_data_loader=DataLoader(data, batch_size=3), network=network,
        key_val_metric={metric_name: Accuracy(output_transform=logits_and_labels)},
    )


def accuracy_evaluator(network: nn.Module, metric_name: str = "val_accuracy") -> SupervisedEvaluator:
    return evaluator_of(network, [{"image": POINTS[i], "label": LABELS[i]} for i in range(len(LABELS))], metric_name)


def write_snapshots(folder, states: dict[int, dict]) -> None:
    for epoch, state in states.items():
        torch.save(state, folder / f"snapshot_model_epoch={epoch}.pt")


def test_val_metric_selection_picks_the_most_accurate_snapshot(tmp_path):
    write_snapshots(tmp_path, {2: linear_state(CONSTANT), 4: linear_state(PERFECT), 6: linear_state(SHIFTED),
                               8: linear_state(INVERTED)})
    network = nn.Linear(2, 2)
    trainer = SupervisedTrainer(
        device=CPU, max_epochs=1, train_data_loader=[], network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0), loss_function=nn.CrossEntropyLoss(),
    )
    selector = SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network))
    selector.attach(trainer)
    trainer.fire_event(Events.COMPLETED)  # as at the end of training
    record = selector.record

    assert record["chosen"] == "snapshot_model_epoch=4.pt" and record["chosen_epoch"] == 4
    assert record["chosen_score"] == 1.0
    assert [(s["file"], s["epoch"], s["score"], s["val_metric"]) for s in record["snapshots"]] == [
        ("snapshot_model_epoch=2.pt", 2, 0.5, 0.5),
        ("snapshot_model_epoch=4.pt", 4, 1.0, 1.0),
        ("snapshot_model_epoch=6.pt", 6, 0.875, 0.875),
        ("snapshot_model_epoch=8.pt", 8, 0.0, 0.0),
    ]
    assert json.loads((tmp_path / "snapshot_selection.json").read_text()) == record
    assert record["criterion"] == "val_metric" and record["metric_name"] == "val_accuracy"
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    for key, value in linear_state(PERFECT).items():
        assert torch.equal(saved[key], value)
        assert torch.equal(network.state_dict()[key], value)  # the network keeps the chosen weights

    # lower is better: the inverted classifier (accuracy 0) wins
    record = SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network), greater_is_better=False)()
    assert record["chosen"] == "snapshot_model_epoch=8.pt"
    assert torch.equal(network.weight.detach(), linear_state(INVERTED)["weight"])


def test_val_metric_tie_goes_to_the_later_snapshot(tmp_path):
    write_snapshots(
        tmp_path, {1: linear_state(PERFECT), 2: linear_state(PERFECT, scale=2.0), 3: linear_state(CONSTANT)}
    )
    network = nn.Linear(2, 2)
    record = SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network), output_name="best.pt").select()
    assert [s["score"] for s in record["snapshots"]] == [1.0, 1.0, 0.5]
    assert record["chosen"] == "snapshot_model_epoch=2.pt"
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["weight"], 2.0 * torch.tensor(PERFECT[0]))


@pytest.fixture
def gloo_world_of_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        idist.sync()  # ignite back to its serial model


def test_distributed_ddp_network_and_only_rank_zero_writes(tmp_path, gloo_world_of_one, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    # the files of a DDP network saved without unwrapping ("module." keys) still load into the module
    write_snapshots(folder, {1: {f"module.{k}": v for k, v in linear_state(SHIFTED).items()},
                             2: linear_state(PERFECT), 3: {"model": linear_state(CONSTANT)}})
    network = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    record = SnapshotSelector(folder, network, evaluator=accuracy_evaluator(network)).select()
    assert [s["score"] for s in record["snapshots"]] == [0.875, 1.0, 0.5]
    assert record["chosen"] == "snapshot_model_epoch=2.pt"
    assert torch.equal(network.module.weight.detach(), linear_state(PERFECT)["weight"])
    assert (folder / "model.pt").is_file() and (folder / "snapshot_selection.json").is_file()

    (folder / "model.pt").unlink()
    (folder / "snapshot_selection.json").unlink()
    monkeypatch.setattr(snapshots, "_rank", lambda: 1)
    with torch.no_grad():
        network.module.weight.zero_()
    record = SnapshotSelector(folder, network, evaluator=accuracy_evaluator(network)).select()
    assert record["chosen"] == "snapshot_model_epoch=2.pt"
    assert torch.equal(network.module.weight.detach(), linear_state(PERFECT)["weight"])  # every rank loads it
    assert not (folder / "model.pt").exists() and not (folder / "snapshot_selection.json").exists()


def test_selector_errors_name_the_problem(tmp_path):
    network = nn.Linear(2, 2)
    with pytest.raises(InputError, match="criterion must be one of .*'loss'"):
        SnapshotSelector(tmp_path, network, criterion="loss", evaluator=accuracy_evaluator(network))
    with pytest.raises(InputError, match="'val_metric' needs an evaluator"):
        SnapshotSelector(tmp_path, network)
    with pytest.raises(InputError, match="output_name must be a plain file name"):
        SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network), output_name="sub/model.pt")

    write_snapshots(tmp_path, {1: linear_state(PERFECT)})
    with pytest.raises(InputError, match=r"metric 'val_auc' is not in evaluator.state.metrics .*\['val_accuracy'\]"):
        SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network), metric_name="val_auc").select()

    (tmp_path / "snapshot_model_epoch=2.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"cannot read snapshot .*snapshot_model_epoch=2\.pt"):
        SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network)).select()
    torch.save([1, 2], tmp_path / "snapshot_model_epoch=2.pt")
    with pytest.raises(InputError, match=r"snapshot_model_epoch=2\.pt' holds a list, not a state dict"):
        SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network)).select()
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "snapshot_model_epoch=2.pt")
    with pytest.raises(InputError, match=r"snapshot_model_epoch=2\.pt' does not fit Linear"):
        SnapshotSelector(tmp_path, network, evaluator=accuracy_evaluator(network)).select()
    assert not (tmp_path / "model.pt").exists()


# ------------------------------------------------------------------------------------ WeightWatcher
N = 256


def power_law_matrix(a: float, seed: int) -> torch.Tensor:
    """N x N matrix U diag(s) V^T with singular values s_i = i^-a (U, V random orthogonal)."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(N, N, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(N, N, generator=generator, dtype=torch.float64))
    s = torch.arange(1, N + 1, dtype=torch.float64) ** (-a)
    return (u @ torch.diag(s) @ v.T).float()


def expected_alpha(a: float) -> float:
    """Power-law exponent WeightWatcher fits to the eigenvalues of W^T W for s_i = i^-a.

    The eigenvalues are lambda_i = s_i^2 = i^(-2a); as many exceed lambda as i <= lambda^(-1/(2a)), so the
    tail distribution is P(> lambda) ~ lambda^(-1/(2a)) and the density p ~ lambda^-(1 + 1/(2a)):
    alpha = 1 + 1/(2a). WeightWatcher's maximum-likelihood fit over all N eigenvalues (xmin = lambda_N, its
    KS-best choice for this exact power law) gives 1 + N / sum_i ln(lambda_i / lambda_N)
    = 1 + N / (2a sum_i ln(N / i)), the finite-N value (3.0293 instead of 3 for a = 1/4, N = 256).
    """
    return 1 + N / (2 * a * sum(math.log(N / i) for i in range(1, N + 1)))


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N, N)
        self.fc2 = nn.Linear(N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def test_weightwatcher_alpha_of_a_prescribed_spectrum(caplog):
    network = nn.Sequential()
    network.add_module("fc1", nn.Linear(N, N))
    network.add_module("block", nn.Sequential(nn.Linear(N, N), nn.ReLU(), nn.Linear(64, 64)))
    with torch.no_grad():
        network.fc1.weight.copy_(power_law_matrix(0.25, seed=1))  # alpha 1 + 1/(2a) = 3
        network.block[0].weight.copy_(power_law_matrix(1 / 6, seed=2))  # alpha 4
        network.block[2].weight.zero_()  # analysed (64 eigenvalues) but no power law to fit
    assert expected_alpha(0.25) == pytest.approx(3.0293, abs=1e-4)
    with caplog.at_level(logging.DEBUG, logger="medxai.engines.snapshots"):
        result = weightwatcher_alpha(network)
    assert [layer["name"] for layer in result["layers"]] == ["fc1", "block.0"]
    assert result["layers"][0]["alpha"] == pytest.approx(expected_alpha(0.25), abs=1e-3)
    assert result["layers"][1]["alpha"] == pytest.approx(expected_alpha(1 / 6), abs=1e-3)
    assert abs(result["layers"][1]["alpha"] - 4.0) < 0.05
    assert result["num_layers"] == 2
    assert result["mean_alpha"] == pytest.approx((expected_alpha(0.25) + expected_alpha(1 / 6)) / 2, abs=1e-3)
    assert [layer["name"] for layer in result["ignored_layers"]] == ["block.2"]
    assert any("fit failed" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_weightwatcher_errors_without_a_fittable_layer():
    with pytest.raises(InputError, match="no layer alpha in Linear: it has no Linear/Conv/Embedding layer"):
        weightwatcher_alpha(nn.Linear(4, 4))  # 4 eigenvalues < min_evals 8
    zero = nn.Linear(64, 64)
    nn.init.zeros_(zero.weight)
    with pytest.raises(InputError, match=r"no layer alpha in Linear: the power-law fit failed for all 1"):
        weightwatcher_alpha(zero)


def test_weightwatcher_selection_prefers_the_heavy_tailed_snapshot(tmp_path):
    torch.manual_seed(0)
    random_state = TwoLayers().state_dict()  # default (uniform) init: Marchenko-Pastur bulk, alpha > 6
    structured = {**random_state, "fc1.weight": power_law_matrix(0.25, 1), "fc2.weight": power_law_matrix(0.25, 2)}
    # fc1 bias 0, input 0: the output is fc2's bias, so the predicted class is the argmax of that bias
    wrong, right = torch.zeros(N), torch.zeros(N)
    wrong[5], right[3] = 1.0, 1.0
    structured.update({"fc1.bias": torch.zeros(N), "fc2.bias": wrong})
    random_state.update({"fc1.bias": torch.zeros(N), "fc2.bias": right})
    write_snapshots(tmp_path, {1: structured, 2: random_state})  # the later one would win a tie

    network = TwoLayers()
    evaluator = evaluator_of(network, [{"image": torch.zeros(N), "label": torch.tensor(3)} for _ in range(2)])
    record = SnapshotSelector(tmp_path, network, criterion="weightwatcher", evaluator=evaluator).select()

    first, second = record["snapshots"]
    assert first["mean_alpha"] == pytest.approx(expected_alpha(0.25), abs=1e-3)
    assert second["mean_alpha"] > 6  # under-trained by WeightWatcher's rule
    assert [first["score"], second["score"]] == [first["mean_alpha"], second["mean_alpha"]]
    assert [layer["name"] for layer in first["layer_alphas"]] == ["fc1", "fc2"] and first["num_layers"] == 2
    assert record["chosen"] == "snapshot_model_epoch=1.pt" and record["greater_is_better"] is False
    # the validation metric of both, for comparison: the WeightWatcher choice is the less accurate one here
    assert [first["val_metric"], second["val_metric"]] == [0.0, 1.0]
    assert record["score_name"] == "mean_alpha" and record["metric_name"] == "val_accuracy"
    assert json.loads((tmp_path / "snapshot_selection.json").read_text()) == record
    assert torch.equal(network.fc1.weight.detach(), structured["fc1.weight"])
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["fc2.bias"], wrong)


def test_weightwatcher_import_and_analysis_are_quiet_and_leave_root_logging_alone(capfd):
    """WeightWatcher's import logs warnings and calls ``logging.basicConfig(level=INFO)``, and its fit prints
    ("SMALL N PL FIT"). Re-imported here with a bare root logger, as in a plain script (pytest's own root
    handlers would make basicConfig do nothing)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stored = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "weightwatcher"}
    try:
        for name in stored:
            del sys.modules[name]
        root.handlers.clear()
        root.setLevel(logging.WARNING)
        capfd.readouterr()
        weightwatcher = snapshots._import_weightwatcher()
        assert weightwatcher is not stored.get("weightwatcher") and weightwatcher.__version__ >= "0.7"
        assert root.handlers == [] and root.level == logging.WARNING
        rank_one = nn.Linear(64, 64)
        nn.init.constant_(rank_one.weight, 0.3)  # its failing fit prints "SMALL N PL FIT" and logs warnings
        with pytest.raises(InputError, match="fit failed"):
            weightwatcher_alpha(rank_one)
        assert capfd.readouterr() == ("", "")
    finally:
        sys.modules.update(stored)
        root.handlers[:] = handlers
        root.setLevel(level)
