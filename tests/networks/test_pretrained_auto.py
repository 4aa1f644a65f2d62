"""``pretrained="auto"``: ImageNet weights from the local cache when present, else a WARNING and random
initialisation; never a download (seed 004 fine-tunes ImageNet weights; this machine has no network)."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision.models as tvm

from medxai.errors import InputError
from medxai.networks import ImageClassifier
from medxai.networks.backbones import cached_weights_file, create_backbone


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to fetch weights over the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_auto_loads_a_saved_state_dict_from_the_torch_hub_cache(tmp_path, monkeypatch, no_download, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = tvm.resnet18(weights=None)
    torch.nn.init.normal_(reference.layer4[1].conv2.weight)  # not what a fresh init would give
    url_name = tvm.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    target = tmp_path / "hub" / "checkpoints" / url_name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    assert cached_weights_file("resnet18") == target
    with caplog.at_level(logging.INFO, logger="medxai.networks.backbones"):
        model = ImageClassifier("resnet18", num_classes=2, in_channels=3, pretrained="auto")
    assert str(target) in caplog.text and "RANDOM" not in caplog.text
    for name, value in reference.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.trunk.state_dict()[name], value), name
    # the same image through the reference trunk and ours: identical features
    x = torch.randn(1, 3, 64, 80)
    reference.eval(), model.eval()
    expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
        reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
    torch.testing.assert_close(model.features(x), expected)


def test_auto_with_an_empty_cache_warns_and_initialises_randomly_without_downloading(
    tmp_path, monkeypatch, no_download, caplog
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in ("densenet201", "squeezenet1_0", "xception"):
        caplog.clear()
        assert cached_weights_file(name) is None
        with caplog.at_level(logging.INFO, logger="medxai.networks.backbones"):
            create_backbone(name, in_channels=3, pretrained="auto")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "RANDOM INITIALISATION" in warnings[0].getMessage(), caplog.text
        assert name in warnings[0].getMessage()


def test_auto_on_a_trunk_without_published_weights_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="medxai.networks.backbones"):
        create_backbone("tiny", in_channels=3, pretrained="auto")
    assert "no published ImageNet weights" in caplog.text


def test_other_strings_are_refused():
    with pytest.raises(InputError, match="True, False or 'auto'"):
        create_backbone("tiny", pretrained="yes")
