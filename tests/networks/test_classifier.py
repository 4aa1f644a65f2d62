"""ImageClassifier (seed 002 sec. II-B): the head is torchvision's for ResNet / DenseNet (same logits with the
same weights), VGG's is GAP + one linear layer (hand-counted parameters), dropout, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from medxai.errors import InputError
from medxai.networks import ImageClassifier, list_backbones

#: torchvision's first convolution and classifier attribute per family
FIRST_CONV = {"resnet18": "conv1", "densenet161": "features.conv0"}
HEAD = {"resnet18": "fc", "densenet161": "classifier"}


def trained_like_batch_norm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training (fresh ones are near identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def grey_torchvision(model: nn.Module, first_conv: str) -> nn.Module:
    """``model`` with its RGB first convolution replaced by a one-channel one holding the sum of the RGB filters."""
    parent_name, _, attr = first_conv.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    rgb = getattr(parent, attr)
    grey = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=rgb.bias is not None)
    with torch.no_grad():
        grey.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
    setattr(parent, attr, grey)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "densenet161"])
def test_logits_equal_torchvision_with_the_same_weights(arch: str, tmp_path: Path) -> None:
    """A saved torchvision RGB model loaded through ``pretrained_path`` (RGB filters summed for one channel) plus
    its fc copied into ``classifier`` gives torchvision's logits on grey images: for DenseNet the registered trunk
    ends with torchvision's final ReLU, so the head is exactly avgpool + linear in both families."""
    torch.manual_seed(0)
    full = trained_like_batch_norm(tvm.get_model(arch, weights=None, num_classes=3))
    path = tmp_path / f"{arch}.pt"
    torch.save(full.state_dict(), path)
    model = ImageClassifier(arch, num_classes=3, in_channels=1, pretrained_path=path).eval()
    model.classifier.load_state_dict(getattr(full, HEAD[arch]).state_dict())
    reference = grey_torchvision(full, FIRST_CONV[arch]).eval()
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert model.num_features == {"resnet18": 512, "densenet161": 2208}[arch]
    assert float(theirs.abs().amax()) > 0.1  # the comparison is not between near-zero logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_densenet_trunk_ends_with_torchvision_final_relu() -> None:
    model = ImageClassifier("densenet121", num_classes=3)
    last_name, last = list(model.trunk.named_children())[-1]
    assert last_name == "relu" and isinstance(last, nn.ReLU)
    assert isinstance(model.trunk.features[-1], nn.BatchNorm2d)  # features ends with norm5, as in torchvision
    assert "densenet161" in list_backbones()


def test_vgg16_head_is_gap_plus_one_linear_layer() -> None:
    """Hand count: VGG-16's 13 convolutions hold 14,714,688 parameters for RGB input, 1,152 fewer
    (64 filters x 2 channels x 3 x 3) for one channel; the head is 512 * 3 + 3 instead of torchvision's
    119,558,147 (25088-4096-4096-3)."""
    model = ImageClassifier("vgg16", num_classes=3, in_channels=1)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.trunk) == 14_714_688 - 1_152
    assert count(model) == count(model.trunk) + 512 * 3 + 3 == 14_715_075
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        features = model.trunk(x)
        expected = features.mean(dim=(2, 3)) @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    assert tuple(features.shape) == (2, 512, 2, 2)


def test_dropout_acts_on_pooled_features_in_training_only() -> None:
    model = ImageClassifier("tiny", num_classes=4, dropout=0.5)
    features = torch.rand(3, 32, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    pooled = features.mean(dim=(2, 3))
    model.eval()
    torch.testing.assert_close(model.head(features), model.classifier(pooled))
    model.train()
    torch.manual_seed(7)
    dropped = model.head(features)
    torch.manual_seed(7)
    expected = model.classifier(F.dropout(pooled, p=0.5, training=True))
    torch.testing.assert_close(dropped, expected)
    assert not torch.allclose(dropped, model.classifier(pooled))


def test_gradcam_layer_names_the_trunk() -> None:
    model = ImageClassifier("tiny", num_classes=2)
    assert ImageClassifier.gradcam_layer == "trunk"
    assert model.get_submodule(model.gradcam_layer) is model.trunk


def test_pretrained_reaches_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = tvm.resnet18(weights=None).state_dict()
    fake_download = lambda url, *args, **kwargs: {n: v.clone() for n, v in saved.items()}  # noqa: E731
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake_download)
    model = ImageClassifier("resnet18", num_classes=3, pretrained=True)
    torch.testing.assert_close(model.trunk.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
        ({"num_classes": 2.5}, r"num_classes must be an integer >= 2, got 2\.5"),
        ({"num_classes": True}, r"num_classes must be an integer >= 2, got True"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0\.1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1\.0"),
        ({"backbone": "vgg7"}, r"unknown backbone 'vgg7'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ImageClassifier(**{"backbone": "tiny", **kwargs})


def test_input_of_the_wrong_shape_is_refused() -> None:
    model = ImageClassifier("tiny", num_classes=2, in_channels=1)
    with pytest.raises(InputError, match=r"expects images \(B, 1, H, W\), got shape \[2, 3, 16, 16\]"):
        model(torch.zeros(2, 3, 16, 16))
