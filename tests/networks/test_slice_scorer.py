"""SliceScorer: the CTMILNet slice score as a 2D classifier, equal to the network's own slice scores."""

from __future__ import annotations

import pytest
import torch

from medxai.errors import InputError
from medxai.explain import GradCAM
from medxai.explain.cam import upsample_map
from medxai.networks import CTMILNet
from medxai.networks.slice_scorer import SliceScorer


def _net(**kwargs) -> CTMILNet:
    torch.manual_seed(0)
    kwargs.setdefault("backbone", "tiny")
    kwargs.setdefault("section_length", 4)
    kwargs.setdefault("k", 2)
    return CTMILNet(**kwargs).eval()


@pytest.mark.parametrize("chunk", [0, 4])
def test_scores_equal_forward_details_slice_by_slice(chunk):
    net = _net(slice_chunk_size=chunk)
    volume = torch.rand(2, 1, 32, 32, 6)
    all_classes, positive = SliceScorer(net), SliceScorer(net, class_index=1)
    with torch.no_grad():
        expected = net.forward_details(volume)["slice_scores"]  # (B, D, C)
        for b in range(2):
            for d in range(6):
                slice_ = volume[b : b + 1, :, :, :, d]  # (1, 1, H, W): slice d of volume b
                torch.testing.assert_close(all_classes(slice_)[0], expected[b, d])
                torch.testing.assert_close(positive(slice_)[0], expected[b, d, 1:2])
        # a stack of all slices at once (the layout forward_details itself uses)
        stacked = volume.permute(0, 4, 1, 2, 3).reshape(12, 1, 32, 32)
        torch.testing.assert_close(all_classes(stacked), expected.reshape(12, 2))
    assert positive(stacked).shape == (12, 1) and positive.num_classes == 1 and all_classes.num_classes == 2


def test_gradient_equals_gradient_of_the_volume_slice_score():
    """What a gradient explainer sees through the scorer is d s_c / d slice inside the volume."""
    net = _net()
    volume = torch.rand(1, 1, 32, 32, 5, requires_grad=True)
    net.forward_details(volume)["slice_scores"][0, 3, 1].backward()
    slice_ = volume.detach()[..., 3].clone().requires_grad_(True)
    SliceScorer(net, class_index=1)(slice_)[0, 0].backward()
    torch.testing.assert_close(slice_.grad, volume.grad[..., 3])
    assert float(volume.grad[..., [0, 1, 2, 4]].abs().max()) == 0.0  # slices are scored on their own


def test_dropout_is_always_off():
    """Eval-mode dropout: with the EDM in train mode (dropout 0.7) the scorer still gives the eval scores."""
    net = _net(dropout=0.7)
    x = torch.rand(4, 1, 32, 32)
    scorer = SliceScorer(net)
    with torch.no_grad():
        reference = scorer(x)
        eval_scores = net.forward_details(x[..., None].permute(4, 1, 2, 3, 0))["slice_scores"][0]
        net.edm.train()
        torch.manual_seed(1)
        noisy = net.forward_details(x[..., None].permute(4, 1, 2, 3, 0))["slice_scores"][0]
        torch.testing.assert_close(scorer(x), reference)
    torch.testing.assert_close(reference, eval_scores)
    assert not torch.allclose(noisy, eval_scores)  # the network's own forward does drop channels


def test_gradcam_of_the_scorer_is_the_edm_map():
    """Grad-CAM at the trunk output of a GAP + 1x1-conv head is the class map without its bias, / (h w)
    (Selvaraju et al. sec. 3.1: Grad-CAM generalises CAM), here the EDM map A_c of seed 003 eq. 3."""
    net = _net()
    x = torch.rand(3, 1, 32, 32)
    scorer = SliceScorer(net, class_index=None)
    maps = GradCAM(scorer, "network.trunk")(x, target=1)
    with torch.no_grad():
        a1 = scorer.activation_maps(x)[:, 1:2]  # (3, 1, 8, 8)
        h, w = a1.shape[2:]
        expected = upsample_map(torch.relu(a1 - net.edm.conv.bias[1]) / (h * w), (32, 32))
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_errors_name_the_problem():
    net = _net()
    with pytest.raises(InputError, match=r"class_index must be in \[0, 2\), got 2"):
        SliceScorer(net, class_index=2)
    with pytest.raises(InputError, match="CTMILNet-like network"):
        SliceScorer(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(InputError, match=r"slices \(N, 1, H, W\), got shape \[1, 1, 32, 32, 4\]"):
        SliceScorer(net)(torch.rand(1, 1, 32, 32, 4))
