"""Every bundle trains from an ``UntrackedCacheDataset`` without cache copies, and that is safe (issue 11).

``copy_cache=False`` hands the random transforms the cached record itself instead of a deep copy (1.4-3.2 ms per
batch in the bundles' training, docs/performance.md), and :class:`medxai.data.UntrackedCacheDataset` runs them
without ``MetaTensor`` tracking. No copy is only safe where no random transform changes its input in place:
otherwise the cache drifts from epoch to epoch. These tests run three passes of each bundle's own training
dataset(s) over a few demo records and compare every cached record (tensor values, metadata and
``applied_operations``) with a snapshot taken before, and the samples with those of MONAI's ``CacheDataset`` with
its defaults (copies, metadata tracked) under the same random state: they must be bit-identical.

MONAI's ``RandAffined`` records its operation on its input's ``applied_operations`` even when its probability skips
the transform, i.e. on a cached ``MetaTensor`` itself, so a cache of ``MetaTensor`` records grows by one entry per
skipped access. The three CXR bundles, whose augmentation starts with ``RandAffined``, therefore end their cached
prefix with ``EnsureTyped(track_meta=False)``: they cache plain tensors, which ``RandAffined`` wraps in a new
``MetaTensor`` (its own record) instead of changing. ``test_rand_affine_changes_a_cached_meta_tensor`` shows the trap.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, EnsureTyped, RandAffined

from medxai.data import UntrackedCacheDataset

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
#: tiny networks and inputs (the datasets are built, the networks are not) and the dataset ids to check
TINY: dict[str, dict[str, Any]] = {
    "covid19_ct_mil_classification": {"image_size": [32, 32], "train_num_slices": 16},
    "covid19_ct_transfer_classification": {"canvas_hw": [32, 40]},
    "cxr_lung_segmentation": {"image_size": [32, 32]},
    "covid19_cxrnet_classification": {"image_size": [32, 32]},
    "covid19_cxr_ensemble_classification": {"image_size": [32, 32]},
    "brain_ventricle_segmentation": {"image_size": [32, 32], "field_of_view": [32, 32]},
}
RECORDS = 6
PASSES = 3


def _datasets(bundle: str, root: Path, monai_default: bool = False) -> dict[str, CacheDataset]:
    """The bundle's training CacheDataset(s) from its train.json + demo.json, on ``RECORDS`` demo records.

    ``monai_default``: MONAI's ``CacheDataset`` with its default ``copy_cache`` (True) instead of the configured one.
    """
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "demo.json")])
    parser["bundle_root"] = str(root)
    parser["num_workers"] = 0
    for key, value in TINY[bundle].items():
        parser[key] = value
    ids = [i for i in ("train#dataset", "train#unlabeled_dataset") if i.split("#")[1] in parser["train"]]
    for dataset_id in ids:
        records_id = parser[f"{dataset_id}#data"][1:]
        parser[records_id] = f"${parser[records_id][1:]}[:{RECORDS}]"
        if monai_default:
            parser[f"{dataset_id}#_target_"] = "CacheDataset"
            parser[f"{dataset_id}#copy_cache"] = True
    return {dataset_id: parser.get_parsed_content(dataset_id) for dataset_id in ids}


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where ``after`` differs from ``before``: values, metadata and applied operations of every tensor."""
    if isinstance(before, dict):
        if before.keys() != after.keys():
            return [f"{path}: keys {sorted(before)} -> {sorted(after)}"]
        return [d for key in before for d in _differences(before[key], after[key], f"{path}.{key}")]
    if isinstance(before, (list, tuple)):
        if len(before) != len(after):
            return [f"{path}: length {len(before)} -> {len(after)}"]
        return [d for i, (a, b) in enumerate(zip(before, after)) for d in _differences(a, b, f"{path}[{i}]")]
    if isinstance(before, torch.Tensor):
        found = [] if torch.equal(torch.as_tensor(before), torch.as_tensor(after)) else [f"{path}: values"]
        if isinstance(before, MetaTensor):
            found += _differences(dict(before.meta), dict(after.meta), f"{path}.meta")
            found += _differences(before.applied_operations, after.applied_operations, f"{path}.applied_operations")
        return found
    if isinstance(before, (float, np.floating, np.ndarray)):
        a, b = np.asarray(before), np.asarray(after)
        same = a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return [] if same else [f"{path}: {before!r} -> {after!r}"]
    return [] if before == after or (before != before and after != after) else [f"{path}: {before!r} -> {after!r}"]


