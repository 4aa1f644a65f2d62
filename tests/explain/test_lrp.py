"""LRP with zennit: hand-computed relevances, conservation on ResNet/VGG/DenseNet (2D) and MONAI 3D nets,
canonizer correctness (DenseNet BatchNorm trap), batching, and clean-up after errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Norm
from zennit.types import AvgPool, Convolution

from medxai.errors import InputError
from medxai.explain.lrp import LRP, PairedMergeBatchNorm, trace_batch_norm_merges
from medxai.explain.registry import create_explainer


def assert_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks
        assert not any(name.startswith("canonizer") for name in vars(module)) and "forward" not in vars(module)


def trained_like_batch_norm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as after training (a fresh
    BatchNorm merges into zero biases, which would hide the relevance that biases absorb)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def explained_logits(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[torch.arange(len(targets)), torch.tensor(targets)]


# --- hand-computed cases ---------------------------------------------------------------------------------------

def single_linear() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    return model.eval()


X_HAND = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]]]])  # y0 = 0.5 - 2 + 6 - 1 = 3.5


def test_epsilon_rule_on_a_linear_layer_is_weight_times_input() -> None:
    relevance = LRP(single_linear(), composite="epsilon_plus")(X_HAND, 0)
    torch.testing.assert_close(relevance, torch.tensor([[[[0.5, -2.0], [6.0, -1.0]]]]))


def test_flat_rule_spreads_the_logit_evenly() -> None:
    # EpsilonPlusFlat uses the flat rule for the first layer: R_i = y / (number of inputs) = 3.5 / 4
    relevance = LRP(single_linear())(X_HAND, 0)
    torch.testing.assert_close(relevance, torch.full((1, 1, 2, 2), 0.875))


def bias_free_relu_net(dims: int = 2) -> nn.Module:
    conv, pool = (nn.Conv2d, nn.AdaptiveAvgPool2d) if dims == 2 else (nn.Conv3d, nn.AdaptiveAvgPool3d)
    torch.manual_seed(0)
    return nn.Sequential(
        conv(2, 8, 3, padding=1, bias=False), nn.ReLU(), conv(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        pool(1), nn.Flatten(), nn.Linear(8, 3, bias=False),
    ).eval()


def epsilon_everywhere(canonizers: list) -> LayerMapComposite:
    """LRP-epsilon for every linear layer (epsilon only as a stabiliser)."""
    return LayerMapComposite(
        [(Convolution, Epsilon(1e-9)), (nn.Linear, Epsilon(1e-9)), (AvgPool, Norm(1e-9))], canonizers=canonizers
    )


def test_lrp_0_equals_gradient_times_input_on_a_bias_free_relu_net() -> None:
    # For ReLU networks without biases LRP-0 equals gradient x input (Ancona et al., ICLR 2018); captum's
    # InputXGradient is the reference.
    from captum.attr import InputXGradient

    model = bias_free_relu_net()
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    relevance = LRP(model, composite=epsilon_everywhere)(x, [0, 2])
    reference = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=[0, 2]).sum(1, keepdim=True)
    torch.testing.assert_close(relevance, reference.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(relevance.flatten(1).sum(1), explained_logits(model, x, [0, 2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_conservation_on_a_bias_free_relu_net(dims: int) -> None:
    model = bias_free_relu_net(dims)
    x = torch.randn(2, 2, *([8] * dims), generator=torch.Generator().manual_seed(2))
    relevance = LRP(model)(x, [1, 0])
    # exact up to the 1e-6 stabilisers of the z+ and flat rules
    torch.testing.assert_close(relevance.flatten(1).sum(1), explained_logits(model, x, [1, 0]), rtol=1e-4, atol=1e-5)
    assert float(relevance.abs().amax()) > 0


# --- real architectures ----------------------------------------------------------------------------------------

def torchvision_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return trained_like_batch_norm(getattr(torchvision.models, name)(weights=None, num_classes=3))


def monai_net(name: str) -> nn.Module:
    from monai.networks.nets import DenseNet121, resnet18

    torch.manual_seed(0)
    if name == "resnet18":
        return trained_like_batch_norm(resnet18(spatial_dims=3, n_input_channels=1, num_classes=3))
    return trained_like_batch_norm(DenseNet121(spatial_dims=3, in_channels=1, out_channels=3))


CASES = {
    "resnet18": (lambda: torchvision_net("resnet18"), (2, 3, 64, 64)),
    "vgg11_bn": (lambda: torchvision_net("vgg11_bn"), (2, 3, 64, 64)),
    "densenet121": (lambda: torchvision_net("densenet121"), (2, 3, 64, 64)),
    "monai_resnet18_3d": (lambda: monai_net("resnet18"), (2, 1, 16, 16, 16)),
    "monai_densenet121_3d": (lambda: monai_net("densenet121"), (2, 1, 32, 32, 32)),  # 4 poolings need 32^3
}


@pytest.mark.parametrize("name", list(CASES))
def test_relevance_conservation_on_real_architectures(name: str) -> None:
    """With bias-free rules (``zero_params=["bias"]``) the relevance sums to the logit up to float error (1e-4
    relative): z+ and flat rules conserve exactly, epsilon and the stabilisers (1e-6) lose next to nothing.
    With the default rules each bias takes its share (epsilon rule: b / z of the output relevance; z+ rule:
    positive biases), so conservation holds only approximately: within 20 % for these BatchNorm statistics."""
    make, shape = CASES[name]
    model = make()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    targets = [0, 2]
    logits = explained_logits(model, x, targets)
    exact = LRP(model, composite_kwargs={"zero_params": ["bias"]})(x, targets)
    torch.testing.assert_close(exact.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-5)
    approx = LRP(model)(x, targets).flatten(1).sum(1)
    relative = ((approx - logits).abs() / logits.abs()).max().item()
    assert 1e-4 < relative < 0.2
    assert_no_hooks(model)


def test_zennit_sequential_batch_norm_merge_breaks_densenet_paired_merge_does_not() -> None:
    broken = torchvision_net("densenet121")
    with pytest.raises(RuntimeError, match="must match"):
        SequentialMergeBatchNorm().apply(broken)  # merges norm1 of each dense layer into the previous conv2

    model = torchvision_net("densenet121")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model(x)
        pairs = trace_batch_norm_merges(model, lambda: model(x))
    # conv0 -> norm0 and conv1 -> norm2 in each of the 6 + 12 + 24 + 16 dense layers; norm1, the transitions'
    # norms and norm5 normalise concatenations and stay unmerged
    assert len(pairs) == 1 + 58
    assert {norm for _, norm in pairs} == {model.features.norm0} | {
        m.norm2 for m in model.modules() if type(m).__name__ == "_DenseLayer"
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    instances = PairedMergeBatchNorm(pairs).apply(model)
    assert model.features.conv0.bias is not None and torch.all(model.features.norm0.running_var == 1 - 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)
    for instance in instances:
        instance.remove()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class ScaledConvBN(nn.Module):
    """conv -> x2 -> BN: module order suggests conv+BN, but BN does not normalise the conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(2 * self.conv(x)))


