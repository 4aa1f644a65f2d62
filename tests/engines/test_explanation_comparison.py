"""ExplanationComparisonHandler: AOPPC (seed 001 eq. 12) and lesion localisation against hand-computed values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from medxai.engines.explanation_comparison import ExplanationComparisonHandler, bootstrap_mean_ci
from medxai.errors import DatasetError, InputError

REGION = torch.zeros(1, 1, 8, 8)
REGION[..., 2:4, 2:4] = 1.0  # 4 of 64 pixels


class RegionModel(torch.nn.Module):
    """Logits [0, sum of the image over REGION]: only the region's pixels matter for class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = self.scale * (x * REGION).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def _oracle(x, target):
    return REGION.expand(x.shape[0], 1, 8, 8).clone()


def _outside(x, target):
    return (1.0 - REGION).expand(x.shape[0], 1, 8, 8).clone()


def _constant(x, target):
    return torch.full((x.shape[0], 1, 8, 8), 0.3)


def _run(handler: ExplanationComparisonHandler, labels: list[int], empty_lesion: int | None = None) -> None:
    items = [
        {"image": torch.ones(1, 8, 8), "label": torch.tensor(label), "lesion": REGION[0].clone()}
        for label in labels
    ]
    if empty_lesion is not None:
        items[empty_lesion]["lesion"] = torch.zeros(1, 8, 8)

    def step(engine, batch):
        engine.state.batch = batch
        return batch

    engine = Engine(step)
    handler.attach(engine)
    engine.run([items[:2], items[2:]], max_epochs=1)


def test_aoppc_and_localisation_match_hand_computed_values(tmp_path):
    handler = ExplanationComparisonHandler(
        {"oracle": _oracle, "outside": _outside, "constant": _constant},
        tmp_path,
        target_class="covid19",
        class_names=["other", "covid19"],
        model=RegionModel(),
        lesion_key="lesion",
        n_bootstrap=200,
    )
    _run(handler, [1, 0, 1, 1])  # three COVID-19 cases are explained, the other is skipped
    result = json.loads((tmp_path / "explanation_comparison.json").read_text())
    assert result["n_cases"] == 3 and result["target_class"] == "covid19"
    p_full = 1.0 / (1.0 + math.exp(-4.0))  # sigmoid(4): softmax of [0, 4]
    oracle = result["methods"]["oracle"]
    # the oracle map is 1 on the region: every threshold removes the region, p drops to 0.5 at every x
    assert oracle["aoppc"]["mean"] == pytest.approx(p_full - 0.5, abs=1e-6)
    assert oracle["mean_curve"] == pytest.approx([p_full] + [0.5] * 10, abs=1e-6)
    assert oracle["pointing_game"]["mean"] == 1.0 and oracle["energy_in_lesion"]["mean"] == pytest.approx(1.0)
    assert oracle["uniform_map_energy_in_lesion"]["mean"] == pytest.approx(4 / 64)
    assert oracle["energy_lift"]["mean"] == pytest.approx(1 - 4 / 64)
    outside = result["methods"]["outside"]
    assert outside["aoppc"]["mean"] == pytest.approx(0.0, abs=1e-6)  # removing the rest changes nothing
    assert outside["pointing_game"]["mean"] == 0.0 and outside["energy_in_lesion"]["mean"] == pytest.approx(0.0)
    # a constant map normalises to zeros: nothing is removed, AOPPC 0 (seed 001's f(x) never fires)
    assert result["methods"]["constant"]["aoppc"]["mean"] == pytest.approx(0.0, abs=1e-6)
    with open(tmp_path / "explanation_comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["method"] for r in rows} == {"oracle", "outside", "constant"}
    assert (tmp_path / "perturbation_curves.png").stat().st_size > 0


def test_every_case_is_explained_for_its_true_class_without_a_target(tmp_path):
    handler = ExplanationComparisonHandler({"oracle": _oracle}, tmp_path, model=RegionModel(), n_bootstrap=0)
    _run(handler, [1, 0, 1, 0])
    rows = list(csv.DictReader(open(tmp_path / "explanation_comparison.csv")))
    assert [int(r["target"]) for r in rows] == [1, 0, 1, 0]
    # class 0's probability rises when the region is removed: a negative AOPPC, as eq. 12 does not clip
    p_full = 1.0 / (1.0 + math.exp(-4.0))
    assert float(rows[1]["aoppc"]) == pytest.approx((1 - p_full) - 0.5, abs=1e-6)


def test_bootstrap_interval_covers_the_mean_and_needs_two_values():
    values = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    low, high = bootstrap_mean_ci(values, n_bootstrap=500)
    assert low <= 0.25 <= high and 0.1 <= low and high <= 0.4
    assert bootstrap_mean_ci(np.array([0.5])) is None


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="at least one explainer"):
        ExplanationComparisonHandler({}, tmp_path)
    with pytest.raises(InputError, match="not one of class_names"):
        ExplanationComparisonHandler({"oracle": _oracle}, tmp_path, target_class="covid", class_names=["a", "b"])
    handler = ExplanationComparisonHandler(
        {"oracle": _oracle}, tmp_path, model=RegionModel(), lesion_key="missing_mask", n_bootstrap=0
    )
    # a case error is recorded per case; when every case failed the run stops, naming the first one
    with pytest.raises(DatasetError, match="all 2 case.*unnamed-0: InputError: .*lesion mask 'missing_mask' is missing"):
        _run(handler, [1, 1])
    assert [bad.case for bad in handler.failed_cases] == ["unnamed-0", "unnamed-1"]


