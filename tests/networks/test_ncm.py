"""Noise correction: column-stochastic transition matrices (eq. 9), noisy posterior (eq. 10), near-identity start."""

from __future__ import annotations

import math

import pytest
import torch

from medxai.errors import InputError
from medxai.networks import NoiseTransitionHead, noisy_posterior


def test_columns_are_distributions_over_the_noisy_label():
    torch.manual_seed(0)
    head = NoiseTransitionHead(in_features=16, num_classes=3, hidden=8)
    torch.nn.init.normal_(head.transition.weight, std=1.0)  # away from the constant initial output
    q = head(torch.randn(5, 16, 4, 4))
    assert q.shape == (5, 3, 2, 2)
    torch.testing.assert_close(q.sum(dim=-2), torch.ones(5, 3, 2))  # sum_i Q_ij = 1 for every true j
    assert not torch.allclose(q.sum(dim=-1), torch.ones(5, 3, 2))  # rows are not normalised
    assert q.std(dim=0).max() > 1e-3  # the matrices depend on the slice


def test_eq9_softmax_over_i_by_hand():
    head = NoiseTransitionHead(in_features=4, num_classes=1, hidden=2).eval()
    with torch.no_grad():
        head.transition.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 2.0]))  # T = [[1, 0], [0, 2]], weights are zero
    q = head(torch.randn(2, 4, 3, 3))[0, 0]
    e = math.e
    expected = torch.tensor([[e / (e + 1), 1 / (1 + e**2)], [1 / (e + 1), e**2 / (1 + e**2)]])
    torch.testing.assert_close(q, expected)


def test_initial_matrices_are_near_identity_for_every_slice():
    head = NoiseTransitionHead(in_features=8, num_classes=2, hidden=4, init_confidence=0.95)
    q = head(torch.randn(6, 8, 5, 5) * 10)
    torch.testing.assert_close(q, torch.tensor([[0.95, 0.05], [0.05, 0.95]]).expand(6, 2, 2, 2))
    with pytest.raises(InputError, match="init_confidence must be in"):
        NoiseTransitionHead(8, 2, init_confidence=1.0)


def test_noisy_posterior_eq10_by_hand():
    q = torch.tensor([[[0.9, 0.2], [0.1, 0.8]]])  # (C=1, 2, 2): P(z=i | y=j)
    p = noisy_posterior(q, torch.tensor([0.3]))  # P(y=1) = 0.3
    # P(z=0) = 0.9 * 0.7 + 0.2 * 0.3 = 0.69, P(z=1) = 0.1 * 0.7 + 0.8 * 0.3 = 0.31
    torch.testing.assert_close(p, torch.tensor([[0.69, 0.31]]))
    identity = torch.eye(2).expand(4, 3, 2, 2)
    p_true = torch.rand(4, 3)
    torch.testing.assert_close(noisy_posterior(identity, p_true)[..., 1], p_true)  # no noise: z = y
    flip = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(4, 3, 2, 2)
    torch.testing.assert_close(noisy_posterior(flip, p_true)[..., 1], 1 - p_true)  # labels always flipped
    with pytest.raises(InputError, match=r"must be \(\.\.\., C, 2, 2\)"):
        noisy_posterior(identity, torch.rand(4, 2))