def _cache_changes(dataset: CacheDataset) -> list[str]:
    """Differences in the cache after ``PASSES`` passes of random transforms over every record."""
    assert len(dataset._cache) == RECORDS, "every record is cached (cache_rate 1)"
    snapshot = copy.deepcopy(dataset._cache)
    for _ in range(PASSES):
        for index in range(len(dataset)):
            dataset[index]
    return _differences(snapshot, dataset._cache)


def _samples(dataset: CacheDataset, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """The tensors of two passes over ``dataset`` with its random transforms seeded."""
    dataset.transform.set_random_state(seed=seed)
    samples = []
    for _ in range(2):
        for index in range(len(dataset)):
            item = dataset[index]
            for sample in item if isinstance(item, list) else [item]:  # the brain bundle crops several per volume
                samples.append({k: torch.as_tensor(v).clone() for k, v in sample.items() if isinstance(v, torch.Tensor)})
    return samples


@pytest.mark.parametrize("bundle", list(TINY))
def test_training_cache_is_not_copied_and_stays_unchanged(bundle: str, tmp_path: Path) -> None:
    datasets = _datasets(bundle, tmp_path)
    assert len(datasets) == (2 if bundle == "brain_ventricle_segmentation" else 1)
    for dataset_id, dataset in datasets.items():
        assert isinstance(dataset, UntrackedCacheDataset), f"{bundle} {dataset_id}"
        assert dataset.copy_cache is False, f"{bundle} {dataset_id} is configured without copies"
        assert _cache_changes(dataset) == [], f"{bundle} {dataset_id}"


@pytest.mark.parametrize("bundle", list(TINY))
def test_samples_equal_those_of_monai_cache_dataset_with_copies_and_metadata(bundle: str, tmp_path: Path) -> None:
    uncopied = _datasets(bundle, tmp_path / "uncopied")["train#dataset"]
    copied = _datasets(bundle, tmp_path / "copied", monai_default=True)["train#dataset"]
    assert type(copied) is CacheDataset and copied.copy_cache is True and uncopied.copy_cache is False
    with_copies, without = _samples(copied), _samples(uncopied)
    assert len(with_copies) == len(without) and len(with_copies) % (2 * RECORDS) == 0
    for a, b in zip(with_copies, without):
        assert a.keys() == b.keys() and "image" in a
        assert all(torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype for key in a)
    # the augmentation is random: the second pass differs from the first
    half = len(with_copies) // 2
    first, second = with_copies[:half], with_copies[half:]
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, second))


def test_rand_affine_changes_a_cached_meta_tensor() -> None:
    """Why the CXR bundles cache plain tensors: RandAffined appends to a MetaTensor input's operations in place."""
    records = [{"image": MetaTensor(torch.rand(1, 16, 16))}]
    affine = RandAffined(keys="image", prob=0.0, rotate_range=0.1)
    meta_cache = CacheDataset(records, transform=Compose([affine]), copy_cache=False, progress=False)
    plain_cache = CacheDataset(
        records, transform=Compose([EnsureTyped(keys="image", track_meta=False), affine]), copy_cache=False,
        progress=False,
    )
    assert type(plain_cache._cache[0]["image"]) is torch.Tensor
    for _ in range(3):
        meta_out, plain_out = meta_cache[0]["image"], plain_cache[0]["image"]
    assert len(meta_cache._cache[0]["image"].applied_operations) == 3  # grows with every access
    assert len(plain_out.applied_operations) == 1 and len(meta_out.applied_operations) == 3
    assert torch.equal(plain_cache._cache[0]["image"], records[0]["image"].as_tensor())
