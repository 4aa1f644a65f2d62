"""ThickThinTrainer: seed 003 eq. 14 optimised alternately on labelled thick and unlabelled thin batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from monai.losses import DiceCELoss

from medxai.engines import ThickThinTrainer
from medxai.errors import InputError
from medxai.losses import UniformDivergenceLoss


class CountingLoader:
    """A list of batches that counts how often it was iterated and records ``set_epoch`` calls."""

    def __init__(self, batches: list) -> None:
        self.batches, self.passes = batches, 0
        self.sampler = self
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    thick = [{"image": torch.randn(2, 1, 8, 8, generator=g), "label": torch.randint(0, 3, (2, 1, 8, 8), generator=g).float()}
             for _ in range(2)]  # fmt: skip
    thin = [{"image": torch.randn(2, 1, 8, 8, generator=g)} for _ in range(3)]
    return thick, thin


def _trainer(network, thick, thin, lr=0.1, **kwargs) -> ThickThinTrainer:
    return ThickThinTrainer(
        device=torch.device("cpu"),
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=thick,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=lr),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0),
        unlabeled_data_loader=thin,
        unlabeled_loss_function=UniformDivergenceLoss("pearson"),
        **kwargs,
    )


def _manual(network, thick, thin, beta, alternate, lr=0.1):
    """The same updates written out: SGD on L_S, then on beta L_T (alternate), or on their sum."""
    net = copy.deepcopy(network)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    lt = UniformDivergenceLoss("pearson")
    for i, batch in enumerate(thick):
        opt.zero_grad()
        supervised = ce(net(batch["image"]), batch["label"])
        if alternate:
            supervised.backward()
            opt.step()
            opt.zero_grad()
            (beta * lt(net(thin[i % len(thin)]["image"]))).backward()
        else:
            (supervised + beta * lt(net(thin[i % len(thin)]["image"]))).backward()
        opt.step()
    return net


@pytest.mark.parametrize("alternate", [True, False])
def test_one_epoch_equals_the_updates_written_out(alternate: bool) -> None:
    torch.manual_seed(0)
    network = nn.Conv2d(1, 3, 3, padding=1)
    thick, thin = _data()
    expected = _manual(network, thick, thin, beta=0.5, alternate=alternate)
    trainer = _trainer(network, thick, CountingLoader(thin), unlabeled_weight=0.5, alternate=alternate)
    trainer.run()
    for got, want in zip(network.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    output = trainer.state.output[0]  # MONAI decollates the batch; scalars are repeated per sample
    assert set(output) >= {"image", "label", "pred", "loss", "loss_supervised", "loss_unsupervised"}
    assert float(output["loss"]) == pytest.approx(float(output["loss_supervised"]) + 0.5 * float(output["loss_unsupervised"]))


def test_alternate_steps_twice_per_iteration_and_joint_once() -> None:
    thick, thin = _data()
    for alternate, steps in ((True, 4), (False, 2)):
        network = nn.Conv2d(1, 3, 3, padding=1)
        trainer = _trainer(network, thick, CountingLoader(thin), alternate=alternate)
        calls = []
        original = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
        trainer.run()
        assert len(calls) == steps


def test_ls_only_never_reads_the_thin_loader_and_lt_only_ignores_labels() -> None:
    thick, thin = _data()
    loader = CountingLoader(thin)
    network = nn.Conv2d(1, 3, 3, padding=1)
    _trainer(network, thick, loader, unlabeled_weight=0.0).run()
    assert loader.passes == 0
    # L_T only: the labels do not change the update
    torch.manual_seed(1)
    base = nn.Conv2d(1, 3, 3, padding=1)
    nets = []
    for shift in (0.0, 1.0):
        net = copy.deepcopy(base)
        relabelled = [{"image": b["image"], "label": (b["label"] + shift) % 3} for b in thick]
        _trainer(net, relabelled, CountingLoader(thin), supervised_weight=0.0, unlabeled_weight=1.0).run()
        nets.append(net)
    for a, b, c in zip(nets[0].parameters(), nets[1].parameters(), base.parameters()):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, c)


def test_thin_loader_is_cycled_with_set_epoch() -> None:
    thick, thin = _data()
    loader = CountingLoader(thin[:2])
    _trainer(nn.Conv2d(1, 3, 3, padding=1), thick, loader, max_epochs=3).run()
    # 6 iterations, 2 thin batches per pass: three passes, epochs 0, 1, 2
    assert loader.passes == 3 and loader.epochs == [0, 1, 2]


def test_unlabeled_loss_makes_thin_predictions_confident() -> None:
    torch.manual_seed(0)
    thick, thin = _data()
    network = nn.Conv2d(1, 3, 3, padding=1)
    lt = UniformDivergenceLoss("pearson")
    before = sum(lt(network(b["image"])).item() for b in thin)
    _trainer(network, thick, CountingLoader(thin), max_epochs=30, supervised_weight=0.0, unlabeled_weight=1.0, lr=0.5).run()
    after = sum(lt(network(b["image"])).item() for b in thin)
    assert after < before - 0.5  # closer to the one-hot bound -C = -3 per batch


def test_bad_weights_and_empty_thin_loader() -> None:
    thick, thin = _data()
    with pytest.raises(InputError, match="both 0"):
        _trainer(nn.Conv2d(1, 3, 1), thick, thin, unlabeled_weight=0.0, supervised_weight=0.0)
    with pytest.raises(InputError, match="unlabeled_weight must be >= 0"):
        _trainer(nn.Conv2d(1, 3, 1), thick, thin, unlabeled_weight=-1.0)
    trainer = _trainer(nn.Conv2d(1, 3, 1), thick, CountingLoader([]))
    with pytest.raises(InputError, match="yields no batches"):
        trainer.run()
