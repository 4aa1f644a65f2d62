"""CAM, EDM activation map, Grad-CAM and Grad-CAM++: hand-computed maps, reference libraries, 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.cam import CAM, EDMActivationMap, GradCAM, GradCAMPlusPlus, upsample_map
from medxai.explain.hooks import LayerCapture, resolve_layer
from medxai.explain.registry import create_explainer

# ---------------------------------------------------------------------------------------------------------------
# A tiny network with hand-set weights:  x (1, 2, 4, 4) -> conv 1x1 -> ReLU -> AvgPool 2 -> A (1, 2, 2, 2)
#                                        -> GAP -> linear -> logits (1, 2)
#   conv:   F0 = x0,  F1 = ReLU(x0 - x1)                      (weights [[1, 0], [1, -1]], no bias)
#   linear: y0 = a0 - a1 + 0.25,  y1 = -0.5 a0 + 2 a1 - 0.5    (a_k = mean of A_k)
# ---------------------------------------------------------------------------------------------------------------
X0 = [[1.0, 3, 0, 2], [1, 3, 2, 0], [4, 0, 1, 1], [0, 0, 1, 1]]
X1 = [[0.0, 1, 2, 2], [2, 1, 0, 0], [1, 1, -2, -2], [3, 3, 4, -2]]
# F1 = ReLU(x0 - x1) = [[1, 2, 0, 0], [0, 2, 2, 0], [3, 0, 3, 3], [0, 0, 0, 3]]; 2x2 block means:
A0 = [[2.0, 1.0], [1.0, 1.0]]  # x0 pooled
A1 = [[1.25, 0.5], [0.75, 2.25]]  # F1 pooled
# logits: mean(A0) = 1.25, mean(A1) = 1.1875 -> y0 = 0.3125, y1 = 1.25 (predicted class 1)
CAM0 = [[0.75, 0.5], [0.25, -1.25]]  # A0 - A1
CAM1 = [[1.5, 0.5], [1.0, 4.0]]  # -0.5 A0 + 2 A1
# ReLU(CAM0) = [[0.75, 0.5], [0.25, 0]] upsampled 2x2 -> 4x4 (align_corners=False: 1D weights
# [v0, 0.75 v0 + 0.25 v1, 0.25 v0 + 0.75 v1, v1]):
CAM0_UP = [
    [0.75, 0.6875, 0.5625, 0.5],
    [0.625, 0.5625, 0.4375, 0.375],
    [0.375, 0.3125, 0.1875, 0.125],
    [0.25, 0.1875, 0.0625, 0.0],
]


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


class TinyCAMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.AvgPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(t([[1, 0], [1, -1]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(t([[1, -1], [-0.5, 2]]))
            self.fc.bias.copy_(t([0.25, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TinyEDMNet(nn.Module):
    """The same weights with the classifier as a 1x1 convolution before pooling (EDM, seed 000 eq. 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU())
        self.head = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.features[0].weight.copy_(t([[1, 0], [1, -1]]).view(2, 2, 1, 1))
            self.head.weight.copy_(t([[1, -1], [-0.5, 2]]).view(2, 2, 1, 1))
            self.head.bias.copy_(t([0.25, -0.5]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cam = self.head(self.features(x))
        return {"logits": cam.mean(dim=(2, 3)), "cam": cam}


@pytest.fixture()
def x_tiny() -> torch.Tensor:
    return torch.stack([t(X0), t(X1)])[None]


@pytest.fixture()
def x_pair(x_tiny: torch.Tensor) -> torch.Tensor:
    """Two samples with different predicted classes: x_tiny (class 1) and a flat image (class 0)."""
    flat = torch.stack([torch.ones(4, 4), 2 * torch.ones(4, 4)])[None]  # A0 = 1, A1 = 0 -> y = (1.25, -1)
    return torch.cat([x_tiny, flat])


def test_tiny_net_logits_are_the_hand_computed_ones(x_tiny: torch.Tensor) -> None:
    net = TinyCAMNet().eval()
    torch.testing.assert_close(net(x_tiny), t([[0.3125, 1.25]]))
    torch.testing.assert_close(net.features(x_tiny), torch.stack([t(A0), t(A1)])[None])


def test_cam_equals_hand_computed_map(x_tiny: torch.Tensor) -> None:
    net = TinyCAMNet().eval()
    raw = CAM(net, "features", "fc", relu=False)
    torch.testing.assert_close(raw.feature_maps(x_tiny, 0), t(CAM0)[None, None])
    torch.testing.assert_close(raw.feature_maps(x_tiny, 1), t(CAM1)[None, None])
    # the class score is the mean of the raw map plus the bias (Zhou et al. 2016)
    assert raw.feature_maps(x_tiny, 0).mean().item() + 0.25 == pytest.approx(0.3125)
    cam = CAM(net, net.features, net.fc)  # modules work as well as names
    torch.testing.assert_close(cam.feature_maps(x_tiny, 0), t(CAM0).clamp(min=0)[None, None])
    torch.testing.assert_close(cam(x_tiny, 0), t(CAM0_UP)[None, None])
    torch.testing.assert_close(cam(x_tiny), CAM(net, "features", "fc")(x_tiny, 1))  # None = predicted class 1


def test_gradcam_equals_hand_computed_map(x_tiny: torch.Tensor) -> None:
    # dy_c/dA_k,ij = W_ck / 4 everywhere, so Grad-CAM_c = ReLU(CAM_c) / 4
    net = TinyCAMNet().eval()
    gradcam = GradCAM(net, "features")
    torch.testing.assert_close(gradcam.feature_maps(x_tiny, 0), t(CAM0).clamp(min=0)[None, None] / 4)
    torch.testing.assert_close(gradcam.feature_maps(x_tiny, 1), t(CAM1)[None, None] / 4)
    torch.testing.assert_close(gradcam(x_tiny, 0), t(CAM0_UP)[None, None] / 4)
    signed = GradCAM(net, "features", relu=False)
    torch.testing.assert_close(signed.feature_maps(x_tiny, 0), t(CAM0)[None, None] / 4)


def test_gradcampp_equals_hand_computed_map(x_tiny: torch.Tensor) -> None:
    # g = W_ck / 4 is constant over space, so alpha_k = g^2 / (2 g^2 + sum(A_k) g^3) and w_k = 4 alpha_k ReLU(g).
    # class 1: g = (-1/8, 1/2): w0 = 0; sum(A1) = 4.75, alpha = 0.25 / (0.5 + 4.75 / 8) = 8/35, w1 = 16/35
    # class 0: g = (1/4, -1/4): sum(A0) = 5, alpha = (1/16) / (1/8 + 5/64) = 4/13, w0 = 4/13; w1 = 0
    net = TinyCAMNet().eval()
    gradcampp = GradCAMPlusPlus(net, "features")
    torch.testing.assert_close(gradcampp.feature_maps(x_tiny, 1), (16 / 35) * t(A1)[None, None])
    torch.testing.assert_close(gradcampp.feature_maps(x_tiny, 0), (4 / 13) * t(A0)[None, None])
    # exp_score multiplies the weights by exp(y_c) (eq. 10 taken literally, as MONAI does)
    literal = GradCAMPlusPlus(net, "features", exp_score=True)
    expected = torch.exp(torch.tensor(1.25)) * (16 / 35) * t(A1)[None, None]
    torch.testing.assert_close(literal.feature_maps(x_tiny, 1), expected)


def test_edm_map_is_the_conv_output_and_costs_one_forward(x_tiny: torch.Tensor) -> None:
    net = TinyEDMNet().eval()
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    edm = EDMActivationMap(net, map_key="cam", relu=False)
    maps = edm(x_tiny, 1)
    handle.remove()
    # A_1 = -0.5 F0 + 2 F1 - 0.5 (the 1x1 convolution, bias included), its mean is y1 = 1.25 (eq. 3)
    expected = t([[1.0, 2.0, -0.5, -1.5], [-1.0, 2.0, 2.5, -0.5], [3.5, -0.5, 5.0, 5.0], [-0.5, -0.5, -1.0, 5.0]])
    torch.testing.assert_close(maps, expected[None, None])
    assert maps.mean().item() == pytest.approx(1.25)
    with torch.no_grad():
        torch.testing.assert_close(maps[:, 0], net.head(net.features(x_tiny))[:, 1])
    assert len(calls) == 1 and not maps.requires_grad  # one forward pass, no graph, no backward
    torch.testing.assert_close(EDMActivationMap(net, map_key="cam")(x_tiny), expected.clamp(min=0)[None, None])
    # a callable returning the maps works the same
    fn = EDMActivationMap(net, activation_map_fn=lambda x: net(x)["cam"], relu=False)
    torch.testing.assert_close(fn(x_tiny, 1), maps)
    # post-hoc CAM with the 1x1 convolution as classifier is the same map without the bias (seed 000 eq. 2 vs 3)
    cam = CAM(net, "features", "head", relu=False, output_key="logits")
    torch.testing.assert_close(cam(x_tiny, 1), maps + 0.5)


def test_edm_upsamples_lower_resolution_maps(x_tiny: torch.Tensor) -> None:
    pooled = nn.AvgPool2d(2)
    net = TinyEDMNet().eval()
    edm = EDMActivationMap(net, activation_map_fn=lambda x: pooled(net(x)["cam"]), relu=False)
    torch.testing.assert_close(edm.feature_maps(x_tiny, 1), t(CAM1)[None, None] - 0.5)  # CAM1 + bias
    assert edm(x_tiny, 1).shape == (1, 1, 4, 4)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_monai_batched_gradcam_mixes_classes_ours_does_not(x_pair: torch.Tensor) -> None:
    from monai.visualize import GradCAM as MonaiGradCAM
    from monai.visualize.class_activation_maps import default_normalizer

    ours = GradCAM(TinyCAMNet().eval(), "features")
    maps = ours.feature_maps(x_pair)  # predicted classes (1, 0)
    per_sample = torch.cat([ours.feature_maps(x_pair[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(maps, per_sample)
    torch.testing.assert_close(maps[0, 0], t(CAM1) / 4)
    torch.testing.assert_close(maps[1, 0], torch.full((2, 2), 0.25))

    monai_net = TinyCAMNet().eval()
    monai_cam = MonaiGradCAM(nn_module=monai_net, target_layers="features", postprocessing=lambda m: m)
    mixed = monai_cam.compute_map(x_pair)
    # MONAI backpropagates logits[:, (1, 0)].sum(): both samples get weights (W_0k + W_1k) / 4 = (1/8, 1/4)
    torch.testing.assert_close(mixed[0, 0], t([[0.5625, 0.25], [0.3125, 0.6875]]))
    torch.testing.assert_close(mixed[1, 0], torch.full((2, 2), 0.125))
    monai_single = torch.cat([monai_cam.compute_map(x_pair[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(monai_single, per_sample)  # one sample at a time MONAI is right
    # and its hooks stay on the model, ours are gone
    assert len(monai_net.features._forward_hooks) > 0
    assert len(ours.model.features._forward_hooks) == 0 and len(ours.model.features._backward_hooks) == 0
    # MONAI's default post-processing maps (min, max) to (1, 0): the hottest pixel becomes the coldest
    flipped = default_normalizer(maps[:1])
    assert flipped[0, 0, 1, 1].item() == pytest.approx(0.0) and flipped[0, 0, 0, 1].item() == pytest.approx(1.0)


def _resnet18(num_classes: int = 10) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scale_cam_image: (m - min) / (1e-7 + max(m - min)) per sample."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_agrees_with_pytorch_grad_cam_on_resnet18(method: str) -> None:
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam import GradCAMPlusPlus as PGCGradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _resnet18()
    if method == "gradcampp":
        # pytorch-grad-cam adds eps = 1e-6 to the Grad-CAM++ denominator 2 g^2 + sum(A) g^3. With the random head
        # (g ~ 3e-3) eps shifts its alphas visibly; a larger head (as after training) makes eps negligible.
        with torch.no_grad():
            model.fc.weight.mul_(1000)
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    targets = [0, 3, 7]
    ours_cls, theirs_cls = (GradCAM, PGCGradCAM) if method == "gradcam" else (GradCAMPlusPlus, PGCGradCAMPlusPlus)
    ours = ours_cls(model, "layer4")(x, targets)
    assert len(model.layer4._forward_hooks) == 0
    with theirs_cls(model=model, target_layers=[model.layer4[-1]]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets]))
    assert ours.shape == (3, 1, 128, 128) and float(ours.amax()) > 0
    torch.testing.assert_close(_minmax(ours)[:, 0], theirs, atol=2e-4, rtol=0)
    if method == "gradcampp":
        # with their eps added to our denominator the two agree to float precision
        class WithEps(GradCAMPlusPlus):
            def channel_weights(self, activation, gradient, scores):  # type: ignore[no-untyped-def]
                g2, g3 = gradient**2, gradient**3
                alpha = g2 / (2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
                alpha = torch.where(gradient != 0, alpha, 0.0)
                return (alpha * gradient.clamp(min=0)).sum(dim=(2, 3), keepdim=True)

        with_eps = WithEps(model, "layer4")(x, targets)
        torch.testing.assert_close(_minmax(with_eps)[:, 0], theirs, atol=1e-5, rtol=0)


def test_gradcam_is_cam_over_feature_size_for_gap_linear_heads() -> None:
    # Selvaraju et al. sec. 3.1: for GAP + linear heads Grad-CAM reduces to CAM / Z (Z = number of positions)
    model = _resnet18()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    cam = CAM(model, "layer4", "fc", relu=False).feature_maps(x, [4, 9])
    gradcam = GradCAM(model, "layer4").feature_maps(x, [4, 9])
    assert cam.shape == (2, 1, 3, 3)
    torch.testing.assert_close(gradcam, cam.clamp(min=0) / 9, rtol=1e-4, atol=1e-7)


class Depthwise2D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Depthwise3D(nn.Module):
    """The 2D net with (1, 3, 3) kernels: on a depth-constant volume every depth slice computes the 2D net."""

    def __init__(self, net2d: Depthwise2D) -> None:
        super().__init__()
        c1, c2 = net2d.features[0], net2d.features[2]
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, (1, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
            nn.Conv3d(4, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3))
        with torch.no_grad():
            for conv3d, conv2d in ((self.features[0], c1), (self.features[2], c2)):
                conv3d.weight.copy_(conv2d.weight.unsqueeze(2))
                conv3d.bias.copy_(conv2d.bias)
            self.head[2].load_state_dict(net2d.head[2].state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_gradcampp_3d_on_depth_constant_volume_equals_2d() -> None:
    # With D identical slices: S3D = S2D, g3D = g2D / D, sum(A3D) = D sum(A2D), so alpha and the Grad-CAM++
    # weights are unchanged (the 3D map repeats the 2D map along depth), while Grad-CAM's mean gradient is
    # divided by D.
    torch.manual_seed(3)
    net2d = Depthwise2D().eval()
    net3d = Depthwise3D(net2d).eval()
    x2d = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    depth = 3
    x3d = x2d.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()
    torch.testing.assert_close(net3d(x3d), net2d(x2d))
    targets = [2, 0]
    pp2d = GradCAMPlusPlus(net2d, "features")(x2d, targets)
    pp3d = GradCAMPlusPlus(net3d, "features")(x3d, targets)
    assert pp3d.shape == (2, 1, depth, 12, 12) and float(pp2d.amax()) > 0
    for d in range(depth):
        torch.testing.assert_close(pp3d[:, :, d], pp2d, rtol=1e-5, atol=1e-6)
    gc2d = GradCAM(net2d, "features")(x2d, targets)
    gc3d = GradCAM(net3d, "features")(x3d, targets)
    for d in range(depth):
        torch.testing.assert_close(gc3d[:, :, d], gc2d / depth, rtol=1e-5, atol=1e-7)


def _monai_resnet3d() -> nn.Module:
    from monai.networks.nets import resnet18

    torch.manual_seed(5)
    # stride-1 stem without max pooling: 16^3 inputs give 2^3 feature maps at layer4
    return resnet18(spatial_dims=3, n_input_channels=1, num_classes=4, conv1_t_stride=1, no_max_pool=True).eval()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_batched_equals_per_sample(method: str, dims: int) -> None:
    generator = torch.Generator().manual_seed(6)
    if dims == 2:
        model, x = _resnet18(), torch.randn(3, 3, 64, 64, generator=generator)
    else:
        model, x = _monai_resnet3d(), torch.randn(3, 1, 16, 16, 16, generator=generator)
    kwargs = {"fc_layer": "fc"} if method == "cam" else {}
    explainer = create_explainer(method, model, target_layer="layer4", **kwargs)
    targets = torch.tensor([1, 3, 0])
    batched = explainer(x, targets)
    single = torch.cat([explainer(x[i : i + 1], int(targets[i])) for i in range(3)])
    assert batched.shape == (3, 1, *x.shape[2:])
    features = explainer.feature_maps(x, targets)
    assert features.shape[2:] == (2,) * dims and float(features.amax()) > 0
    assert float(features.flatten(1).std(1).amin()) > 0  # maps vary in space
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_edm_batched_equals_per_sample(x_pair: torch.Tensor) -> None:
    edm = EDMActivationMap(TinyEDMNet().eval(), map_key="cam")
    batched = edm(x_pair)
    torch.testing.assert_close(batched, torch.cat([edm(x_pair[i : i + 1]) for i in range(2)]))


def test_works_under_no_grad_with_frozen_model_and_removes_hooks() -> None:
    model = _resnet18()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    reference = GradCAMPlusPlus(model, "layer4")(x, [1, 2])
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # as inside a MONAI evaluator
        maps = GradCAMPlusPlus(model, "layer4")(x, [1, 2])
    torch.testing.assert_close(maps, reference)
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


def test_hooks_removed_after_exception_and_errors_name_the_problem(x_tiny: torch.Tensor) -> None:
    net = TinyCAMNet().eval()
    gradcam = GradCAM(net, "features")
    with pytest.raises(InputError, match="target class 5 of sample 0 is outside"):
        gradcam(x_tiny, 5)
    assert not net.features._forward_hooks
    with pytest.raises(InputError, match="target class 2"):
        CAM(net, "features", "fc")(x_tiny, 2)
    assert not net.features._forward_hooks
    with pytest.raises(InputError, match="'featurs'.*features"):
        GradCAM(net, "featurs")
    with pytest.raises(InputError, match="fc_layer must be"):
        CAM(net, "features", "features.2")(x_tiny)
    with pytest.raises(InputError, match="'features.7' is not a submodule"):
        GradCAM(net, "features.7")
    with pytest.raises(InputError, match=r"has shape \(1, 2\); expected \(B=1, K, \*spatial\)"):
        GradCAM(net, "fc")(x_tiny)  # (B, K) is not a feature map
    assert not net.fc._forward_hooks


def test_layer_capture_records_every_call_and_cleans_up() -> None:
    shared = nn.Conv2d(1, 1, 1)
    model = nn.Sequential(shared, shared)
    with torch.no_grad():
        shared.weight.fill_(2.0)
        shared.bias.zero_()
    x = torch.ones(1, 1, 2, 2)
    with LayerCapture(model, "0") as capture:
        y = model(x)
        torch.testing.assert_close(capture.activation(0), 2 * x)
        torch.testing.assert_close(capture.activation(1), 4 * x)
        torch.testing.assert_close(capture.gradient(y.sum(), call=0), torch.full_like(x, 2.0))
    assert not shared._forward_hooks
    assert resolve_layer(model, "1") is shared


def test_upsample_map_bilinear_and_trilinear() -> None:
    m2 = t([[0.0, 1.0], [2.0, 3.0]])[None, None]
    up2 = upsample_map(m2, (4, 4))
    torch.testing.assert_close(up2[0, 0, 0], t([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(up2[0, 0, :, 0], t([0.0, 0.5, 1.5, 2.0]))
    m3 = torch.arange(8.0).view(1, 1, 2, 2, 2)
    up3 = upsample_map(m3, (4, 4, 4))
    assert up3.shape == (1, 1, 4, 4, 4)
    torch.testing.assert_close(up3[0, 0, :, 0, 0], t([0.0, 1.0, 3.0, 4.0]))  # depth steps of 4
    assert upsample_map(m2, (2, 2)) is m2