def test_canonizers_that_change_the_function_are_refused() -> None:
    model = trained_like_batch_norm(ScaledConvBN(), seed=5)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="canonizers changed the outputs of ScaledConvBN"):
        LRP(model, canonizers=[SequentialMergeBatchNorm()])(x, 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.conv.bias is not None and model.conv.bias.shape == (4,)
    assert_no_hooks(model)
    # the traced merge sees that BN consumes 2 * conv(x), not conv(x), and leaves it alone
    assert trace_batch_norm_merges(model, lambda: model(x)) == []
    assert LRP(model)(x, 0).shape == (1, 1, 6, 6)


class FailsWithGrad(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if x.requires_grad:
            raise RuntimeError("failure inside the LRP forward pass")
        return out


def test_hooks_and_canonizers_are_removed_after_an_exception() -> None:
    model = FailsWithGrad(torchvision_net("resnet18")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="failure inside"):
        LRP(model)(x, 0)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert_no_hooks(model)


def test_needs_eval_mode_and_works_under_no_grad() -> None:
    model = torchvision_net("resnet18")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    reference = LRP(model)(x, [1, 2])
    with torch.no_grad():
        torch.testing.assert_close(LRP(model)(x, [1, 2]), reference)
    assert_no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    model.train()
    with pytest.raises(InputError, match="eval mode"):
        LRP(model)(x, 0)
    with pytest.raises(InputError, match="unknown LRP composite 'epsilon_flat'"):
        LRP(model, composite="epsilon_flat")


@pytest.mark.parametrize(
    ("name", "composite"), [("resnet18", "epsilon_gamma_box"), ("monai_resnet18_3d", "epsilon_plus_flat")]
)
def test_batched_equals_per_sample(name: str, composite: str) -> None:
    make, shape = CASES[name]
    model = make()
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(8))
    x[1] *= 3.0  # per-sample box bounds differ
    explainer = create_explainer("lrp", model, composite=composite)
    batched = explainer(x, [2, 0, 1])
    single = torch.cat([explainer(x[i : i + 1], t) for i, t in enumerate([2, 0, 1])])
    assert float(batched.amax()) > 0 > float(batched.amin())  # signed relevance
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)
