"""Segmentation loss of the CXRNet lung U-Net: cross-entropy minus the log of the soft Dice (seed 001 eq. 1-2).

Seed 001 (sec. III-A-1) trains its lung U-Net with

.. math::

    L = L_{CE} - \\log(L_{Dice}), \\qquad L_{Dice} = \\frac{2\\,TP}{2\\,TP + FP + FN}        (1), (2)

where ``L_Dice`` is the Dice *coefficient* (not ``1 - Dice``), so the second term is 0 for a perfect mask
and grows without bound as the overlap vanishes. With soft predictions ``p`` and a one-hot target ``g``,
``TP = sum(p g)``, ``FP = sum(p (1 - g))`` and ``FN = sum((1 - p) g)``, hence ``2 TP + FP + FN = sum(p) + sum(g)``:
exactly the soft Dice of :class:`monai.losses.DiceLoss`, which returns ``1 - Dice``. The class below reuses
that loss (its smoothing, one-hot conversion, softmax, background handling and batch pooling) and
PyTorch's cross-entropy, and takes ``-log`` of each Dice coefficient before averaging.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

from medxai.errors import InputError

__all__ = ["CEMinusLogDiceLoss"]


class CEMinusLogDiceLoss(nn.Module):
    """``L = CE - log(Dice)`` for multi-class segmentation logits (seed 001 eq. 1-2).

    Parameters
    ----------
    include_background
        Include channel 0 (background) in the Dice term. The default ``False`` gives the Dice of the lung
        class(es) only, the overlap the paper reports.
    lambda_ce, lambda_dice
        Weights of the two terms: ``lambda_ce * CE - lambda_dice * log(Dice)`` (both 1 in the paper).
    smooth_nr, smooth_dr
        Smoothing added to the numerator and denominator of the soft Dice (:class:`monai.losses.DiceLoss`).
    batch
        Pool TP/FP/FN over the batch before taking the ratio (one Dice per class) instead of one Dice per
        image and class.
    eps
        Lower bound of the Dice coefficient inside the logarithm (keeps the loss finite when a class is
        absent from both prediction and target with zero smoothing).

    Shapes
    ------
    ``input``: logits (B, C, H, W[, D]); ``target``: class indices (B, 1, H, W[, D]) or (B, H, W[, D]).
    Returns a scalar.
    """

    def __init__(
        self,
        include_background: bool = False,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if lambda_ce < 0 or lambda_dice < 0:
            raise InputError(f"lambda_ce and lambda_dice must be non-negative, got {lambda_ce} and {lambda_dice}.")
        if eps <= 0:
            raise InputError(f"eps must be positive, got {eps}.")
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            reduction="none",
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        self.lambda_ce = float(lambda_ce)
        self.lambda_dice = float(lambda_dice)
        self.eps = float(eps)

    @staticmethod
    def _indices(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Target as class indices with a channel axis (B, 1, *spatial), checked against ``input``."""
        if target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)
        if target.ndim != input.ndim or target.shape[1] != 1 or target.shape[2:] != input.shape[2:]:
            raise InputError(
                f"target must hold class indices of shape (B, 1, *spatial) matching input {tuple(input.shape)}, "
                f"got {tuple(target.shape)}."
            )
        if target.dtype.is_floating_point and not torch.equal(target, target.round()):
            raise InputError("target must hold integer class indices, got non-integer values.")
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= input.shape[1]:
            raise InputError(f"target class indices must lie in [0, {input.shape[1]}), got [{low}, {high}].")
        return target

    def dice_coefficients(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice coefficients ``2 TP / (2 TP + FP + FN)`` (eq. 2): (B, C') or (C',) with ``batch=True``."""
        target = self._indices(input, target)
        return 1.0 - self.dice(input, target).reshape(*([] if self.dice.batch else [input.shape[0]]), -1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.ndim < 3 or input.shape[1] < 2:
            raise InputError(f"input must be logits (B, C >= 2, *spatial), got shape {tuple(input.shape)}.")
        target = self._indices(input, target)
        ce = F.cross_entropy(input, target[:, 0].long())
        dice = (1.0 - self.dice(input, target)).clamp_min(self.eps)
        return self.lambda_ce * ce - self.lambda_dice * torch.log(dice).mean()
