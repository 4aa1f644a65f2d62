"""Ensembles of seed 002 sec. II-C: eq. 2 (SCPA) and prediction maximisation by hand, checkpoint loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from medxai.errors import InputError
from medxai.networks.ensemble import PosteriorEnsemble, combine_posteriors, load_member


class _Fixed(nn.Module):
    """A 'network' that returns fixed logits for every input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def _posteriors() -> torch.Tensor:
    # two members, one image, three classes (normal, pneumonia, covid19)
    return torch.tensor([[[0.2, 0.3, 0.5]], [[0.1, 0.8, 0.1]]])


def test_scpa_is_the_softmax_of_the_summed_posteriors_of_eq_2():
    scores = combine_posteriors(_posteriors(), "scpa")
    # sums: 0.3, 1.1, 0.6 -> exp / sum exp
    e = [math.exp(0.3), math.exp(1.1), math.exp(0.6)]
    expected = torch.tensor([[v / sum(e) for v in e]])
    torch.testing.assert_close(scores.softmax(1), expected)
    assert int(scores.argmax()) == 1  # the mean posterior (0.15, 0.55, 0.30) also says pneumonia


def test_pm_follows_the_most_confident_member_where_scpa_follows_the_majority():
    # two members fairly sure of pneumonia, one outlier surer of COVID-19
    posteriors = torch.tensor([[[0.05, 0.6, 0.35]], [[0.05, 0.6, 0.35]], [[0.0, 0.3, 0.7]]])
    pm = combine_posteriors(posteriors, "pm").softmax(1)
    # per-class maxima 0.05, 0.6, 0.7 -> normalised by 1.35
    torch.testing.assert_close(pm, torch.tensor([[0.05 / 1.35, 0.6 / 1.35, 0.7 / 1.35]]))
    assert int(pm.argmax()) == 2
    # SCPA: sums 0.1, 1.5, 1.4 -> pneumonia
    scpa = combine_posteriors(posteriors, "scpa").softmax(1)
    assert int(scpa.argmax()) == 1
    e = [math.exp(0.1), math.exp(1.5), math.exp(1.4)]
    torch.testing.assert_close(scpa, torch.tensor([[v / sum(e) for v in e]]))


def test_ensemble_network_combines_its_members_posteriors():
    a, b = _Fixed([0.0, 1.0, 2.0]), _Fixed([3.0, 0.0, 0.0])
    x = torch.zeros(2, 1, 4, 4)
    expected = torch.stack([a(x).softmax(1), b(x).softmax(1)])
    ensemble = PosteriorEnsemble([a, b], mode="scpa", names=["a.pt", "b.pt"])
    torch.testing.assert_close(ensemble.member_posteriors(x), expected)
    torch.testing.assert_close(ensemble(x), expected.sum(0))
    torch.testing.assert_close(PosteriorEnsemble([a, b], mode="pm")(x), expected.amax(0).log())
    assert ensemble.names == ["a.pt", "b.pt"]
    # one member: SCPA's argmax is that member's
    single = PosteriorEnsemble([a])
    assert torch.equal(single(x).argmax(1), a(x).argmax(1))


def test_from_checkpoints_loads_each_member_with_its_own_weights(tmp_path):
    paths = []
    for i, logits in enumerate(([0.0, 1.0, 2.0], [3.0, 0.0, 0.0])):
        path = tmp_path / f"snapshot_model_epoch={i + 1}.pt"
        torch.save(_Fixed(logits).state_dict(), path)
        paths.append(path)
    torch.save({"model": _Fixed([0.0, 0.0, 5.0]).state_dict()}, tmp_path / "wrapped.pt")
    paths.append(tmp_path / "wrapped.pt")
    ensemble = PosteriorEnsemble.from_checkpoints(paths, build=lambda i: _Fixed([0.0, 0.0, 0.0]), mode="pm")
    assert not ensemble.training
    assert [m.logits.tolist() for m in ensemble.members] == [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]
    assert ensemble.names == ["snapshot_model_epoch=1.pt", "snapshot_model_epoch=2.pt", "wrapped.pt"]


def test_bad_members_and_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="at least one member"):
        PosteriorEnsemble([])
    with pytest.raises(InputError, match="mode"):
        PosteriorEnsemble([_Fixed([0.0, 1.0])], mode="vote")
    with pytest.raises(InputError, match="disagree"):
        PosteriorEnsemble([_Fixed([0.0, 1.0]), _Fixed([0.0, 1.0, 2.0])])(torch.zeros(1, 1))
    with pytest.raises(InputError, match="missing.pt does not exist"):
        load_member(_Fixed([0.0, 1.0]), tmp_path / "missing.pt")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(InputError, match="truncated.pt cannot be read"):
        load_member(_Fixed([0.0, 1.0]), tmp_path / "truncated.pt")
    torch.save(_Fixed([0.0, 1.0, 2.0]).state_dict(), tmp_path / "three.pt")
    with pytest.raises(InputError, match="three.pt does not fit _Fixed"):
        load_member(_Fixed([0.0, 1.0]), tmp_path / "three.pt")
