"""A ``CacheDataset`` whose random transforms run without ``MetaTensor`` tracking (issue 11).

Training needs the metadata of an image (affine, original shape, applied operations) only while it is loaded and
resampled, which the cache does once. Every random transform after the cache pays for it again on each access:
MONAI wraps its output in a ``MetaTensor``, copies the metadata dictionary and records the operation for
``inverse``, none of which a training step reads. On the bundles' demo training sets that bookkeeping is 40-75 %
of the per-sample augmentation time (docs/performance.md). MONAI's own fast-training recipe switches tracking off
globally (``monai.data.set_track_meta(False)``); :class:`UntrackedCacheDataset` switches it off only while it
runs the transforms after its cached prefix, and restores the previous setting afterwards, also on an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from monai.data import CacheDataset
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.transforms import RandomizableTrait, Transform

__all__ = ["meta_tracking", "UntrackedCacheDataset"]


@contextmanager
def meta_tracking(enabled: bool) -> Iterator[None]:
    """Set MONAI's ``MetaTensor`` tracking (:func:`monai.data.set_track_meta`) inside the block, then restore it.

    The setting is process-wide: another thread running MONAI transforms meanwhile sees it too.
    """
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


class UntrackedCacheDataset(CacheDataset):
    """:class:`monai.data.CacheDataset` that runs the transforms from the first random one on without metadata.

    Takes the arguments of ``CacheDataset``. The deterministic prefix (loading, resampling, ...) runs with
    tracking on, when the cache is filled and for the records left out of it (``cache_rate`` < 1); the rest of
    the chain runs under ``meta_tracking(False)``, so the samples are plain ``torch.Tensor`` objects with the
    same values, and nothing is recorded on the cached records themselves.

    Use it for training only: inverting the random transforms (``Invertd``) needs the records they would have
    made. The switch is process-wide while a sample is transformed; with ``DataLoader`` workers each process has
    its own, with a ``ThreadDataLoader`` the main thread sees tracking off while the loader's thread is inside.
    """

    def _first_random(self) -> int | None:
        return self.transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )

    def _cache_index(self, index: int) -> int | None:
        """The record's position in the cache, or None where it is not cached (as ``CacheDataset`` finds it)."""
        if self.hash_as_key:
            key = self.hash_func(self.data[index])
            return self._hash_keys.index(key) if key in self._hash_keys else None
        return index if index % len(self) < self.cache_num else None

    def _transform(self, index: int) -> Any:
        first_random = self._first_random()
        if first_random is None:  # nothing random: the cached record is the sample
            return super()._transform(index)
        cache_index = self._cache_index(index)
        if cache_index is None or self._cache is None:
            data = self.transform(self.data[index], end=first_random)  # the deterministic prefix, with metadata
            with meta_tracking(False):
                return self.transform(data, start=first_random)
        if self._cache[cache_index] is None:  # runtime_cache: fill this record with tracking on
            self._cache[cache_index] = self._load_cache_item(cache_index)
        with meta_tracking(False):
            return super()._transform(index)
