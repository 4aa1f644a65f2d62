"""Class-balanced sampling (seed 002 balanced training): weights by hand, balanced draws, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from medxai.data.sampling import class_balanced_sampler, class_balanced_weights
from medxai.errors import DatasetError


def _records(counts: dict[int, int]) -> list[dict]:
    return [{"image": f"img_{c}_{i}.png", "label": c} for c, n in counts.items() for i in range(n)]


def test_weights_are_one_over_the_class_size():
    weights = class_balanced_weights(_records({0: 8, 1: 4, 2: 1}))
    assert weights.tolist() == [1 / 8] * 8 + [1 / 4] * 4 + [1.0]
    # every class carries the same total weight
    assert torch.allclose(weights[:8].sum(), weights[8:12].sum()) and float(weights[12]) == 1.0


def test_sampler_draws_classes_equally_often_from_an_imbalanced_list():
    records = _records({0: 80, 1: 15, 2: 5})  # 80 % / 15 % / 5 %
    sampler = class_balanced_sampler(records, num_samples=30000, seed=3)
    drawn = Counter(records[i]["label"] for i in sampler)
    for label in (0, 1, 2):
        assert abs(drawn[label] / 30000 - 1 / 3) < 0.02, drawn
    # the rare class's five images are all used, each about 2,000 times
    rare = Counter(i for i in sampler if records[i]["label"] == 2)
    assert len(rare) == 5 and min(rare.values()) > 1500


def test_sampler_is_reproducible_and_defaults_to_one_pass():
    records = _records({0: 10, 1: 2})
    first, second = list(class_balanced_sampler(records, seed=1)), list(class_balanced_sampler(records, seed=1))
    assert first == second and len(first) == 12


def test_bad_records_name_the_problem():
    with pytest.raises(DatasetError, match="empty"):
        class_balanced_weights([])
    with pytest.raises(DatasetError, match=r"record 1 \(b.png\) has label='covid'"):
        class_balanced_weights([{"image": "a.png", "label": 0}, {"image": "b.png", "label": "covid"}])
