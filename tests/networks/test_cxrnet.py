"""CXRNet (seed 001 Fig. 4-5): encoder stages, ICNR pixel-shuffle decoder, shared second encoder, training, weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

from medxai.errors import InputError
from medxai.losses import FusionLoss
from medxai.networks import CXRNet, create_backbone
from medxai.networks.cxrnet import CXRDecoderBlock


def _blob_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise images (n, 1, 32, 32); odd-indexed ones (class 1) carry a bright 6x6 blob at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, 1, 32, 32, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i] == 1:
            r, c = torch.randint(4, 22, (2,), generator=g).tolist()
            x[i, 0, r : r + 6, c : c + 6] += 0.8
    return x, y


@pytest.mark.parametrize(
    "name, strides, skips",
    [("resnet34", [2, 4, 8, 16, 32], [3, 2, 1, 0, -1]), ("vgg16", [1, 2, 4, 8, 16, 32], [4, 3, 2, 1, 0])],
)
def test_paper_encoders_give_five_decoder_levels_and_a_full_size_reconstruction(name, strides, skips):
    torch.manual_seed(0)
    net = CXRNet(name, num_classes=4).eval()
    assert net.stage_strides == strides and net.skip_index == skips and net.size_divisor == 32
    assert len(net.decoder) == 5
    with torch.no_grad():
        out = net.forward_details(torch.rand(2, 1, 64, 96))
    assert out["logits"].shape == out["logits_reconstruction"].shape == (2, 4)
    assert out["reconstruction"].shape == (2, 1, 64, 96)
    assert 0 < out["reconstruction"].min() and out["reconstruction"].max() < 1  # sigmoid output
    # the decoder output widths are the paper-style (256, 128, 64, 32, 16)
    assert [block.conv2.conv.out_channels for block in net.decoder] == [256, 128, 64, 32, 16]


def test_encoder_stages_compose_to_the_factory_trunk(tmp_path):
    """Grouping the trunk's layers into stages changes nothing: the deepest stage equals the trunk output."""
    path = tmp_path / "resnet18.pt"
    torch.save(tvm.resnet18(weights=None, num_classes=3).state_dict(), path)
    trunk, _ = create_backbone("resnet18", in_channels=1, pretrained_path=path)
    net = CXRNet("resnet18", num_classes=3, pretrained_path=path).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features = net.encode(x)
        torch.testing.assert_close(features[-1], trunk.eval()(x))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_opt_in_local_weights_reach_the_encoder_and_default_is_random(tmp_path):
    saved = tvm.resnet18(weights=None, num_classes=7).state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    net = CXRNet("resnet18", num_classes=2, pretrained_path=path)
    state = net.encoder.state_dict()
    torch.testing.assert_close(state["0.conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["4.layer4_1.conv2.weight"], saved["layer4.1.conv2.weight"])
    assert torch.equal(state["1.layer1_0.bn1.running_var"], saved["layer1.0.bn1.running_var"])
    fresh = CXRNet("resnet18", num_classes=2).encoder.state_dict()
    assert not torch.equal(fresh["4.layer4_1.conv2.weight"], saved["layer4.1.conv2.weight"])
    small, _ = create_backbone("small_resnet")
    torch.save(small.state_dict(), tmp_path / "small.pt")
    net = CXRNet("small_resnet", num_classes=2, pretrained_path=tmp_path / "small.pt")
    assert torch.equal(net.encoder.state_dict()["3.layer3.conv1.weight"], small.state_dict()["layer3.conv1.weight"])


def test_small_trunk_has_fewer_levels_and_bad_sizes_are_named():
    net = CXRNet("small_resnet", num_classes=2)
    assert net.stage_strides == [1, 2, 4, 8] and net.size_divisor == 8 and net.skip_index == [2, 1, 0]
    assert [block.conv2.conv.out_channels for block in net.decoder] == [64, 32, 16]
    with pytest.raises(InputError, match="input size 36x32 is not a multiple of 8"):
        net(torch.rand(1, 1, 36, 32))
    with pytest.raises(InputError, match=r"expects images \(B, 1, H, W\)"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(InputError, match="input size 48x64 is not a multiple of 32"):
        CXRNet("resnet18", num_classes=2)(torch.rand(1, 1, 48, 64))
    with pytest.raises(InputError, match="inception_v3.*power-of-two stride"):
        CXRNet("inception_v3")
    with pytest.raises(InputError, match="needs 3 positive decoder widths"):
        CXRNet("small_resnet", decoder_channels=(8, 8))


def test_icnr_pixel_shuffle_starts_as_nearest_neighbour_upsampling():
    torch.manual_seed(0)
    block = CXRDecoderBlock(in_channels=6, skip_channels=0, out_channels=5)
    x = torch.randn(2, 6, 7, 9)
    pre_shuffle = block.upsample.conv_block(x)  # (2, 5 * 4, 7, 9): 4 sub-pixel channels per output channel
    up = block.upsample(x)
    assert up.shape == (2, 5, 14, 18)
    # ICNR: the 4 sub-pixel filters of an output channel are equal, so the shuffle repeats one value per 2x2
    torch.testing.assert_close(up, F.interpolate(pre_shuffle[:, ::4], scale_factor=2, mode="nearest"))
    for k in range(1, 4):
        torch.testing.assert_close(pre_shuffle[:, k::4], pre_shuffle[:, ::4])
    # blur=True: the same, then MONAI's zero pad (top/left) and 2x2 average pool with stride 1
    blurred = CXRDecoderBlock(6, 0, 5, blur=True)
    blurred.upsample.conv_block.load_state_dict(block.upsample.conv_block.state_dict())
    expected = F.avg_pool2d(F.pad(up, (1, 0, 1, 0)), kernel_size=2, stride=1)
    torch.testing.assert_close(blurred.upsample(x), expected)
    # inside the network too: every decoder level doubles the resolution with an ICNR-initialised shuffle
    net = CXRNet("small_resnet", num_classes=2)
    h = torch.randn(1, 64, 4, 4)
    for block in net.decoder:
        conv_out = block.upsample.conv_block(h)
        torch.testing.assert_close(
            block.upsample(h), F.interpolate(conv_out[:, :: 4], scale_factor=2, mode="nearest")
        )
        h = torch.randn(1, block.conv2.conv.out_channels, h.shape[2] * 2, h.shape[3] * 2)


def test_second_encoder_is_the_first_one_with_gradients_from_both_passes():
    torch.manual_seed(0)
    net = CXRNet("small_resnet", num_classes=3)
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    all_params = list(net.parameters())
    assert len({id(p) for p in all_params}) == len(all_params)  # one parameter set, nothing duplicated
    trunk, _ = create_backbone("small_resnet")
    assert sum(p.numel() for p in net.encoder.parameters()) == sum(p.numel() for p in trunk.parameters())
    assert net.classifier_reconstruction is None  # shared head by default
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    loss = FusionLoss()
    loss(net.forward_details(x), y).backward()
    shared = {n: p.grad.clone() for n, p in net.encoder.named_parameters()}

    # the same computation with the second encoder as a separate copy of the weights
    net.zero_grad()
    second = copy.deepcopy(net.encoder)
    features = net.encode(x)
    reconstruction = net.decode(features, x)
    h = reconstruction
    for stage in second:
        h = stage(h)
    details = {"logits": net.classify(features[-1]), "logits_reconstruction": net.classify(h, True)}
    loss(details, y).backward()
    second_grads = dict(second.named_parameters())
    for name, param in net.encoder.named_parameters():
        torch.testing.assert_close(shared[name], param.grad + second_grads[name].grad, rtol=1e-4, atol=1e-6)
    assert encoder_ids == {id(p) for p in net.encoder.parameters()}
    contribution = torch.cat([p.grad.flatten() for p in second.parameters()])
    assert contribution.abs().max() > 1e-4  # the second pass contributes a real share of the gradient


def test_separate_heads_option_and_forward_returns_the_first_encoder_logits():
    torch.manual_seed(0)
    net = CXRNet("small_resnet", num_classes=2, shared_head=False).eval()
    assert net.classifier_reconstruction is not None
    x = torch.rand(3, 1, 16, 24)
    with torch.no_grad():
        details = net.forward_details(x)
        torch.testing.assert_close(net(x), details["logits"])
        torch.testing.assert_close(net(x), net.classify(net.encode(x)[-1]))
        second = net.encode(details["reconstruction"])[-1]
        pooled = second.mean(dim=(2, 3))
        torch.testing.assert_close(details["logits_reconstruction"], net.classifier_reconstruction(pooled))
        assert set(net(x, return_details=True)) == {"logits", "logits_reconstruction", "reconstruction"}


def test_training_fits_blob_images_and_beats_chance_on_new_ones():
    torch.manual_seed(0)
    x, y = _blob_images(8, seed=0)
    x_new, y_new = _blob_images(16, seed=1)
    net = CXRNet("small_resnet", num_classes=2, return_details=True)
    loss_fn = FusionLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        net.train()
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    # 30 steps are too few for BatchNorm's running averages (momentum 0.1) to follow the fast-changing
    # weights: re-estimate them on the training inputs, as torch.optim.swa_utils.update_bn is made for
    net.return_details = False
    torch.optim.swa_utils.update_bn([x], net)
    net.eval()
    with torch.no_grad():
        train_pred = net(x, return_details=False).argmax(1)
        new_pred = net(x_new, return_details=False).argmax(1)
    assert torch.equal(train_pred, y)  # fits the training set in eval mode
    assert (new_pred == y_new).float().mean() >= 0.75  # chance is 0.5


def test_second_pass_keeps_the_running_statistics_of_the_inputs():
    net = CXRNet("small_resnet", num_classes=2).train()
    x = torch.rand(4, 1, 16, 16)
    net.forward_details(x)
    with_details = copy.deepcopy(net.encoder.state_dict())
    fresh = CXRNet("small_resnet", num_classes=2).train()
    fresh.load_state_dict(net.state_dict())
    net.forward_details(x)
    fresh(x)  # the encoder on the input alone
    for key, value in net.encoder.state_dict().items():
        torch.testing.assert_close(value, fresh.encoder.state_dict()[key])
    assert not torch.equal(with_details["0.bn1.running_mean"], net.encoder.state_dict()["0.bn1.running_mean"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = CXRNet("small_resnet", num_classes=2).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        eager, script = net.forward_details(x), scripted.forward_details(x)
        for key in eager:
            torch.testing.assert_close(script[key], eager[key])
        scripted.return_details = True
        assert set(scripted(x)) == set(eager)
