"""Slice integration module (SIM): patient probability from slice scores by section-wise multiple instance learning.

Seed 003 sec. 3.2.2 (eq. 4-7) and seed 000 sec. 3.2 (eq. 4-6). A patient is a bag of ``n`` slices split into
``|S| = max(1, floor(n / l_s))`` disjoint sections of consecutive slices (eq. 4, the sections are the
instances); a section's probability is the sigmoid of the mean of its ``k`` largest slice scores (eq. 6);
the patient's probability combines the sections, either

- ``"odds_product"`` (seed 003 eq. 5): ``P = 1 / (1 + prod_i (1 / P_i - 1))``, i.e. the odds multiply:
  ``logit(P) = sum_i logit(P_i)``; or
- ``"noisy_or"`` (seed 000 eq. 5): ``P = 1 - prod_i (1 - P_i)``, positive when any section is.

Everything is computed in log space from the section *logits* (the k-max mean of eq. 6 is the logit of
``P_i``), so the patient logit stays finite and exact where the probabilities round to 0 or 1, and a
``BCEWithLogits`` loss on it is stable.

Remainder slices: eq. 4 fixes the number of sections, not what happens to the ``n - |S| l_s`` slices left
over when ``l_s`` does not divide ``n``; neither paper says. Dropping them could drop the only slices with
a lesion, so here the last section absorbs them (it has ``l_s + (n mod l_s)`` slices, fewer than
``2 l_s``) and every slice belongs to exactly one section. When ``l_s`` divides ``n`` this is eq. 4 exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxai.errors import InputError

__all__ = [
    "INTEGRATION_MODES",
    "split_sections",
    "section_logits",
    "section_probabilities",
    "patient_logit",
    "patient_probability",
    "SliceIntegration",
]

INTEGRATION_MODES = ("odds_product", "noisy_or")


def split_sections(n: int, section_length: int) -> list[tuple[int, int]]:
    """Disjoint sections of consecutive slices, ``[(start, stop), ...]`` (seed 003 / seed 000 eq. 4).

    ``|S| = max(1, floor(n / section_length))`` sections of ``section_length`` slices; the last section
    absorbs the ``n mod section_length`` remainder slices, and ``n < section_length`` gives one section of
    all ``n`` slices.

    Examples
    --------
    >>> split_sections(40, 16)
    [(0, 16), (16, 40)]
    >>> split_sections(10, 16)
    [(0, 10)]
    """
    if n < 1:
        raise InputError(f"split_sections: the volume needs at least one slice, got n={n}.")
    if section_length < 1:
        raise InputError(f"split_sections: section_length must be >= 1, got {section_length}.")
    num_sections = max(1, n // section_length)
    sections: list[tuple[int, int]] = []
    for i in range(num_sections):
        stop = n if i == num_sections - 1 else (i + 1) * section_length
        sections.append((i * section_length, stop))
    return sections


def _check_scores(slice_scores: torch.Tensor, what: str) -> None:
    if slice_scores.ndim != 3 or slice_scores.shape[1] < 1:
        raise InputError(f"{what}: expected slice scores (B, n, C) with n >= 1, got shape {list(slice_scores.shape)}.")


def section_logits(slice_scores: torch.Tensor, section_length: int = 16, k: int = 8) -> torch.Tensor:
    """Mean of the ``k`` largest slice scores per section and class, the logit of eq. 6, (B, n, C) -> (B, S, C).

    ``k`` larger than a section's length uses the whole section (its mean score).
    """
    _check_scores(slice_scores, "section_logits")
    if k < 1:
        raise InputError(f"section_logits: k must be >= 1, got {k}.")
    means = []
    for start, stop in split_sections(slice_scores.shape[1], section_length):
        top = torch.topk(slice_scores[:, start:stop], k=min(k, stop - start), dim=1).values
        means.append(top.mean(dim=1))
    return torch.stack(means, dim=1)


def section_probabilities(slice_scores: torch.Tensor, section_length: int = 16, k: int = 8) -> torch.Tensor:
    """Section probabilities ``P(c | S_i) = sigmoid(mean of the k largest s_c in S_i)`` (seed 003 eq. 6), (B, S, C)."""
    return torch.sigmoid(section_logits(slice_scores, section_length, k))


def _check_mode(mode: str) -> None:
    if mode not in INTEGRATION_MODES:
        raise InputError(f"unknown slice integration mode '{mode}'; choose one of {', '.join(INTEGRATION_MODES)}.")


def patient_logit(section_logit: torch.Tensor, mode: str = "odds_product") -> torch.Tensor:
    """Patient logit ``logit P(c | P)`` from section logits (B, S, C) -> (B, C).

    ``"odds_product"`` (seed 003 eq. 5): ``sum_i l_i``. ``"noisy_or"`` (seed 000 eq. 5):
    ``log P - log(1 - P)`` with ``log(1 - P) = sum_i log sigmoid(-l_i)`` and, by telescoping
    ``1 - prod_i (1 - p_i) = sum_i p_i prod_{j<i} (1 - p_j)``,
    ``log P = logsumexp_i (log sigmoid(l_i) + sum_{j<i} log sigmoid(-l_j))``: every term finite, so the
    result is exact for any finite logits.
    """
    if section_logit.ndim != 3 or section_logit.shape[1] < 1:
        raise InputError(
            f"patient_logit: expected section logits (B, S, C) with S >= 1, got {list(section_logit.shape)}."
        )
    if mode == "odds_product":
        return section_logit.sum(dim=1)
    if mode != "noisy_or":
        raise InputError(f"unknown slice integration mode '{mode}'; choose one of odds_product, noisy_or.")
    log_not = F.logsigmoid(-section_logit)  # log(1 - P_i)
    # sum_{j<i} log(1 - P_j): an exclusive cumulative sum (no inf - inf when a section has P_i = 1)
    log_none_before = torch.cat((torch.zeros_like(log_not[:, :1]), torch.cumsum(log_not[:, :-1], dim=1)), dim=1)
    log_p = torch.logsumexp(F.logsigmoid(section_logit) + log_none_before, dim=1)
    return log_p - log_not.sum(dim=1)


def patient_probability(section_probs: torch.Tensor, mode: str = "odds_product") -> tuple[torch.Tensor, torch.Tensor]:
    """Patient probability and logit from section probabilities (B, S, C) -> ((B, C), (B, C)).

    ``"odds_product"``: ``P = 1 / (1 + prod_i (1 / P_i - 1))`` (seed 003 eq. 5); ``"noisy_or"``:
    ``P = 1 - prod_i (1 - P_i)`` (seed 000 eq. 5). Computed via :func:`patient_logit` on ``logit(P_i)``;
    prefer :func:`patient_logit` on the section logits when you have them (no round trip through the
    sigmoid, which saturates at 0 and 1).
    """
    if section_probs.ndim == 3 and ((section_probs < 0) | (section_probs > 1)).any():
        raise InputError("patient_probability: section probabilities must lie in [0, 1].")
    logit = patient_logit(torch.logit(section_probs), mode)
    return torch.sigmoid(logit), logit


class SliceIntegration(nn.Module):
    """Slice scores (B, n, C) -> (section logits (B, S, C), patient logits (B, C)): eq. 4-6 as a module.

    Parameters
    ----------
    section_length
        ``l_s`` of eq. 4 (seed 003: 16; seed 000: 8).
    k
        Number of top slices averaged per section (eq. 6; seed 003: 8).
    mode
        ``"odds_product"`` (seed 003 eq. 5) or ``"noisy_or"`` (seed 000 eq. 5).
    """

    def __init__(self, section_length: int = 16, k: int = 8, mode: str = "odds_product") -> None:
        super().__init__()
        _check_mode(mode)
        if section_length < 1 or k < 1:
            raise InputError(f"SliceIntegration: section_length and k must be >= 1, got {section_length}, {k}.")
        self.section_length = section_length
        self.k = k
        self.mode = mode

    def forward(self, slice_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sections = section_logits(slice_scores, self.section_length, self.k)
        return sections, patient_logit(sections, self.mode)

    def extra_repr(self) -> str:
        return f"section_length={self.section_length}, k={self.k}, mode={self.mode!r}"
