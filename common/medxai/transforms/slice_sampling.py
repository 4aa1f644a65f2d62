"""Random single-slice sampling of CT volumes, for training a slice network at image level.

Seed 003 Table 2 (lower half, "Image-level") trains the classifiers on single CT images whose labels are
the patient label copied onto every slice of the volume: noisy image labels, since in a mild COVID-19 case
most slices are disease-free (sec. 4.1.3). :class:`RandSampleSliced` turns each training volume
``(C, H, W, D)`` into one of its axial slices kept as a one-slice volume ``(C, H, W, 1)``, drawn uniformly
at random, so the same slice network (e.g. :class:`~medxai.networks.ct_mil.CTMILNet`: its slice
integration then sees one section of one slice, and the patient logit is that slice's own score) trains
on images while evaluation still runs on whole volumes.

The crop is MONAI's :class:`~monai.transforms.RandSpatialCropd` with ``roi_size=(-1, -1, 1)``: the slice
index is drawn uniformly from ``0 .. D - 1`` by ``self.R`` (so ``set_random_state`` makes it
reproducible), the same index is cut from every key (masks stay aligned with the image), the affine is
translated to the chosen slice and the crop is invertible. What this class adds is the check that every
key is a non-empty channel-first volume of one depth: MONAI refuses a 2D image ``(C, H, W)`` only with
``ValueError: Sequence must have length 2, got 3`` (naming neither the case nor the key) and returns a
volume with no slices, ``(C, H, W, 0)``, unchanged and silently. MONAI's ``RandSpatialCropSamplesd``
(``n`` slices per volume, returned as a list of dictionaries) is not used: it makes a batch of ``B``
volumes hold ``B * n`` slices from only ``B`` patients, where drawing one slice per dataset item lets the
data loader mix patients in every batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import RandSpatialCropd

from medxai.errors import InputError
from medxai.transforms.checks import case_name

__all__ = ["RandSampleSliced"]


class RandSampleSliced(RandSpatialCropd):
    """Keep one axial slice, drawn uniformly at random, of every key: ``(C, H, W, D) -> (C, H, W, 1)``.

    One index ``z`` in ``0 .. D - 1`` is drawn per call (probability ``1 / D`` each) from the
    transform's random state and applied to every key; the output is a MetaTensor whose affine places the
    slice where it was in the volume (origin moved by ``z`` voxels along the last axis). :meth:`inverse`
    pads the slice back into a volume of the input depth (zeros elsewhere).

    Parameters
    ----------
    keys
        Keys of channel-first volumes ``(C, H, W, D)`` with ``D`` slices on the last axis; every key must
        have the depth of the first key.
    allow_missing_keys
        Skip absent keys instead of raising ``KeyError``.
    lazy
        MONAI lazy resampling flag (see :class:`~monai.transforms.RandSpatialCropd`).

    Raises
    ------
    InputError
        A key is not a 4D volume, has no voxels (a zero-length axis), or has a depth different from the
        first key's (the message names the case and the shape).

    Examples
    --------
    >>> import torch
    >>> sampler = RandSampleSliced(keys=["image", "mask"]).set_random_state(seed=0)
    >>> volume = torch.arange(10.0).reshape(1, 1, 1, 10).expand(1, 4, 4, 10)
    >>> out = sampler({"image": volume, "mask": volume.clone()})
    >>> out["image"].shape, bool((out["image"] == out["mask"]).all())
    (torch.Size([1, 4, 4, 1]), True)
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, lazy: bool = False) -> None:
        super().__init__(
            keys,
            roi_size=(-1, -1, 1),
            random_center=True,
            random_size=False,
            allow_missing_keys=allow_missing_keys,
            lazy=lazy,
        )

    def _check(self, data: Mapping[Hashable, Any]) -> None:
        depth: int | None = None
        first: Hashable | None = None
        for key in self.key_iterator(dict(data)):
            img = data[key]
            shape = tuple(int(s) for s in getattr(img, "shape", ()))
            if len(shape) != 4:
                raise InputError(
                    f"case '{case_name(img)}' (key '{key}'): {type(self).__name__} expects a channel-first volume "
                    f"(C, H, W, D), got shape {shape}."
                )
            if min(shape) < 1:
                raise InputError(
                    f"case '{case_name(img)}' (key '{key}'): {type(self).__name__} got an empty volume of shape "
                    f"{shape}; there is no slice to sample."
                )
            if depth is None:
                depth, first = shape[3], key
            elif shape[3] != depth:
                raise InputError(
                    f"case '{case_name(img)}': key '{key}' has {shape[3]} slices, key '{first}' {depth}; every key "
                    "must share the sampled slice."
                )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        if self.first_key(dict(data)) == ():
            return dict(data)
        self._check(data)
        return super().__call__(data, lazy=lazy)
