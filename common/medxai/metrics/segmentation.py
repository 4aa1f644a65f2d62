"""Slice-wise Dice of volume segmentations, grouped by slice thickness (seed 003 Tables 4-5).

Seed 003 evaluates a 2D network on the slices of thick and thin volumes and reports the mean Dice over
thick slices, thin slices and the pooled ("mixed") set. :func:`slice_dice` cuts a predicted and a
reference label volume into slices along one axis and returns MONAI's Dice
(:func:`monai.metrics.compute_dice`) of the structure on every slice, NaN where the reference slice has no
foreground (the Dice is undefined there; ``ignore_empty``). :func:`dice_table` pools per-slice values by
group into Table 4's row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice

from medxai.errors import InputError

__all__ = ["class_index_volume", "slice_dice", "dice_table"]


def class_index_volume(value: Any, name: str = "volume") -> torch.Tensor:
    """A label volume as class indices (*spatial): from (*spatial), (1, *spatial) or one-hot (C, *spatial)."""
    tensor = torch.as_tensor(value).detach().cpu().as_subclass(torch.Tensor)
    if tensor.dim() == 4:
        tensor = tensor[0] if tensor.shape[0] == 1 else tensor.argmax(dim=0)
    if tensor.dim() != 3:
        raise InputError(
            f"{name} must be a 3D label volume, (1, X, Y, Z) or one-hot (C, X, Y, Z); got {tuple(tensor.shape)}."
        )
    if tensor.is_floating_point() and not torch.all(tensor == tensor.round()):
        raise InputError(f"{name} must hold integer class indices, got fractional values.")
    return tensor.long()


def slice_dice(
    pred: Any, label: Any, slice_axis: int = -1, classes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dice of the foreground on every slice of a volume.

    Parameters
    ----------
    pred, label
        Predicted and reference label volumes (X, Y, Z) of class indices, or (1, X, Y, Z), or one-hot
        (C, X, Y, Z) (argmax is taken).
    slice_axis
        Spatial axis that indexes the slices (-1: axial slices of an (X, Y, Z) volume).
    classes
        Class indices that form the structure (default: every class > 0, e.g. all ventricles together).

    Returns
    -------
    (dice, reference_pixels)
        Dice per slice (S,) (NaN where the reference slice has no foreground) and the number of reference
        foreground pixels per slice (S,).
    """
    p, y = class_index_volume(pred, "pred"), class_index_volume(label, "label")
    if p.shape != y.shape:
        raise InputError(f"pred {tuple(p.shape)} and label {tuple(y.shape)} volumes differ in shape.")
    if classes is None:
        p_fg, y_fg = p > 0, y > 0
    else:
        wanted = torch.as_tensor(list(classes))
        p_fg, y_fg = torch.isin(p, wanted), torch.isin(y, wanted)
    p_fg, y_fg = (torch.movedim(v, slice_axis, 0) for v in (p_fg, y_fg))  # (S, H, W)
    one_hot = lambda v: torch.stack([~v, v], dim=1).float()  # noqa: E731  (S, 2, H, W)
    dice = compute_dice(one_hot(p_fg), one_hot(y_fg), include_background=False, ignore_empty=True)[:, 0]
    return dice.numpy().astype(np.float64), y_fg.flatten(1).sum(dim=1).numpy()


def dice_table(
    groups: Iterable[str], dice: Iterable[float], order: Sequence[str] = ("thick", "thin")
) -> dict[str, Any]:
    """Mean slice Dice per group and over all slices (``"mixed"``), NaN slices left out.

    Parameters
    ----------
    groups
        Group of each slice (e.g. ``"thick"`` / ``"thin"``).
    dice
        Dice of each slice (NaN: undefined, not counted).
    order
        Groups listed first (others follow alphabetically).

    Returns
    -------
    ``{group: {"mean": float | None, "std": ..., "n_slices": int}, ..., "mixed": {...}}``.
    """
    groups, values = list(groups), np.asarray(list(dice), dtype=np.float64)
    if len(groups) != len(values):
        raise InputError(f"dice_table: {len(groups)} groups for {len(values)} Dice values.")

    def summary(selected: np.ndarray) -> dict[str, Any]:
        selected = selected[np.isfinite(selected)]
        if selected.size == 0:
            return {"mean": None, "std": None, "n_slices": 0}
        return {"mean": float(selected.mean()), "std": float(selected.std()), "n_slices": int(selected.size)}

    names = [g for g in order if g in groups] + sorted(set(groups) - set(order))
    table = {name: summary(values[np.array([g == name for g in groups])]) for name in names}
    table["mixed"] = summary(values)
    return table
