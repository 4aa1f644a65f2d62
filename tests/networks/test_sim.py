"""Slice integration: sections (eq. 4), k-max section probabilities (eq. 6), patient probability (eq. 5, both seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.networks import (
    SliceIntegration,
    patient_logit,
    patient_probability,
    section_logits,
    section_probabilities,
    split_sections,
)


@pytest.mark.parametrize(
    "n, length, expected",
    [
        (40, 16, [(0, 16), (16, 40)]),  # floor(40 / 16) = 2 sections, the last absorbs the 8 remainder slices
        (32, 16, [(0, 16), (16, 32)]),
        (10, 16, [(0, 10)]),  # n < l_s: max(1, 0) = 1 section of all slices
        (47, 8, [(0, 8), (8, 16), (16, 24), (24, 32), (32, 47)]),
        (1, 8, [(0, 1)]),
    ],
)
def test_split_sections(n, length, expected):
    sections = split_sections(n, length)
    assert sections == expected
    assert len(sections) == max(1, n // length)  # eq. 4
    assert sum(stop - start for start, stop in sections) == n  # every slice in exactly one section


def test_split_sections_rejects_empty_volume_and_bad_length():
    with pytest.raises(InputError, match="n=0"):
        split_sections(0, 16)
    with pytest.raises(InputError, match="section_length must be >= 1, got 0"):
        split_sections(10, 0)


def test_section_probabilities_hand_computed_n40_ls16_k8():
    scores = ((torch.arange(40.0) - 20.0) / 10.0).view(1, 40, 1)
    # section 0 = slices 0..15, top 8 = slices 8..15, mean index 11.5 -> (11.5 - 20) / 10 = -0.85
    # section 1 = slices 16..39, top 8 = slices 32..39, mean index 35.5 -> 1.55
    probs = section_probabilities(scores, section_length=16, k=8)
    torch.testing.assert_close(probs, torch.sigmoid(torch.tensor([[[-0.85], [1.55]]])))
    # the k largest, not the first k: shuffling slices inside a section does not change it
    shuffled = torch.cat([scores[:, :16].flip(1), scores[:, 16:].flip(1)], dim=1)
    torch.testing.assert_close(section_probabilities(shuffled, 16, 8), probs)


def test_k_larger_than_the_section_uses_the_whole_section():
    scores = torch.tensor([[[0.1, 1.0], [3.0, -1.0], [-2.0, 0.0], [5.0, 2.0], [1.0, 1.0]]])  # (1, n=5, C=2)
    torch.testing.assert_close(section_logits(scores, section_length=16, k=8), torch.tensor([[[1.42, 0.6]]]))
    torch.testing.assert_close(section_logits(scores, section_length=16, k=2), torch.tensor([[[4.0, 1.5]]]))


def test_patient_probability_hand_computed_both_equations():
    section_probs = torch.tensor([[[0.8], [0.6]]])  # (B=1, S=2, C=1)
    prob, logit = patient_probability(section_probs, mode="odds_product")
    # seed 003 eq. 5: 1 / (1 + (1/0.8 - 1)(1/0.6 - 1)) = 1 / (1 + 0.25 * 2/3) = 6/7
    torch.testing.assert_close(prob, torch.tensor([[6.0 / 7.0]]))
    torch.testing.assert_close(logit, torch.tensor([[math.log(6.0)]]))
    prob, logit = patient_probability(section_probs, mode="noisy_or")
    # seed 000 eq. 5: 1 - (1 - 0.8)(1 - 0.6) = 0.92
    torch.testing.assert_close(prob, torch.tensor([[0.92]]))
    torch.testing.assert_close(logit, torch.tensor([[math.log(0.92 / 0.08)]]))


def test_odds_product_logit_is_the_sum_of_section_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 2) * 3
    torch.testing.assert_close(patient_logit(logits, "odds_product"), logits.sum(dim=1))
    prob, _ = patient_probability(torch.sigmoid(logits).double(), "odds_product")
    naive = 1.0 / (1.0 + torch.prod(1.0 / torch.sigmoid(logits).double() - 1.0, dim=1))
    torch.testing.assert_close(prob, naive)


def test_noisy_or_matches_the_naive_formula_and_is_at_least_the_best_section():
    torch.manual_seed(1)
    logits = torch.randn(4, 6, 2, dtype=torch.float64) * 2
    naive = 1.0 - torch.prod(1.0 - torch.sigmoid(logits), dim=1)
    torch.testing.assert_close(torch.sigmoid(patient_logit(logits, "noisy_or")), naive)
    assert torch.all(naive >= torch.sigmoid(logits).amax(dim=1))
    # a single section: both integrations return it unchanged
    one = logits[:, :1]
    torch.testing.assert_close(patient_logit(one, "noisy_or"), one[:, 0])
    torch.testing.assert_close(patient_logit(one, "odds_product"), one[:, 0])


def test_noisy_or_logit_stays_exact_where_probabilities_saturate():
    logits = torch.tensor([[[-200.0], [-300.0]], [[40.0], [60.0]]], requires_grad=True)  # float32
    out = patient_logit(logits, "noisy_or")
    # P = 1 - (1 - e^-200)(1 - e^-300) ~ e^-200: logit ~ -200 (a naive float32 product gives log(0) = -inf)
    assert out[0, 0].item() == pytest.approx(-200.0, abs=1e-4)
    # 1 - P = sigmoid(-40) sigmoid(-60) ~ e^-100: logit ~ 100
    assert out[1, 0].item() == pytest.approx(100.0, abs=1e-3)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # certain sections (P_i = 1 or 0, infinite logits) give the limits, not NaN
    certain = torch.tensor([[[0.3], [1.0]], [[0.0], [0.0]]])
    for mode in ("noisy_or", "odds_product"):
        prob, logit = patient_probability(certain, mode)
        torch.testing.assert_close(prob, torch.tensor([[1.0], [0.0]]))
        assert logit[0, 0] == math.inf and logit[1, 0] == -math.inf


def test_slice_integration_module_composes_eq4_to_eq6():
    torch.manual_seed(2)
    scores = torch.randn(2, 40, 2)
    module = SliceIntegration(section_length=16, k=8, mode="noisy_or")
    sections, patient = module(scores)
    assert sections.shape == (2, 2, 2)
    torch.testing.assert_close(sections, section_logits(scores, 16, 8))
    torch.testing.assert_close(patient, patient_logit(sections, "noisy_or"))
    with pytest.raises(InputError, match="unknown slice integration mode 'product'"):
        SliceIntegration(mode="product")
    with pytest.raises(InputError, match=r"expected slice scores \(B, n, C\)"):
        module(torch.randn(2, 40))
