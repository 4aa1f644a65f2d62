"""Tests for :mod:`medxai.data.cache`: metadata tracking switched off after the cached prefix only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, MapTransform, RandFlipd, RandomizableTransform, Spacingd

from medxai.data import UntrackedCacheDataset, meta_tracking


class Record(MapTransform):
    """Deterministic: appends (input type, tracking on) to ``seen``."""

    def __init__(self, seen: list[tuple[str, bool]]) -> None:
        super().__init__(keys="image")
        self.seen = seen

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.seen.append((type(data["image"]).__name__, get_track_meta()))
        return dict(data)


class RandRecord(RandomizableTransform, Record):
    """Random (so the cache stops before it): records like :class:`Record`, fails on ``data['fail']``."""

    def __init__(self, seen: list[tuple[str, bool]]) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        Record.__init__(self, seen)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("fail"):
            raise ValueError(f"bad record {data['name']}")
        return Record.__call__(self, data)


def _records(n: int = 4) -> list[dict[str, Any]]:
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    return [
        {"image": MetaTensor(torch.arange(36.0).reshape(6, 6, 1) + i, affine=torch.as_tensor(affine)), "name": f"r{i}"}
        for i in range(n)
    ]


def _pipeline(seen_prefix: list, seen_random: list) -> Compose:
    # Spacingd needs the affine: it must run with metadata, in the cache and for the records left out of it
    return Compose(
        [
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0)),
            Record(seen_prefix),
            RandRecord(seen_random),
            RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        ]
    )


@pytest.mark.parametrize("cache_rate", [1.0, 0.5, 0.0])
def test_prefix_runs_with_metadata_and_the_random_part_without(cache_rate: float) -> None:
    prefix, random_part = [], []
    dataset = UntrackedCacheDataset(_records(), _pipeline(prefix, random_part), cache_rate=cache_rate,
                                    copy_cache=False, progress=False)  # fmt: skip
    cached = int(4 * cache_rate)
    assert prefix == [("MetaTensor", True)] * cached
    samples = [dataset[i] for i in range(4)]
    assert prefix == [("MetaTensor", True)] * 4  # the uncached records ran the prefix on access, with metadata
    assert random_part == [("MetaTensor", False)] * 4  # a cached MetaTensor, seen with tracking off
    for sample in samples:
        assert type(sample["image"]) is torch.Tensor
        assert sample["image"].shape == (1, 11, 11, 1)  # resampled from 2 mm to 1 mm: the affine was used
    assert get_track_meta() is True
    for record in dataset._cache[:cached]:
        assert isinstance(record["image"], MetaTensor) and len(record["image"].applied_operations) == 1  # Spacingd only


def test_samples_equal_monai_cache_dataset_under_the_same_random_state() -> None:
    ours = UntrackedCacheDataset(_records(), _pipeline([], []), copy_cache=False, progress=False)
    monai = CacheDataset(_records(), _pipeline([], []), progress=False)
    ours.transform.set_random_state(seed=3)
    monai.transform.set_random_state(seed=3)
    a = [ours[i]["image"] for _ in range(3) for i in range(4)]
    b = [monai[i]["image"] for _ in range(3) for i in range(4)]
    assert all(torch.equal(x, y.as_tensor()) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a[:4], a[4:8]))  # the flips differ between passes


def test_tracking_is_restored_after_an_error_and_an_earlier_setting_is_kept() -> None:
    records = _records(2)
    records[1]["fail"] = True
    dataset = UntrackedCacheDataset(records, _pipeline([], []), progress=False)
    with pytest.raises(RuntimeError, match="applying transform") as raised:  # MONAI wraps the transform's error
        dataset[1]
    assert str(raised.value.__cause__) == "bad record r1"
    assert get_track_meta() is True
    try:
        set_track_meta(False)
        dataset[0]
        assert get_track_meta() is False
    finally:
        set_track_meta(True)
    with pytest.raises(KeyError):
        with meta_tracking(False):
            assert get_track_meta() is False
            raise KeyError("inside")
    assert get_track_meta() is True


def test_runtime_cache_fills_records_with_metadata() -> None:
    prefix, random_part = [], []
    dataset = UntrackedCacheDataset(_records(), _pipeline(prefix, random_part), runtime_cache=True, progress=False)
    assert prefix == [] and dataset._cache[2] is None
    dataset[2]
    assert prefix == [("MetaTensor", True)] and random_part[0][1] is False
    assert isinstance(dataset._cache[2]["image"], MetaTensor)


def test_without_random_transforms_the_cached_record_is_the_sample() -> None:
    prefix = []
    chain = Compose([EnsureChannelFirstd(keys="image", channel_dim="no_channel"), Record(prefix)])
    dataset = UntrackedCacheDataset(_records(2), chain, copy_cache=False, progress=False)
    assert dataset[1] is dataset._cache[1] and isinstance(dataset[1]["image"], MetaTensor)
    assert prefix == [("MetaTensor", True)] * 2
