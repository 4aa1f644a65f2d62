"""Class-balanced sampling of a training set (seed 002 sec. III-B: "balanced" vs "imbalanced" training).

DeepCOVIDExplainer reports every network trained on a balanced and on an imbalanced set (Table I); its
COVID-19 class is 358 of 15,959 images. :func:`class_balanced_sampler` balances by sampling, not by
discarding images: each record is drawn with probability proportional to ``1 / n_c`` (``n_c`` the size
of its class), with replacement, so every class is drawn equally often in expectation and every image
stays in use. The sampler is torch's :class:`~torch.utils.data.WeightedRandomSampler`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

from medxai.errors import DatasetError

__all__ = ["class_balanced_weights", "class_balanced_sampler"]


def class_balanced_weights(records: Sequence[Mapping[str, Any]], label_key: str = "label") -> torch.Tensor:
    """Per-record sampling weights ``1 / n_c`` (float64, shape (N,)) for the classes in ``records``.

    Raises
    ------
    DatasetError
        For an empty list, or a record without an integer ``label_key`` (naming its index and image).
    """
    if len(records) == 0:
        raise DatasetError("class_balanced_weights: the training list is empty.")
    labels = []
    for index, record in enumerate(records):
        label = record.get(label_key)
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = int(label.item())
        if isinstance(label, bool) or not isinstance(label, int):
            raise DatasetError(
                f"class_balanced_weights: record {index} ({record.get('image', '?')}) has {label_key}={label!r}, "
                "expected an integer class index."
            )
        labels.append(label)
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


def class_balanced_sampler(
    records: Sequence[Mapping[str, Any]],
    label_key: str = "label",
    num_samples: int | None = None,
    seed: int = 0,
) -> WeightedRandomSampler:
    """A sampler that draws every class equally often in expectation (with replacement).

    Parameters
    ----------
    records
        The training datalist records (in the dataset's order).
    label_key
        Key of the integer class index.
    num_samples
        Draws per epoch (default ``len(records)``, so an epoch is as long as without balancing).
    seed
        Seed of the sampler's generator (reproducible epochs).

    Use it as the training ``DataLoader``'s ``sampler`` with ``shuffle=False``; it is single-process (with
    ``torchrun``, each rank would need its own shard).
    """
    weights = class_balanced_weights(records, label_key)
    generator = torch.Generator().manual_seed(int(seed))
    n = len(records) if num_samples is None else int(num_samples)
    return WeightedRandomSampler(weights, num_samples=n, replacement=True, generator=generator)
