"""Localisation metrics of explanation maps against a ground-truth mask (lesion, lung, ventricle).

All functions take batches of maps (B, 1, H, W) or (B, 1, D, H, W) and binary masks of the same shape
(torch tensors or numpy arrays) and return one value per sample, a float tensor (B,) on the maps' device.
A sample whose value is undefined (an empty mask, a map with no positive mass) is flagged with NaN rather
than dropped, so indices stay aligned with the batch; :func:`sample_mean` averages over the defined ones.

References
----------
- Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. "Top-down neural attention by excitation backprop."
  IJCV 126, 2018 (pointing game, tolerance of 15 pixels).
- Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu. "Score-CAM: score-weighted visual explanations for
  convolutional neural networks." CVPR Workshops 2020, Sec. 5.2 (energy-based pointing game).
- Otsu. "A threshold selection method from gray-level histograms." IEEE TSMC 9(1), 1979
  (:func:`skimage.filters.threshold_otsu`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from scipy import ndimage
from skimage.filters import threshold_otsu

from medxai.errors import InputError

__all__ = [
    "as_tensor",
    "check_maps",
    "sample_mean",
    "pointing_game",
    "energy_pointing_game",
    "binarize_maps",
    "overlap_scores",
    "OverlapSweep",
    "overlap_sweep",
]


def as_tensor(array: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """``array`` as a torch tensor (numpy arrays are converted without copying where possible)."""
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    raise InputError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(array).__name__}.")


def check_maps(maps: torch.Tensor | np.ndarray, name: str = "maps") -> torch.Tensor:
    """Validate maps (B, 1, H, W) or (B, 1, D, H, W): finite values, non-empty; returned as float tensor."""
    maps = as_tensor(maps, name)
    if maps.ndim not in (4, 5) or maps.shape[1] != 1:
        raise InputError(f"{name} must have shape (B, 1, H, W) or (B, 1, D, H, W), got {tuple(maps.shape)}.")
    if maps.numel() == 0:
        raise InputError(f"{name} is empty: shape {tuple(maps.shape)}.")
    maps = maps if torch.is_floating_point(maps) else maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise InputError(f"{name} contains NaN or Inf values ({int((~torch.isfinite(maps)).sum())} elements).")
    return maps


def _check_masks(masks: torch.Tensor | np.ndarray, maps: torch.Tensor) -> torch.Tensor:
    """Binary masks of the maps' shape, as a bool tensor on the maps' device."""
    masks = as_tensor(masks, "masks")
    if tuple(masks.shape) != tuple(maps.shape):
        raise InputError(f"masks must have the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        values = torch.unique(masks)
        if not bool(((values == 0) | (values == 1)).all()):
            raise InputError(f"masks must be binary (0/1), got values {values[:6].tolist()}.")
    return masks.to(device=maps.device, dtype=torch.bool)


def sample_mean(values: torch.Tensor | np.ndarray) -> float:
    """Mean of per-sample metric values (B,), skipping samples flagged NaN (undefined for that sample).

    Returns NaN when every sample is flagged.
    """
    values = as_tensor(values, "values").double().flatten()
    if values.numel() == 0:
        raise InputError("sample_mean got no values.")
    return float(torch.nanmean(values))


def pointing_game(
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    tolerance: float = 0.0,
    spacing: Sequence[float] | None = None,
) -> torch.Tensor:
    """Pointing game (Zhang et al., IJCV 2018): is the map's maximum on (or near) the object?

    A sample is a hit when the location of the map's maximum lies within Euclidean distance ``tolerance``
    of the mask (distance 0 = inside). The original paper uses a 15-pixel tolerance on 224 px images; 0
    asks for the maximum to fall inside the mask. When several voxels share the maximum value, the sample
    is a hit only if *all* of them are within tolerance, so a flat map cannot score by chance (a map that
    equals the mask is a hit: all its maxima are inside).

    Parameters
    ----------
    maps
        Explanation maps (B, 1, *spatial).
    masks
        Binary ground-truth masks (B, 1, *spatial).
    tolerance
        Largest distance from the mask still counted as a hit, in pixels, or in the units of ``spacing``.
    spacing
        Voxel size per spatial axis (e.g. mm for anisotropic CT); ``None`` means 1 along every axis.

    Returns
    -------
    torch.Tensor
        (B,) float: 1.0 hit, 0.0 miss, NaN for a sample whose mask is empty (no object to point at; such
        samples are skipped by :func:`sample_mean`).
    """
    maps = check_maps(maps)
    masks = _check_masks(masks, maps)
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}.")
    spatial_dims = maps.ndim - 2
    if spacing is not None and len(spacing) != spatial_dims:
        raise InputError(f"spacing needs {spatial_dims} values (one per spatial axis), got {list(spacing)}.")
    hits = torch.full((maps.shape[0],), float("nan"), dtype=torch.float32)
    maps_np = maps[:, 0].detach().cpu().numpy()
    masks_np = masks[:, 0].cpu().numpy()
    for i, (m, mask) in enumerate(zip(maps_np, masks_np)):
        if not mask.any():
            continue
        at_max = m == m.max()
        # distance from every voxel to the nearest mask voxel (0 inside the mask)
        distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
        hits[i] = float(distance[at_max].max() <= tolerance + 1e-9)
    return hits.to(maps.device)


def energy_pointing_game(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020, Sec. 5.2).

    The share of the map's *positive* mass that falls inside the mask::

        proportion = sum(relu(map) * mask) / sum(relu(map))

    Negative values are evidence against the class and are not counted as energy. (Score-CAM uses a
    bounding box as the mask; any binary mask works here.)

    Returns
    -------
    torch.Tensor
        (B,) float in [0, 1]; NaN for a sample whose mask is empty or whose map has no positive mass.
    """
    maps = check_maps(maps)
    masks = _check_masks(masks, maps)
    energy = maps.clamp(min=0).flatten(1).double()
    inside = (energy * masks.flatten(1)).sum(1)
    total = energy.sum(1)
    proportion = inside / total
    undefined = (total <= 0) | ~masks.flatten(1).any(1)
    proportion[undefined] = float("nan")
    return proportion.float()


