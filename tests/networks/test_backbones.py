"""Backbone registry: trunk shapes, local weights (strict trunk keys, first conv = RGB channel sum), opt-in ImageNet."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torchvision.models as tvm

from medxai.errors import InputError
from medxai.networks import TinyTrunk, create_backbone, list_backbones
from medxai.networks.backbones import _get_spec


def _full_model(name: str) -> torch.nn.Module:
    """The full 3-channel classification model a user would have saved for backbone ``name``."""
    if name.startswith("monai_"):
        from monai.networks import nets

        if name == "monai_densenet121":
            return nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=5)
        return getattr(nets, name[len("monai_") :])(spatial_dims=2, n_input_channels=3, num_classes=5)
    if name == "xception":
        import timm

        return timm.create_model("legacy_xception", num_classes=5)
    return tvm.get_model(name, weights=None, num_classes=5)


def _first_conv_key(name: str) -> str:
    return f"{_get_spec(name).first_conv}.weight"


def test_registry_lists_the_seed_004_networks_and_the_tiny_trunk():
    names = set(list_backbones())
    seed_004 = {
        "squeezenet1_0", "shufflenet_v2_x1_0", "resnet18", "resnet50", "resnet101", "resnext50_32x4d",
        "resnext101_32x8d", "inception_v3", "xception", "densenet121", "densenet169", "densenet201",
    }  # fmt: skip
    assert seed_004 <= names
    assert {"tiny", "resnet34", "vgg16", "vgg19", "monai_resnet50", "monai_densenet121"} <= names


@pytest.mark.parametrize(
    "name, size, k, h",
    [("resnet18", 64, 512, 2), ("densenet121", 64, 1024, 2), ("squeezenet1_1", 64, 512, 3), ("tiny", 32, 32, 8)],
)
def test_trunk_maps_slices_to_feature_maps(name, size, k, h):
    trunk, num_features = create_backbone(name, in_channels=1)
    out = trunk.eval()(torch.randn(2, 1, size, size))
    assert num_features == k
    assert tuple(out.shape) == (2, k, h, h)


def test_resnet18_trunk_equals_torchvision_features_before_pooling(tmp_path):
    """With the same weights, the trunk is exactly torchvision's ResNet up to layer4 (fc input = GAP of it)."""
    full = tvm.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(full.state_dict(), path)
    trunk, _ = create_backbone("resnet18", in_channels=3, pretrained_path=path)
    x = torch.randn(2, 3, 64, 64)
    captured = {}

    def keep_input(module, inputs, output):
        captured["maps"] = inputs[0]

    full.avgpool.register_forward_hook(keep_input)
    logits = full(x)
    maps = trunk.eval()(x)
    torch.testing.assert_close(maps, captured["maps"])
    torch.testing.assert_close(full.fc(maps.mean(dim=(2, 3))), logits)


