"""Fusion loss of CXRNet: the cross-entropies of its two encoders' classifiers, summed (seed 001 eq. 5-6).

Seed 001 (sec. III-B-c) trains the encoder-decoder-encoder network :class:`medxai.networks.CXRNet` with

.. math::

    Loss = Loss_{CE1} + Loss_{CE2}, \\qquad Loss_{CE} = -\\sum_i^C t_i \\log(p_i)        (5), (6)

where ``Loss_CE1`` is the cross-entropy of the first encoder's classifier on the input image and
``Loss_CE2`` that of the second encoder on the decoder's reconstruction; the paper weighs both by 1.
Each term is PyTorch's softmax cross-entropy averaged over the batch.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxai.errors import InputError

__all__ = ["FusionLoss"]


class FusionLoss(nn.Module):
    """``w_1 CE(logits, t) + w_2 CE(logits_reconstruction, t)`` on :meth:`CXRNet.forward_details` (eq. 5-6).

    Parameters
    ----------
    weights
        ``(w_1, w_2)``, the weights of the input and reconstruction terms (both 1 in the paper).
    class_weight
        Optional per-class weights (C,) for both cross-entropies (:func:`torch.nn.functional.cross_entropy`'s
        ``weight``, a weighted mean over the batch), e.g. against class imbalance; ``None`` in the paper.
    label_smoothing
        Label smoothing of both cross-entropies (0 in the paper).

    Shapes
    ------
    ``details``: a dict with ``logits`` and ``logits_reconstruction``, both (B, C). ``target``: class indices
    (B,) or (B, 1) (MONAI's label layout), or class probabilities (B, C) as floats (e.g. one-hot).
    Returns a scalar; :meth:`terms` returns the two cross-entropies and their weighted sum.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0),
        class_weight: Optional[Sequence[float]] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        weights = [float(w) for w in weights]
        if len(weights) != 2 or min(weights) < 0:
            raise InputError(f"FusionLoss: weights must be two non-negative numbers, got {weights}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"FusionLoss: label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.weight_input, self.weight_reconstruction = weights
        self.label_smoothing = float(label_smoothing)
        self.class_weight: Optional[torch.Tensor]
        self.register_buffer(
            "class_weight", None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        )

    def _target(self, target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        b, c = logits.shape
        if target.is_floating_point() and target.dim() == 2 and target.shape[1] == c and c > 1:
            return target.to(logits.dtype)  # class probabilities (B, C)
        if target.dim() == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() != 1 or target.shape[0] != b:
            raise InputError(
                f"FusionLoss: target must be class indices (B,) / (B, 1) or probabilities (B, {c}) for B = {b}, "
                f"got shape {list(target.shape)}."
            )
        if target.is_floating_point():
            if not torch.equal(target, target.round()):
                raise InputError("FusionLoss: class-index targets must be whole numbers, got fractional values.")
            target = target.long()
        if target.numel() > 0 and (int(target.min()) < 0 or int(target.max()) >= c):
            raise InputError(
                f"FusionLoss: class indices must lie in [0, {c - 1}], got values from {int(target.min())} to "
                f"{int(target.max())}."
            )
        return target.long()

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weight is None else self.class_weight.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)

    def terms(self, details: Dict[str, torch.Tensor], target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``ce_input`` (Loss_CE1), ``ce_reconstruction`` (Loss_CE2) and their weighted sum ``loss`` (eq. 5)."""
        if isinstance(details, torch.Tensor):
            details = {}
        missing = [k for k in ("logits", "logits_reconstruction") if k not in details]
        if missing:
            raise InputError(
                f"FusionLoss needs CXRNet.forward_details' dict with 'logits' and 'logits_reconstruction'; "
                f"missing {missing} (set the network's return_details=True for training)."
            )
        logits, logits_rec = details["logits"], details["logits_reconstruction"]
        if logits.dim() != 2 or logits.shape != logits_rec.shape:
            raise InputError(
                f"FusionLoss: both logits must be (B, C) of one shape, got {list(logits.shape)} and "
                f"{list(logits_rec.shape)}."
            )
        labels = self._target(target.to(logits.device), logits)
        ce_input = self._cross_entropy(logits, labels)
        ce_reconstruction = self._cross_entropy(logits_rec, labels)
        loss = self.weight_input * ce_input + self.weight_reconstruction * ce_reconstruction
        return {"loss": loss, "ce_input": ce_input, "ce_reconstruction": ce_reconstruction}

    def forward(self, details: Dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The fusion loss (scalar) of eq. 5."""
        return self.terms(details, target)["loss"]