def binarize_maps(maps: torch.Tensor | np.ndarray, threshold: float | str = "otsu") -> torch.Tensor:
    """Threshold maps per sample into binary masks (B, 1, *spatial), bool.

    Parameters
    ----------
    threshold
        ``"otsu"``: Otsu's threshold of each sample's map values (:func:`skimage.filters.threshold_otsu`),
        foreground ``map > t`` as scikit-image defines it (a constant map gives an empty mask). A number:
        foreground ``map >= threshold`` on the maps as given (normalise them first, explicitly, if the
        threshold is meant relative to each map's range).
    """
    maps = check_maps(maps)
    if isinstance(threshold, str):
        if threshold.lower() != "otsu":
            raise InputError(f"threshold must be 'otsu' or a number, got '{threshold}'.")
        values = maps.detach().flatten(1).cpu().double().numpy()
        cut = torch.tensor([threshold_otsu(v) for v in values], dtype=maps.dtype, device=maps.device)
        return maps > cut.view(-1, *([1] * (maps.ndim - 1)))
    return maps >= float(threshold)


def overlap_scores(
    maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, threshold: float | str = "otsu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and Dice of the thresholded maps against the masks (:func:`binarize_maps`, then MONAI's
    :func:`monai.metrics.compute_iou` and :func:`monai.metrics.compute_dice`).

    Returns
    -------
    tuple of torch.Tensor
        ``(iou, dice)``, each (B,) float; NaN for a sample whose mask is empty (MONAI's ``ignore_empty``).
    """
    maps = check_maps(maps)
    masks = _check_masks(masks, maps)
    predicted = binarize_maps(maps, threshold).float()
    target = masks.float()
    iou = compute_iou(predicted, target, include_background=True, ignore_empty=True)[:, 0]
    dice = compute_dice(predicted, target, include_background=True, ignore_empty=True)[:, 0]
    return iou.float(), dice.float()


class OverlapSweep(NamedTuple):
    """IoU and Dice over a list of thresholds, and the best of each per sample.

    Attributes
    ----------
    thresholds
        (T,) the thresholds swept.
    iou, dice
        (B, T) the curves.
    best_iou, best_dice
        (B,) the maximum over thresholds (NaN for an empty mask).
    best_iou_threshold, best_dice_threshold
        (B,) the threshold reaching it (the smallest one on ties; NaN for an empty mask).
    """

    thresholds: torch.Tensor
    iou: torch.Tensor
    dice: torch.Tensor
    best_iou: torch.Tensor
    best_dice: torch.Tensor
    best_iou_threshold: torch.Tensor
    best_dice_threshold: torch.Tensor


def _best(curve: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum of each row of ``curve`` (B, T) and the first threshold reaching it; NaN rows stay NaN."""
    undefined = torch.isnan(curve).all(1)
    filled = torch.nan_to_num(curve, nan=-1.0)
    best, index = filled.max(1)  # first index of the maximum
    best_threshold = thresholds.to(curve)[index]
    best[undefined] = float("nan")
    best_threshold[undefined] = float("nan")
    return best, best_threshold


def overlap_sweep(
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    thresholds: Sequence[float] | torch.Tensor = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
) -> OverlapSweep:
    """IoU and Dice of ``maps >= t`` against the masks for every ``t`` in ``thresholds``.

    The thresholds apply to the maps as given; normalise them explicitly first (e.g. per-sample min-max
    with :func:`medxai.explain.normalize.minmax`) when the thresholds are fractions of each map's range.
    """
    maps = check_maps(maps)
    masks = _check_masks(masks, maps)
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if thresholds.numel() == 0:
        raise InputError("overlap_sweep needs at least one threshold.")
    ious, dices = zip(*(overlap_scores(maps, masks, float(t)) for t in thresholds))
    iou, dice = torch.stack(ious, 1), torch.stack(dices, 1)
    best_iou, best_iou_t = _best(iou, thresholds)
    best_dice, best_dice_t = _best(dice, thresholds)
    return OverlapSweep(thresholds.float(), iou, dice, best_iou, best_dice, best_iou_t, best_dice_t)