def test_local_resnet18_weights_load_and_first_conv_is_rgb_channel_sum(tmp_path):
    saved = tvm.resnet18(weights=None, num_classes=7).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    trunk, _ = create_backbone("resnet18", in_channels=1, pretrained_path=path)
    loaded = trunk.state_dict()
    assert loaded["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(loaded["conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    trunk_keys = set(loaded) - {"conv1.weight"}
    assert trunk_keys == {k for k in saved if not k.startswith("fc.")} - {"conv1.weight"}
    for key in trunk_keys:
        assert torch.equal(loaded[key], saved[key]), key


def test_grey_slice_gives_the_rgb_model_response_on_the_replicated_slice(tmp_path):
    """Summing the RGB filters is exact for grey images: trunk_1ch(g) == trunk_3ch([g, g, g])."""
    path = tmp_path / "resnet18.pt"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    grey, _ = create_backbone("resnet18", in_channels=1, pretrained_path=path)
    rgb, _ = create_backbone("resnet18", in_channels=3, pretrained_path=path)
    g = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(grey.eval()(g), rgb.eval()(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["densenet121", "squeezenet1_1", "shufflenet_v2_x1_0", "monai_resnet18", "monai_densenet121", "xception"]
)
def test_first_conv_and_classifier_names_fit_each_family(name, tmp_path):
    saved = _full_model(name).state_dict()
    path = tmp_path / f"{name}.pt"
    torch.save({"state_dict": saved}, path)  # a wrapped checkpoint is unwrapped
    trunk, _ = create_backbone(name, in_channels=1, pretrained_path=path)
    conv_key = _first_conv_key(name)
    loaded = trunk.state_dict()
    torch.testing.assert_close(loaded[conv_key], saved[conv_key].sum(dim=1, keepdim=True))
    for key, value in loaded.items():
        if key != conv_key:
            assert torch.equal(value, saved[key]), key


def test_legacy_densenet_keys_and_dataparallel_prefix_are_accepted(tmp_path):
    saved = tvm.densenet121(weights=None).state_dict()
    legacy = {}
    for key, value in saved.items():  # torchvision's published densenet files: old names, no batch counters
        if not key.endswith("num_batches_tracked"):
            legacy["module." + re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)] = value
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121_legacy.pt"
    torch.save(legacy, path)
    trunk, _ = create_backbone("densenet121", in_channels=3, pretrained_path=path)
    for key, value in trunk.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # filled in by BatchNorm's loader, as for torchvision
            assert torch.equal(value, saved[key]), key


def test_three_channel_weights_into_two_channels_repeat_and_rescale(tmp_path):
    saved = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    trunk, _ = create_backbone("resnet18", in_channels=2, pretrained_path=path)
    expected = saved["conv1.weight"][:, :2] * 1.5  # timm.adapt_input_conv: repeat, scale by 3 / in_channels
    torch.testing.assert_close(trunk.state_dict()["conv1.weight"], expected)


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    saved = tvm.resnet18(weights=None).state_dict()
    missing = {k: v for k, v in saved.items() if not k.startswith("layer4.1.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(InputError, match=r"missing trunk keys \['layer4\.1\."):
        create_backbone("resnet18", pretrained_path=tmp_path / "missing.pt")
    extra = dict(saved, **{"projection.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(InputError, match=r"unexpected keys \['projection\.weight'\]"):
        create_backbone("resnet18", pretrained_path=tmp_path / "extra.pt")
    torch.save(tvm.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(InputError, match="resnet18"):
        create_backbone("resnet18", pretrained_path=tmp_path / "resnet34.pt")
    with pytest.raises(InputError, match="not a file"):
        create_backbone("resnet18", pretrained_path=tmp_path / "absent.pt")


def test_pretrained_true_goes_through_torchvision_weights(monkeypatch, tmp_path):
    """``pretrained=True`` loads torchvision's DEFAULT weights via its own loader (network replaced here)."""
    saved = tvm.resnet18(weights=None).state_dict()
    requested = []

    def fake_download(url, *args, **kwargs):
        requested.append(url)
        return {k: v.clone() for k, v in saved.items()}

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake_download)
    trunk, _ = create_backbone("resnet18", in_channels=1, pretrained=True)
    assert requested == [tvm.ResNet18_Weights.DEFAULT.url]
    torch.testing.assert_close(trunk.state_dict()["conv1.weight"], saved["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(trunk.state_dict()["layer3.0.bn2.running_var"], saved["layer3.0.bn2.running_var"])


def test_default_is_random_init_logged_and_pretrained_refused_without_weights(caplog):
    with caplog.at_level(logging.INFO, logger="medxai.networks.backbones"):
        trunk, _ = create_backbone("tiny")
    assert isinstance(trunk, TinyTrunk)
    assert "random initialisation" in caplog.text
    with pytest.raises(InputError, match="no published ImageNet weights"):
        create_backbone("tiny", pretrained=True)


def test_timm_prefix_and_unknown_names():
    trunk, k = create_backbone("timm:resnet18", in_channels=1)
    assert k == 512 and tuple(trunk.eval()(torch.randn(1, 1, 32, 32)).shape) == (1, 512, 1, 1)
    with pytest.raises(InputError, match="unknown backbone 'resnet7'.*resnet18"):
        create_backbone("resnet7")
    with pytest.raises(InputError, match="timm has no model 'not_a_net'"):
        create_backbone("timm:not_a_net")
    with pytest.raises(InputError, match="in_channels must be >= 1"):
        create_backbone("tiny", in_channels=0)


def test_small_resnet_demo_trunk_is_resnet_blocks_at_stride_8():
    from torchvision.models.resnet import BasicBlock

    from medxai.networks.backbones import create_backbone, list_backbones

    assert "small_resnet" in list_backbones()
    trunk, k = create_backbone("small_resnet", in_channels=1)
    assert k == 64
    assert all(isinstance(getattr(trunk, f"layer{i}"), BasicBlock) for i in (1, 2, 3))
    out = trunk(torch.rand(2, 1, 96, 64))
    assert out.shape == (2, 64, 12, 8)
    # translation equivariance at stride 8: shifting the input by 8 px shifts the output by one cell
    # (compared away from the zero-padded borders, which the receptive field reaches)
    trunk.eval()
    x = torch.rand(1, 1, 256, 256)
    a = trunk(x)[..., 12:-12, 12:-12]
    b = trunk(torch.roll(x, shifts=8, dims=3))[..., 12:-12, 13:-11]
    assert torch.allclose(a, b, atol=1e-5)
