"""CXRNet representation image through the explainer interface: values, output selection, 2D/3D, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.reconstruction import RepresentationImage
from medxai.explain.registry import create_explainer


class ToyEncoderDecoder(nn.Module):
    """Logits from pooled features; a 'decoder' whose two output channels are x + 1 and 3x - 1 (mean 2x)."""

    def __init__(self, as_dict: bool = False, shrink: bool = False) -> None:
        super().__init__()
        self.as_dict, self.shrink = as_dict, shrink
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        logits = self.fc(x.flatten(2).mean(2))
        image = torch.cat([x + 1, 3 * x - 1], dim=1)
        if self.shrink:
            image = image[..., ::2]
        return {"logits": logits, "representation": image} if self.as_dict else (logits, image)


def test_map_is_the_channel_mean_of_the_reconstruction() -> None:
    x = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    maps = RepresentationImage(ToyEncoderDecoder())(x)
    torch.testing.assert_close(maps, torch.tensor([[[[1.0, -2.0], [4.0, 0.0]]]]))  # (x + 1 + 3x - 1) / 2 = 2x
    assert not maps.requires_grad


def test_dict_outputs_3d_and_batches() -> None:
    model = ToyEncoderDecoder(as_dict=True)
    explainer = create_explainer("representation", model, image_key="representation", logits_key="logits")
    x = torch.randn(3, 1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # as inside a MONAI evaluator
        maps = explainer(x, [0, 1, 0])
    torch.testing.assert_close(maps, 2 * x)
    torch.testing.assert_close(maps, torch.cat([explainer(x[i : i + 1], 0) for i in range(3)]))


def test_targets_are_checked_and_sizes_must_match() -> None:
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(InputError, match="target class 2 of sample 0 is outside"):
        RepresentationImage(ToyEncoderDecoder())(x, 2)
    with pytest.raises(InputError, match=r"has shape \(2, 2, 4, 2\); expected \(B=2, C, 4, 4\)"):
        RepresentationImage(ToyEncoderDecoder(shrink=True))(x)
    with pytest.raises(InputError, match="no key 'image'"):
        RepresentationImage(ToyEncoderDecoder(as_dict=True), image_key="image", logits_key="logits")(x)
    # without logits the map is still returned (the representation image is class-agnostic)
    maps = RepresentationImage(ToyEncoderDecoder(), logits_key=None)(x + 1.0)
    torch.testing.assert_close(maps, torch.full((2, 1, 4, 4), 2.0))


def test_cxrnet_map_is_its_reconstruction_although_forward_returns_logits_only():
    from medxai.networks import CXRNet

    torch.manual_seed(0)
    network = CXRNet("small_resnet", 4, decoder_channels=(8, 8, 8)).eval()
    x = torch.rand(2, 1, 16, 16)
    maps = RepresentationImage(network, image_key="reconstruction", logits_key="logits")(x, 3)
    with torch.no_grad():
        expected = network.forward_details(x)["reconstruction"]
    torch.testing.assert_close(maps, expected)
    assert network(x).shape == (2, 4)  # the plain forward still gives the logits
