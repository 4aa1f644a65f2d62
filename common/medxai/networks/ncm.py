"""Noise correction module (NCM): per-slice label-noise transition matrices (seed 003 sec. 3.2.3, eq. 8-11).

Slices inherit the patient's label, which is wrong for the healthy slices of a positive patient. Following
Goldberger and Ben-Reuven ("Training deep neural-networks using a noise adaptation layer", ICLR 2017, ref.
[163] of seed 003), the NCM predicts for each slice ``I`` and class ``c`` a 2x2 transition matrix

    Q^c_ij = P(z_c = i | y_c = j, I) = exp(w^c_ij phi(I) + b^c_ij) / sum_i exp(w^c_ij phi(I) + b^c_ij)   (eq. 9)

from the true label ``y_c`` to the observed (noisy) label ``z_c``, and turns the slice's true posterior into
the noisy one, ``P(z_c = i | I) = sum_j Q^c_ij P(y_c = j | I)`` (eq. 8, 10).

The normalisation of eq. 9 runs over ``i`` (the noisy label) for each true label ``j``: every *column* of
``Q^c`` is a distribution, so eq. 10 (``Q`` times a distribution) is again one. The paper's sentence after
eq. 9 reads ``T^c_ij`` as "from the true label i to the noise label j", swapping the roles of the indices;
the equations (8-10) are unambiguous and are what is implemented: index ``[..., i, j]`` = (noisy, true).

``phi`` is "a nonlinear mapping implemented by convolution layers": here conv3x3-BN-ReLU then global average
pooling, on the trunk's feature maps of the slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from medxai.errors import InputError

__all__ = ["NoiseTransitionHead", "noisy_posterior"]


class NoiseTransitionHead(nn.Module):
    """Per-slice, per-class 2x2 label transition matrices ``Q`` from the slice's feature maps (seed 003 eq. 9).

    Parameters
    ----------
    in_features
        Channels ``K`` of the trunk's feature maps.
    num_classes
        Number of classes ``C``.
    hidden
        Width of the embedding ``phi(I)``.
    init_confidence
        Initial diagonal ``Q^c_jj`` for every slice. The transition scores start as a constant (zero weights,
        bias ``logit(init_confidence)`` on the diagonal, 0 off it), so training starts from "almost no label
        noise" (a near-identity transition, the usual initialisation of noise adaptation layers, Goldberger
        and Ben-Reuven 2017 sec. 3) and learns where the patient label does not fit a slice.

    Shapes
    ------
    ``forward(features (N, K, h, w)) -> Q (N, C, 2, 2)``, ``Q[n, c, i, j] = P(z_c = i | y_c = j, I_n)``;
    columns sum to 1.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, init_confidence: float = 0.95) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or hidden < 1:
            raise InputError(
                f"NoiseTransitionHead: in_features, num_classes and hidden must be >= 1, got "
                f"{in_features}, {num_classes}, {hidden}."
            )
        if not 0.5 <= init_confidence < 1.0:
            raise InputError(f"NoiseTransitionHead: init_confidence must be in [0.5, 1), got {init_confidence}.")
        self.num_classes = num_classes
        self.phi = nn.Sequential(
            nn.Conv2d(in_features, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.transition = nn.Linear(hidden, num_classes * 4)  # w^c_ij, b^c_ij of eq. 9
        nn.init.zeros_(self.transition.weight)
        with torch.no_grad():
            diag = torch.eye(2).mul(math.log(init_confidence / (1.0 - init_confidence)))
            self.transition.bias.copy_(diag.expand(num_classes, 2, 2).reshape(-1))

    def transition_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``T^c_ij = w^c_ij phi(I) + b^c_ij``, (N, K, h, w) -> (N, C, 2, 2) indexed (noisy i, true j)."""
        return self.transition(self.phi(features)).view(-1, self.num_classes, 2, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.transition_scores(features), dim=-2)  # eq. 9: normalise over i


def noisy_posterior(transition: torch.Tensor, p_true: torch.Tensor) -> torch.Tensor:
    """Noisy-label posterior ``P(z_c = i | I) = sum_j Q^c_ij P(y_c = j | I)`` (seed 003 eq. 10).

    Parameters
    ----------
    transition
        ``Q`` (..., C, 2, 2), indexed (noisy i, true j), columns summing to 1.
    p_true
        ``P(y_c = 1 | I)`` (..., C), the slice's (true-label) probability of class ``c``; ``P(y_c = 0 | I)``
        is ``1 - p_true``.

    Returns
    -------
    torch.Tensor
        ``P(z_c = i | I)`` (..., C, 2); ``[..., 1]`` is the probability that the observed label is positive.
    """
    if transition.shape[-2:] != (2, 2) or transition.shape[:-2] != p_true.shape:
        raise InputError(
            f"noisy_posterior: transition {tuple(transition.shape)} must be (..., C, 2, 2) over p_true "
            f"{tuple(p_true.shape)} (..., C)."
        )
    p = torch.stack((1.0 - p_true, p_true), dim=-1)  # P(y_c = j | I), j = 0, 1
    return torch.matmul(transition, p.unsqueeze(-1)).squeeze(-1)