def test_cases_without_a_lesion_are_left_out_of_localisation_but_not_of_aoppc(tmp_path):
    handler = ExplanationComparisonHandler(
        {"oracle": _oracle}, tmp_path, model=RegionModel(), lesion_key="lesion", n_bootstrap=0
    )
    _run(handler, [1, 1, 1], empty_lesion=1)
    oracle = json.loads((tmp_path / "explanation_comparison.json").read_text())["methods"]["oracle"]
    assert oracle["aoppc"]["n"] == 3
    for key in ("pointing_game", "energy_in_lesion", "uniform_map_energy_in_lesion", "energy_lift"):
        assert oracle[key]["n"] == 2, key


def test_region_mask_zeroes_every_map_outside_it_before_scoring(tmp_path):
    """With the region = REGION, the 'outside' map becomes all zeros: nothing is removed, AOPPC 0; the oracle
    map is unchanged by the restriction."""
    handler = ExplanationComparisonHandler(
        {"oracle": _oracle, "outside": _outside, "constant": _constant},
        tmp_path,
        model=RegionModel(),
        region_key="lesion",
        n_bootstrap=0,
    )
    _run(handler, [1, 1])
    result = json.loads((tmp_path / "explanation_comparison.json").read_text())
    p_full = 1.0 / (1.0 + math.exp(-4.0))
    assert result["region"] == "lesion"
    assert result["methods"]["oracle"]["aoppc"]["mean"] == pytest.approx(p_full - 0.5, abs=1e-6)
    assert result["methods"]["outside"]["aoppc"]["mean"] == pytest.approx(0.0, abs=1e-6)
    # the constant map restricted to the region is the oracle map (0.3 inside, 0 outside -> 1 / 0 after minmax)
    assert result["methods"]["constant"]["aoppc"]["mean"] == pytest.approx(p_full - 0.5, abs=1e-6)


def test_chance_is_the_lesion_share_of_the_region_when_maps_are_restricted(tmp_path):
    region = torch.zeros(1, 8, 8)
    region[:, :4, :] = 1.0  # the top half, 32 pixels, holds the 4 lesion pixels

    def step(engine, batch):
        engine.state.batch = batch
        return batch

    items = [{"image": torch.ones(1, 8, 8), "label": torch.tensor(1), "lesion": REGION[0], "lungs": region}] * 2
    handler = ExplanationComparisonHandler(
        {"constant": _constant}, tmp_path, model=RegionModel(), lesion_key="lesion", region_key="lungs", n_bootstrap=0
    )
    engine = Engine(step)
    handler.attach(engine)
    engine.run([items], max_epochs=1)
    constant = json.loads((tmp_path / "explanation_comparison.json").read_text())["methods"]["constant"]
    # restricted to the region the constant map is uniform there: energy = chance = 4 / 32, lift 0
    assert constant["uniform_map_energy_in_lesion"]["mean"] == pytest.approx(4 / 32)
    assert constant["energy_in_lesion"]["mean"] == pytest.approx(4 / 32)
    assert constant["energy_lift"]["mean"] == pytest.approx(0.0, abs=1e-7)
