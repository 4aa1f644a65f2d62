"""Sub-pixel U-Net (seed 003 sec. 3.3.1, Fig. 9, eq. 13): the eq. 13 decoder level by hand, the skip layout,
the real ResNet-50 encoder and its local weights, input checks, training on discs, TorchScript, the bottleneck hook."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from monai.data import MetaTensor
from monai.losses import DiceCELoss

from medxai.errors import InputError
from medxai.networks import (
    CXRNet,
    SubpixelDecoder,
    SubpixelDecoderBlock,
    SubpixelUNet,
    create_backbone,
    split_trunk_stages,
)
from medxai.networks.cxrnet import CXRDecoderBlock


def _torchvision_key(encoder_key: str) -> str:
    """``encoder.state_dict()`` key -> torchvision ResNet key.

    ``"1.layer1_0.conv1.weight"`` -> ``"layer1.0.conv1.weight"``.
    """
    key = re.sub(r"^\d+\.", "", encoder_key)
    return re.sub(r"^(layer\d)_(\d+)\.", r"\1.\2.", key)


def _shuffle_by_hand(t: torch.Tensor, r: int) -> torch.Tensor:
    """SP of eq. 13, (B, C r^2, h, w) -> (B, C, r h, r w).

    ``out[b, c, r i + u, r j + v] = t[b, c r^2 + r u + v, i, j]``.
    """
    b, crr, h, w = t.shape
    c = crr // (r * r)
    return t.reshape(b, c, r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, r * h, r * w)


def _disc_images(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images (n, 1, size, size) with one bright disc each (radius 4-8) and its mask (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        radius = 4 + 4 * torch.rand((), generator=g)
        cy, cx = (radius + (size - 2 * radius) * torch.rand(2, generator=g)).tolist()
        mask = ((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2).float()
        images.append(0.3 * torch.rand(size, size, generator=g) + 0.6 * mask)
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def test_decoder_level_is_a_convolution_then_pixel_shuffle_eq13_and_starts_as_nearest_neighbour():
    torch.manual_seed(0)
    block = SubpixelDecoderBlock(in_channels=6, skip_channels=0, out_channels=5)
    assert CXRDecoderBlock is SubpixelDecoderBlock  # CXRNet's decoder level is this block
    conv = block.upsample.conv_block
    assert conv.weight.shape == (5 * 4, 6, 3, 3) and torch.count_nonzero(conv.bias) == 0
    x = torch.randn(2, 6, 7, 9)
    up = block.upsample(x)
    assert up.shape == (2, 5, 14, 18)
    # eq. 13, F_L = SP(W_L * F_{L-1} + b_L), from the block's own weights
    pre = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(up, _shuffle_by_hand(pre, 2))
    torch.testing.assert_close(up, F.pixel_shuffle(pre, 2))
    # ICNR + zero bias: every 2x2 output block is one value (nearest-neighbour upsampling of a convolution)
    top_left = up[..., 0::2, 0::2]
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        torch.testing.assert_close(up[..., dy::2, dx::2], top_left)
    assert top_left.std() > 0.1  # not trivially constant
    # eq. 13 holds for any weights, not only at initialisation; after training the 2x2 blocks differ
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    up = block.upsample(x)
    torch.testing.assert_close(up, _shuffle_by_hand(F.conv2d(x, conv.weight, conv.bias, padding=1), 2))
    assert not torch.allclose(up[..., 1::2, 1::2], up[..., 0::2, 0::2])
    # the full level: ReLU on [upsampled, skip], then two conv-BN-LeakyReLU(0.1) blocks
    with_skip = SubpixelDecoderBlock(6, 3, 5).eval()
    skip = torch.randn(2, 3, 14, 18)
    assert with_skip.conv1.conv.in_channels == 5 + 3
    expected = with_skip.conv2(with_skip.conv1(torch.relu(torch.cat([with_skip.upsample(x), skip], 1))))
    torch.testing.assert_close(with_skip(x, skip), expected)
    assert with_skip.conv1.adn.A.negative_slope == 0.1


@pytest.mark.parametrize(
    "strides, channels, skips, skip_channels",
    [
        ([2, 4, 8, 16, 32], [64, 256, 512, 1024, 2048], [3, 2, 1, 0, -1], [1024, 512, 256, 64, 1]),  # ResNet-50
        ([1, 2, 4, 8], [8, 16, 32, 64], [2, 1, 0], [32, 16, 8]),  # small_resnet: a full-resolution stage
        ([4, 16], [10, 20], [-2, 0, -2, -1], [0, 10, 0, 1]),  # gaps: no skip where no stage has that stride
    ],
)
def test_decoder_has_one_level_per_halving_with_the_last_map_at_each_stride_as_skip(
    strides, channels, skips, skip_channels
):
    torch.manual_seed(0)
    decoder = SubpixelDecoder(strides, channels, in_channels=1).eval()
    assert len(decoder) == len(skips) and decoder.skip_index == skips
    widths = [256, 128, 64, 32, 16][5 - len(skips) :]
    assert [b.conv2.conv.out_channels for b in decoder] == widths and decoder.out_channels == 16
    assert [b.conv1.conv.in_channels - w for b, w in zip(decoder, widths)] == skip_channels
    h = w = 2 * strides[-1]
    features = [torch.randn(2, c, h // s, w // s) for s, c in zip(strides, channels)]
    x = torch.randn(2, 1, h, w)
    with torch.no_grad():
        out = decoder(features, x)
        # the same levels run by hand
        expected = features[-1]
        for block, index in zip(decoder, skips):
            expected = block(expected, None if index == -2 else x if index == -1 else features[index])
    assert out.shape == (2, 16, h, w)
    torch.testing.assert_close(out, expected)
    assert isinstance(decoder[1:], torch.nn.ModuleList) and len(decoder[1:]) == len(skips) - 1


def test_decoder_refuses_bad_strides_and_too_few_widths():
    with pytest.raises(InputError, match=r"encoder strides \[3, 6\].*increasing powers of two"):
        SubpixelDecoder([3, 6], [8, 8], 1)
    with pytest.raises(InputError, match=r"total stride 8 needs 3 positive decoder widths, got \[8, 8\]"):
        SubpixelDecoder([2, 8], [8, 8], 1, decoder_channels=(8, 8))
    with pytest.raises(InputError, match="needs 2 positive decoder widths"):
        SubpixelDecoder([2, 4], [8, 8], 1, decoder_channels=(8, 0))


@pytest.fixture(scope="module")
def resnet50_unet() -> SubpixelUNet:
    torch.manual_seed(0)
    return SubpixelUNet("resnet50", in_channels=3, out_channels=3).eval()


def test_resnet50_unet_has_five_levels_full_size_logits_and_the_real_resnet50_encoder(resnet50_unet):
    net = resnet50_unet
    assert net.stage_strides == [2, 4, 8, 16, 32] and net.size_divisor == 32 and net.num_features == 2048
    assert len(net.decoder) == 5 and net.decoder.skip_index == [3, 2, 1, 0, -1]
    assert [b.conv2.conv.out_channels for b in net.decoder] == [256, 128, 64, 32, 16]
    assert (net.head.in_channels, net.head.out_channels, net.head.kernel_size) == (16, 3, (1, 1))
    reference = tvm.resnet50(weights=None)
    fc = sum(p.numel() for p in reference.fc.parameters())
    encoder = sum(p.numel() for p in net.encoder.parameters())
    assert encoder == sum(p.numel() for p in reference.parameters()) - fc == 23_508_032
    assert {_torchvision_key(k) for k in net.encoder.state_dict()} == {
        k for k in reference.state_dict() if not k.startswith("fc.")
    }
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        logits = net(x)
        features = net.encode(x)
        decoded = net.decoder(features, x)
    assert logits.shape == (2, 3, 64, 96) and decoded.shape == (2, 16, 64, 96)
    torch.testing.assert_close(logits, net.head(decoded))  # the 1x1 head's logits, no activation
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 48), (256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 2, 3)
    ]  # fmt: skip


def test_latent_layer_hook_captures_the_bottleneck(resnet50_unet):
    net = resnet50_unet
    assert net.latent_layer == "encoder.4"
    captured = []
    handle = net.get_submodule(net.latent_layer).register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(2, 3, 64, 64)
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    assert len(captured) == 1 and captured[0].shape == (2, 2048, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(captured[0], net.encode(x)[-1])


def test_local_resnet50_weights_reach_the_encoder_exactly(tmp_path):
    torch.manual_seed(0)
    reference = tvm.resnet50(weights=None)
    with torch.no_grad():
        reference.layer4[2].conv3.weight.normal_()  # not what a fresh initialisation gives
        reference.bn1.running_mean.uniform_()
    saved = reference.state_dict()
    path = tmp_path / "resnet50.pt"
    torch.save(saved, path)
    net = SubpixelUNet("resnet50", in_channels=3, out_channels=2, pretrained_path=path).eval()
    state = net.encoder.state_dict()
    assert len(state) == len(saved) - 2  # every key but fc.weight / fc.bias
    for key, value in state.items():
        assert torch.equal(value, saved[_torchvision_key(key)]), key
    # the same image through torchvision's ResNet-50 and our encoder: the same bottleneck
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        r = reference
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        torch.testing.assert_close(net.encode(x)[-1], expected)
    # a grey input gets the RGB filters summed; the default is random initialisation
    grey = SubpixelUNet("resnet50", in_channels=1, out_channels=2, pretrained_path=path)
    torch.testing.assert_close(grey.encoder[0].conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(grey.encoder[4].layer4_2.conv3.weight, saved["layer4.2.conv3.weight"])
    fresh = SubpixelUNet("resnet50", in_channels=1, out_channels=2)
    assert not torch.equal(fresh.encoder[4].layer4_2.conv3.weight, saved["layer4.2.conv3.weight"])


def test_bad_inputs_and_unsupported_trunks_are_named():
    net = SubpixelUNet("resnet18", in_channels=1, out_channels=2)
    with pytest.raises(InputError, match=r"SubpixelUNet: input size 48x64 is not a multiple of 32.*e\.g\. to 64x64"):
        net(torch.rand(1, 1, 48, 64))
    with pytest.raises(InputError, match=r"input size 32x100 is not a multiple of 32.*e\.g\. to 32x96"):
        net(torch.rand(1, 1, 32, 100))
    with pytest.raises(InputError, match=r"SubpixelUNet expects images \(B, 1, H, W\), got shape \[1, 3, 64, 64\]"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match=r"got shape \[1, 64, 64\]"):
        net(torch.rand(1, 64, 64))
    with pytest.raises(InputError, match="SubpixelUNet: backbone 'squeezenet1_0' layer .* power-of-two stride"):
        SubpixelUNet("squeezenet1_0")
    with pytest.raises(InputError, match="SubpixelUNet: backbone 'small_resnet' needs 3 positive decoder widths"):
        SubpixelUNet("small_resnet", decoder_channels=(8, 8))
    with pytest.raises(InputError, match="out_channels must be >= 1, got 0"):
        SubpixelUNet("small_resnet", out_channels=0)
    # the shared helpers name their caller: CXRNet's messages keep their prefix
    with pytest.raises(InputError, match="^CXRNet: backbone 'squeezenet1_0'"):
        CXRNet("squeezenet1_0")
    trunk, _ = create_backbone("squeezenet1_0")
    with pytest.raises(InputError, match="^network: backbone 'trunk'"):
        split_trunk_stages(trunk, 1)


def test_learns_to_segment_discs():
    torch.manual_seed(0)
    x, y = _disc_images(8, seed=0)
    x_test, y_test = _disc_images(4, seed=1)
    net = SubpixelUNet("small_resnet", in_channels=1, out_channels=2)  # decoder widths (64, 32, 16)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    net.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    torch.optim.swa_utils.update_bn([x], net)  # running BatchNorm statistics for the final weights
    net.eval()
    with torch.no_grad():
        pred = net(x_test).argmax(1, keepdim=True).float()
    dice = 2 * (pred * y_test).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + y_test.sum((1, 2, 3)))
    assert dice.min() > 0.8, dice


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_matches_eager_and_metatensor_input_is_accepted():
    torch.manual_seed(0)
    net = SubpixelUNet("small_resnet", in_channels=2, out_channels=3).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 2, 16, 24)
    with torch.no_grad():
        eager = net(x)
        torch.testing.assert_close(scripted(x), eager)
        for a, b in zip(scripted.encode(x), net.encode(x)):
            torch.testing.assert_close(a, b)
        meta = net(MetaTensor(x, meta={"filename_or_obj": "case.nii.gz"}))
    assert type(meta) is torch.Tensor and eager.shape == (2, 3, 16, 24)
    torch.testing.assert_close(meta, eager)
    assert scripted.latent_layer == "encoder.3" and scripted.size_divisor == 8
    with pytest.raises(Exception, match="not a multiple of 8"):
        scripted(torch.rand(1, 2, 12, 16))


def test_cxrnet_runs_on_the_shared_decoder_with_its_old_state_dict_keys():
    net = CXRNet("small_resnet", num_classes=2).eval()
    assert isinstance(net.decoder, SubpixelDecoder) and net.skip_index == net.decoder.skip_index == [2, 1, 0]
    keys = net.state_dict().keys()
    assert "decoder.0.upsample.conv_block.weight" in keys and "decoder.2.conv2.conv.weight" in keys
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        features = net.encode(x)
        expected = torch.sigmoid(net.reconstruction_head(net.decoder(features, x)))
        torch.testing.assert_close(net.decode(features, x), expected)
