"""Unsupervised loss on unlabelled thin slices: an f-divergence of the prediction from the uniform distribution
(seed 003 sec. 3.3.2, eq. 16-17).

For softmax probabilities ``p`` (H x W pixels, C classes) seed 003 defines

.. math::

    L_T(p) = -\\frac{1}{HWC} \\sum_{n=1}^{HW} \\sum_{c=1}^{C} f(C\\,p_{n,c})                      (16)

the negated f-divergence ``D_f(p || U)`` to the uniform distribution ``U = 1/C``: minimising it pushes each
pixel's prediction *away* from uniform, i.e. makes the thin-slice predictions confident, which moves their
features away from the decision boundary learnt on thick slices. Two choices of ``f``:

* ``"kl"``: ``f(x) = x log x`` (KL divergence). Then ``L_T = (1/HW) sum_n [H(p_n) - log C]``: entropy
  minimisation. Its derivative ``-(log(C p) + 1) / HW`` is unbounded near ``p = 0``, which the paper calls
  the gradient imbalance between easy and hard pixels.
* ``"pearson"`` (the paper's choice): ``f(x) = x^2 - 1`` (Pearson chi-square divergence), written as

  .. math:: L_T(p) = -\\frac{C}{HW} \\sum_{n=1}^{HW} \\sum_{c=1}^{C} p_{n,c}^2                  (17)

  which is eq. 16 with this ``f`` minus the constant 1 (no effect on gradients). Its derivative
  ``-2 C p / HW`` is linear in ``p``: the second derivative is the constant ``-2C / HW``.

Both are averaged over the batch. The loss of a one-hot prediction is ``-C`` (Pearson) or ``-log C`` (KL),
of a uniform prediction ``-1`` (Pearson) or ``0`` (KL).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from medxai.errors import InputError

__all__ = ["UNIFORM_DIVERGENCES", "uniform_divergence_loss", "UniformDivergenceLoss"]

UNIFORM_DIVERGENCES: tuple[str, ...] = ("pearson", "kl")


def uniform_divergence_loss(
    probabilities: torch.Tensor, divergence: str = "pearson", eps: float = 1e-12
) -> torch.Tensor:
    """``L_T`` of eq. 17 (``"pearson"``) or eq. 16 with ``f(x) = x log x`` (``"kl"``), averaged over the batch.

    Parameters
    ----------
    probabilities
        Class probabilities (B, C, *spatial) that sum to 1 over ``C``.
    divergence
        ``"pearson"`` or ``"kl"``.
    eps
        Floor inside the logarithm of the KL form (``0 log 0 = 0``).

    Returns
    -------
    A scalar tensor.
    """
    if divergence not in UNIFORM_DIVERGENCES:
        raise InputError(f"divergence must be one of {UNIFORM_DIVERGENCES}, got {divergence!r}.")
    if probabilities.dim() < 3 or probabilities.shape[1] < 2:
        raise InputError(
            f"probabilities must be (B, C, *spatial) with C >= 2 classes, got shape {tuple(probabilities.shape)}."
        )
    num_classes = probabilities.shape[1]
    pixels = probabilities.shape[2:].numel()
    p = probabilities.flatten(2)  # (B, C, HW)
    if divergence == "pearson":
        per_image = -(num_classes / pixels) * p.square().sum(dim=(1, 2))
    else:
        scaled = num_classes * p
        per_image = -(scaled * torch.log(scaled.clamp_min(eps))).sum(dim=(1, 2)) / (pixels * num_classes)
    return per_image.mean()


class UniformDivergenceLoss(nn.Module):
    """Seed 003's ``L_T`` (eq. 16-17) on segmentation logits: softmax, then :func:`uniform_divergence_loss`.

    Parameters
    ----------
    divergence
        ``"pearson"`` (eq. 17, the paper's choice) or ``"kl"`` (eq. 16 with ``f(x) = x log x``, the form the
        paper argues against).

    Shapes
    ------
    ``input``: logits (B, C, *spatial). Returns a scalar. The loss takes no target: thin slices are unlabelled.
    """

    def __init__(self, divergence: str = "pearson") -> None:
        super().__init__()
        if divergence not in UNIFORM_DIVERGENCES:
            raise InputError(f"divergence must be one of {UNIFORM_DIVERGENCES}, got {divergence!r}.")
        self.divergence = divergence

    def bounds(self, num_classes: int) -> tuple[float, float]:
        """(loss of a one-hot prediction, loss of a uniform prediction) for ``num_classes`` classes."""
        if self.divergence == "pearson":
            return -float(num_classes), -1.0
        return -math.log(num_classes), 0.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 3:
            raise InputError(f"UniformDivergenceLoss expects logits (B, C, *spatial), got shape {tuple(input.shape)}.")
        return uniform_divergence_loss(torch.softmax(input.float(), dim=1), self.divergence)
