"""Losses of the CT multiple-instance classifier (seed 003 sec. 3.2, eq. 7, 11, 12) and of its slice-level baseline.

Both take the details dict of :meth:`medxai.networks.CTMILNet.forward_details` (a network with
``return_details=True``) and patient labels: class indices (B,) / (B, 1), or one-hot / soft targets (B, C).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxai.errors import InputError
from medxai.networks.ncm import noisy_posterior

__all__ = ["one_hot_targets", "MILLoss", "SliceLevelLoss"]


def one_hot_targets(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Patient labels as float targets (B, C).

    Class indices (B,) or (B, 1) become one-hot rows (with ``num_classes == 1``, a 0/1 label per patient);
    (B, C) targets are used as given and must lie in [0, 1].
    """
    target = torch.as_tensor(target)
    if target.ndim == 2 and target.shape[1] == num_classes:
        values = target.float()
        if ((values < 0) | (values > 1)).any():
            raise InputError(f"targets (B, C) must lie in [0, 1], got values in [{values.min():g}, {values.max():g}].")
        return values
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 1:
        raise InputError(
            f"patient labels must be class indices (B,) or (B, 1), or targets (B, {num_classes}); got shape "
            f"{tuple(target.shape)}."
        )
    if target.dtype.is_floating_point:
        if not torch.equal(target, target.round()):
            raise InputError("patient class indices must be whole numbers, got non-integer values.")
    labels = target.long()
    upper = 1 if num_classes == 1 else num_classes - 1
    if labels.numel() and (labels.min() < 0 or labels.max() > upper):
        raise InputError(
            f"patient class indices must lie in [0, {upper}] for {num_classes} classes, got "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    if num_classes == 1:
        return labels.float().unsqueeze(1)
    return F.one_hot(labels, num_classes).float()


def _get(details: Mapping[str, torch.Tensor], key: str, owner: str) -> torch.Tensor:
    if key not in details:
        raise InputError(f"{owner}: the network output has no '{key}' (keys: {sorted(details)}).")
    return details[key]


class MILLoss(nn.Module):
    """``L = L_cls + lambda L_noisy`` (seed 003 eq. 12): patient BCE (eq. 7) plus the noisy slice-label loss (eq. 11).

    - ``L_cls = -sum_c [y_c log P(c|P) + (1 - y_c) log(1 - P(c|P))]`` (eq. 7, summed over the classes as
      written, averaged over the B patients), computed with ``BCEWithLogits`` on the patient logits, so it
      is exact for whichever slice integration (eq. 5 of seed 003 or of seed 000) the network uses.
    - ``L_noisy = -(1/N) sum_n sum_c [y_c log P(z_c = 1 | I_n) + (1 - y_c) log P(z_c = 0 | I_n)]``
      (eq. 11) over the ``N = B * D`` slices, with the patient label broadcast to its slices and
      ``P(z_c | I_n) = Q^c P(y_c | I_n)`` (eq. 10), ``P(y_c = 1 | I_n) = sigmoid(s_c)`` the slice's EDM
      probability. Logarithms are clamped at -100, as :func:`torch.nn.functional.binary_cross_entropy` does.

    Parameters
    ----------
    lambda_noisy
        ``lambda`` of eq. 12 (seed 003 sec. 3.4: 1e-4). ``0`` gives ``L_cls`` only.

    Call
    ----
    ``loss(details, target)``: ``details`` is :meth:`CTMILNet.forward_details`'s dict (``patient_logits``,
    and ``slice_scores`` + ``transition`` for the noisy term) or, with ``lambda_noisy == 0``, the patient
    logits (B, C) themselves; ``target`` as in :func:`one_hot_targets`. Returns the scalar ``L``; the parts
    of the last call stay in :attr:`last_cls` and :attr:`last_noisy` (detached; ``last_noisy`` is ``None``
    without a transition) and as floats in :attr:`last_parts` for logging.
    """

    def __init__(self, lambda_noisy: float = 1e-4) -> None:
        super().__init__()
        if lambda_noisy < 0:
            raise InputError(f"MILLoss: lambda_noisy must be >= 0, got {lambda_noisy}.")
        self.lambda_noisy = float(lambda_noisy)
        self.last_cls: torch.Tensor | None = None
        self.last_noisy: torch.Tensor | None = None
        self.last_parts: dict[str, float] = {}

    def classification_loss(self, patient_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Eq. 7 averaged over patients: (B, C) logits and targets -> scalar."""
        return F.binary_cross_entropy_with_logits(patient_logits, targets, reduction="none").sum(dim=1).mean()

    def noisy_loss(self, slice_scores: torch.Tensor, transition: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Eq. 11: slice scores (B, D, C), transitions (B, D, C, 2, 2), patient targets (B, C) -> scalar."""
        if transition.shape[:3] != slice_scores.shape or transition.shape[3:] != (2, 2):
            raise InputError(
                f"MILLoss: transition {tuple(transition.shape)} does not match slice scores "
                f"{tuple(slice_scores.shape)} (expected (B, D, C, 2, 2))."
            )
        p_noisy = noisy_posterior(transition, torch.sigmoid(slice_scores))[..., 1].clamp(0.0, 1.0)
        slice_targets = targets.unsqueeze(1).expand_as(p_noisy)
        return F.binary_cross_entropy(p_noisy, slice_targets, reduction="none").sum(dim=-1).mean()

    def forward(self, details: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(details, torch.Tensor):
            if self.lambda_noisy > 0:
                raise InputError(
                    "MILLoss with lambda_noisy > 0 needs the network's details dict (slice_scores, transition); "
                    "got a tensor: build the network with return_details=True."
                )
            details = {"patient_logits": details}
        logits = _get(details, "patient_logits", "MILLoss")
        if logits.ndim != 2:
            raise InputError(f"MILLoss: patient_logits must be (B, C), got shape {tuple(logits.shape)}.")
        targets = one_hot_targets(target, logits.shape[1]).to(logits.device)
        if targets.shape != logits.shape:
            raise InputError(
                f"MILLoss: targets {tuple(targets.shape)} do not match patient logits {tuple(logits.shape)}."
            )
        cls = self.classification_loss(logits, targets)
        total = cls
        noisy = None
        if "transition" in details:
            noisy = self.noisy_loss(_get(details, "slice_scores", "MILLoss"), details["transition"], targets)
            total = cls + self.lambda_noisy * noisy
        elif self.lambda_noisy > 0:
            raise InputError(
                f"MILLoss with lambda_noisy={self.lambda_noisy:g} needs 'transition' in the network output; build "
                "the network with use_ncm=True, or set lambda_noisy=0."
            )
        self.last_cls = cls.detach()
        self.last_noisy = None if noisy is None else noisy.detach()
        self.last_parts = {"loss": float(total.detach()), "loss_cls": float(cls.detach())}
        if noisy is not None:
            self.last_parts["loss_noisy"] = float(noisy.detach())
        return total


class SliceLevelLoss(nn.Module):
    """Slice-level baseline (seed 003 Table 2): every slice trained with its patient's label.

    ``L = -(1/N) sum_n sum_c [y_c log sigmoid(s_c(I_n)) + (1 - y_c) log(1 - sigmoid(s_c(I_n)))]`` over the
    ``N = B * D`` slices, i.e. eq. 7 applied to each slice (``BCEWithLogits`` on the EDM slice scores).

    Call ``loss(details, target)`` with :meth:`CTMILNet.forward_details`'s dict (or the slice scores
    (B, D, C) themselves) and patient labels as in :func:`one_hot_targets`; :attr:`last_parts` keeps the
    value as a float.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_parts: dict[str, float] = {}

    def forward(self, details: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scores = details if isinstance(details, torch.Tensor) else _get(details, "slice_scores", "SliceLevelLoss")
        if scores.ndim != 3:
            raise InputError(f"SliceLevelLoss: slice scores must be (B, D, C), got shape {tuple(scores.shape)}.")
        targets = one_hot_targets(target, scores.shape[2]).to(scores.device)
        if targets.shape[0] != scores.shape[0]:
            raise InputError(f"SliceLevelLoss: {targets.shape[0]} labels for {scores.shape[0]} volumes.")
        slice_targets = targets.unsqueeze(1).expand_as(scores)
        loss = F.binary_cross_entropy_with_logits(scores, slice_targets, reduction="none").sum(dim=-1).mean()
        self.last_parts = {"loss": float(loss.detach())}
        return loss
