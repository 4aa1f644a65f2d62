"""EDM head: the 1x1-conv activation maps and their spatial mean equal CAM's GAP + linear classifier (eq. 1-3)."""

from __future__ import annotations

import pytest
import torch

from medxai.errors import InputError
from medxai.networks import EDMHead


def _hand_head() -> EDMHead:
    head = EDMHead(in_features=2, num_classes=2, dropout=0.7).eval()
    with torch.no_grad():
        head.conv.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]).view(2, 2, 1, 1))
        head.conv.bias.copy_(torch.tensor([0.5, -1.0]))
    return head


def test_maps_and_scores_by_hand():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])  # (1, K=2, 2, 2)
    maps, scores = _hand_head()(features)
    # A_0 = 1 F^0 + 2 F^1 + 0.5, A_1 = -F^0 + 0.5 F^1 - 1 (eq. 3 inner sum)
    torch.testing.assert_close(maps[0, 0], torch.tensor([[1.5, 4.5], [3.5, 2.5]]))
    torch.testing.assert_close(maps[0, 1], torch.tensor([[-2.0, -2.5], [-4.0, -5.5]]))
    # eq. 3: s_c = mean(A_c) = 3.0 and -3.5; eq. 1: GAP(F) = (2.5, 0) -> 2.5 + 0.5 = 3.0, -2.5 - 1 = -3.5
    torch.testing.assert_close(scores, torch.tensor([[3.0, -3.5]]))


def test_eq1_equals_eq3_gap_linear_head_with_the_same_weights():
    torch.manual_seed(0)
    head = EDMHead(64, 3, dropout=0.5).eval()
    linear = torch.nn.Linear(64, 3)
    with torch.no_grad():
        linear.weight.copy_(head.conv.weight.flatten(1))
        linear.bias.copy_(head.conv.bias)
    features = torch.randn(4, 64, 7, 5)
    maps, scores = head(features)
    expected = linear(features.mean(dim=(2, 3)))  # CAM's classifier, eq. 1
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(head.classify_vector(features.mean(dim=(2, 3))), expected)
    # eq. 2 (post-hoc CAM from the linear weights) is the EDM map up to the bias
    cam = torch.einsum("ck,nkhw->nchw", linear.weight, features)
    torch.testing.assert_close(maps, cam + linear.bias.view(1, 3, 1, 1))


def test_dropout_drops_whole_feature_maps_in_training_only():
    head = EDMHead(200, 1, dropout=0.7).train()
    torch.manual_seed(1)
    dropped = head.dropout(torch.ones(1, 200, 3, 3))
    per_channel = dropped.flatten(2)
    assert torch.all(per_channel.amax(-1) == per_channel.amin(-1))  # each map is all-zero or all-scaled
    values = per_channel[0, :, 0]
    torch.testing.assert_close(values[values != 0], torch.full_like(values[values != 0], 1 / 0.3))
    assert 0.5 < float((per_channel[0, :, 0] == 0).float().mean()) < 0.9  # about 70% dropped
    features = torch.randn(2, 200, 3, 3)
    head.eval()
    torch.testing.assert_close(head(features)[0], head.conv(features))


def test_invalid_arguments_are_named():
    with pytest.raises(InputError, match="dropout must be in"):
        EDMHead(8, 2, dropout=1.0)
    with pytest.raises(InputError, match="num_classes must be >= 1"):
        EDMHead(8, 0)
