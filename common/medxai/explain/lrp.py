"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) with zennit, in 2D and 3D.

Seed 002 (sec. II-D) explains its CXR classifiers with LRP. The relevance of the target logit is
propagated back layer by layer with a *composite* of rules (default zennit's ``EpsilonPlusFlat``: flat rule
for the first layer, z+ for convolutions, epsilon for fully connected layers, proportional "norm" rule for
average pooling and residual sums, pass-through for activations and un-merged batch norms), after
*canonizers* have rewritten the network into an equivalent form the rules apply to.

Canonizers (what zennit offers and what this module adds):

- BatchNorm merging. zennit's ``SequentialMergeBatchNorm`` merges a BatchNorm into the module visited just
  before it in module order. That is wrong for DenseNets (torchvision's and MONAI's): the BatchNorm of a
  dense layer follows the previous layer's convolution in module order but normalises the *concatenation*
  of all earlier features; zennit then fails with a shape error, leaving the network half modified.
  :class:`PairedMergeBatchNorm` merges a BatchNorm into a convolution/linear layer only when a traced
  forward pass shows that the BatchNorm consumed exactly that layer's (unmodified) output; it also makes
  the emptied BatchNorm an exact identity (running variance ``1 - eps``). This covers ResNet, VGG and
  DenseNet in 2D and MONAI's 3D networks alike.
- Residual additions. ``out + identity`` written with ``+`` is invisible to module hooks, so relevance
  would be copied to both branches. zennit's ``ResNetBasicBlockCanonizer`` / ``ResNetBottleneckCanonizer``
  cover torchvision's blocks; :class:`MonaiResNetBlockCanonizer` does the same for MONAI's ``ResNetBlock``
  and ``ResNetBottleneck`` (2D and 3D), routing the sum through a ``zennit.layer.Sum`` module.
- torchvision's DenseNet pools with functional ``F.relu`` / ``F.adaptive_avg_pool2d``, which no rule can be
  attached to; :class:`TorchvisionDenseNetCanonizer` routes them through modules. MONAI's DenseNet already
  uses modules.

Every call checks that the canonized network still computes the same logits as the original (it raises
otherwise), so a canonizer that does not fit a custom architecture cannot go unnoticed.

The map is the input relevance summed over input channels: signed (negative relevance speaks against the
class), not normalised. It sums approximately to the explained logit (relevance conservation; exact up to
the relevance absorbed by biases and the epsilon stabilisers).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from zennit.canonizers import AttributeCanonizer, Canonizer, MergeBatchNorm
from zennit.composites import COMPOSITES
from zennit.core import Composite
from zennit.layer import Sum
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import BatchNorm as BatchNormTypes
from zennit.types import Linear as LinearTypes

from medxai.errors import InputError
from medxai.explain.base import Explainer, resolve_targets
from medxai.explain.hooks import select_output
from medxai.explain.registry import register_explainer

__all__ = [
    "trace_batch_norm_merges",
    "PairedMergeBatchNorm",
    "MonaiResNetBlockCanonizer",
    "TorchvisionDenseNetCanonizer",
    "default_canonizers",
    "LRP",
]


def trace_batch_norm_merges(
    model: torch.nn.Module, run_forward: Callable[[], Any]
) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """Find the (linear or convolution, BatchNorm) pairs where the BatchNorm directly consumes the layer's output.

    Parameters
    ----------
    model
        The network.
    run_forward
        Runs one forward pass of ``model`` (its result is ignored).

    Returns
    -------
    list of tuple
        ``(layer, batch_norm)`` pairs such that, in the traced pass, each was called once and the BatchNorm's
        input was the very tensor the layer returned, not modified in place since (same object and version).
        BatchNorms without running statistics or affine parameters are skipped.
    """
    produced: dict[int, tuple[torch.nn.Module, torch.Tensor, int]] = {}
    consumer_of: dict[torch.nn.Module, torch.nn.Module] = {}
    calls: Counter[torch.nn.Module] = Counter()

    def after_layer(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        calls[module] += 1
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (module, output, output._version)

    def before_norm(module: torch.nn.Module, inputs: Any) -> None:
        calls[module] += 1
        tensor = inputs[0] if inputs else None
        entry = produced.get(id(tensor))
        if entry is not None and entry[1] is tensor and tensor._version == entry[2]:
            consumer_of[module] = entry[0]

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, LinearTypes):
                handles.append(module.register_forward_hook(after_layer))
            elif isinstance(module, BatchNormTypes):
                mergeable = module.track_running_stats and module.running_var is not None and module.affine
                if mergeable:
                    handles.append(module.register_forward_pre_hook(before_norm))
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    layer_uses = Counter(consumer_of.values())
    return [
        (layer, norm)
        for norm, layer in consumer_of.items()
        if calls[norm] == 1 and calls[layer] == 1 and layer_uses[layer] == 1
    ]


class _ExactMergeBatchNorm(MergeBatchNorm):
    """zennit's BatchNorm merge, with the emptied BatchNorm made an exact identity (``var + eps = 1``)."""

    def apply(self, root_module: torch.nn.Module) -> list[Canonizer]:
        return []

    def register(self, linears: Sequence[torch.nn.Module], batch_norm: torch.nn.Module) -> None:
        super().register(linears, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


class PairedMergeBatchNorm(Canonizer):
    """Merge each BatchNorm into the layer whose output it normalises, for given (layer, batch_norm) pairs.

    Build the pairs with :func:`trace_batch_norm_merges` (a traced forward pass), which, unlike module
    order, tells a BatchNorm that normalises a convolution's output from one that normalises a concatenation
    (DenseNet) or a sum. The merged BatchNorm computes the identity; ``remove`` restores all parameters.
    """

    def __init__(self, pairs: Sequence[tuple[torch.nn.Module, torch.nn.Module]] = ()) -> None:
        self.pairs = list(pairs)

    def apply(self, root_module: torch.nn.Module) -> list[Canonizer]:
        instances: list[Canonizer] = []
        try:
            for layer, norm in self.pairs:
                instance = _ExactMergeBatchNorm()
                instance.register((layer,), norm)
                instances.append(instance)
        except Exception:
            for instance in instances:
                instance.remove()
            raise
        return instances

    def register(self) -> None:
        """Nothing to do: :meth:`apply` returns one registered merge per pair."""

    def remove(self) -> None:
        """Nothing to do: the merges returned by :meth:`apply` are removed one by one."""

    def copy(self) -> PairedMergeBatchNorm:
        return PairedMergeBatchNorm(self.pairs)


def _monai_residual_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``ResNetBlock`` / ``ResNetBottleneck`` forward with the residual sum through a Sum module."""
    residual = x
    out = self.act(self.bn1(self.conv1(x)))
    if hasattr(self, "conv3"):
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
    else:
        out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        residual = self.downsample(x)
    out = self.canonizer_sum(torch.stack([residual, out], dim=-1))
    return self.act(out)


class MonaiResNetBlockCanonizer(AttributeCanonizer):
    """Route the residual addition of MONAI's ``ResNetBlock`` and ``ResNetBottleneck`` through a Sum module.

    The counterpart of zennit's torchvision ResNet canonizers for ``monai.networks.nets.ResNet`` (2D and 3D),
    so the sum gets the proportional (norm) rule instead of copying relevance to both branches.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> dict[str, Any] | None:
        resnet = sys.modules.get("monai.networks.nets.resnet")  # not imported: no MONAI ResNet can exist
        if resnet is not None and isinstance(module, (resnet.ResNetBlock, resnet.ResNetBottleneck)):
            return {"forward": _monai_residual_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> MonaiResNetBlockCanonizer:
        return MonaiResNetBlockCanonizer()


def _torchvision_densenet_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision ``DenseNet.forward`` with the final ReLU and pooling as modules."""
    out = self.canonizer_pool(self.canonizer_relu(self.features(x)))
    return self.classifier(torch.flatten(out, 1))


class TorchvisionDenseNetCanonizer(AttributeCanonizer):
    """Give torchvision's ``DenseNet`` head module-based ReLU and average pooling so LRP rules apply to them.

    With the functional ``F.adaptive_avg_pool2d`` the relevance would be spread evenly over all positions
    and then partly dropped by the functional ReLU's gradient; as modules, pooling gets the proportional rule.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: torch.nn.Module) -> dict[str, Any] | None:
        densenet = sys.modules.get("torchvision.models.densenet")
        if densenet is not None and isinstance(module, densenet.DenseNet):
            return {
                "forward": _torchvision_densenet_forward.__get__(module),
                "canonizer_relu": torch.nn.ReLU(),
                "canonizer_pool": torch.nn.AdaptiveAvgPool2d(1),
            }
        return None

    def copy(self) -> TorchvisionDenseNetCanonizer:
        return TorchvisionDenseNetCanonizer()


def default_canonizers(
    pairs: Sequence[tuple[torch.nn.Module, torch.nn.Module]] = (),
) -> list[Canonizer]:
    """The canonizers used by ``LRP(canonizers="auto")``: traced BatchNorm merges and residual / head rewrites.

    The rewriting canonizers only touch modules of their type (torchvision ResNet blocks, MONAI ResNet
    blocks, torchvision DenseNet), so the list is safe for any network.
    """
    return [
        PairedMergeBatchNorm(pairs),
        ResNetBasicBlockCanonizer(),
        ResNetBottleneckCanonizer(),
        MonaiResNetBlockCanonizer(),
        TorchvisionDenseNetCanonizer(),
    ]


@register_explainer("lrp")
class LRP(Explainer):
    """Layer-wise relevance propagation of the target logit with a zennit composite (seed 002, sec. II-D).

    Parameters
    ----------
    model
        Maps (B, C, *spatial) to logits (B, K) (or a tuple/dict holding them, see ``output_key``); must be
        in ``eval`` mode (BatchNorm merging uses the running statistics).
    composite
        Name of a zennit composite (``"epsilon_plus_flat"``, default, as recommended by Kohlbrenner et al.
        2020; ``"epsilon_gamma_box"``, ``"epsilon_plus"``, ``"epsilon_alpha2_beta1_flat"``, ...) or a callable
        ``(canonizers=..., **composite_kwargs) -> zennit Composite`` (e.g. a composite class).
    canonizers
        ``"auto"`` (default): :func:`default_canonizers` with BatchNorm merges traced on each call; or a list
        of zennit canonizers used as given (``[]`` for none).
    composite_kwargs
        Keyword arguments of the composite, e.g. ``{"epsilon": 1e-6}`` or ``{"gamma": 0.25}``. For
        ``"epsilon_gamma_box"`` the box bounds ``low`` / ``high`` default to each sample's min / max.
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).

    Notes
    -----
    The relevance at the output is the target logit (one-hot times logits), so the map, summed over space,
    approximates that logit. The map is signed. Per-sample rules (box bounds) keep batched results equal to
    per-sample results. Hooks and canonizers are removed, and all parameters restored, after the call, even
    when it raises.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        composite: str | Callable[..., Composite] = "epsilon_plus_flat",
        canonizers: str | Sequence[Canonizer] = "auto",
        composite_kwargs: dict[str, Any] | None = None,
        output_key: str | int | None = None,
    ) -> None:
        super().__init__(model)
        if isinstance(composite, str):
            if composite not in COMPOSITES:
                raise InputError(f"unknown LRP composite '{composite}'; available: {', '.join(sorted(COMPOSITES))}.")
            self.composite_factory: Callable[..., Composite] = COMPOSITES[composite]
        elif callable(composite):
            self.composite_factory = composite
        else:
            raise InputError(f"composite must be a zennit composite name or factory, got {type(composite).__name__}.")
        if isinstance(canonizers, str) and canonizers != "auto":
            raise InputError(f"canonizers must be 'auto' or a list of zennit canonizers, got '{canonizers}'.")
        self.composite_name = composite if isinstance(composite, str) else getattr(composite, "__name__", "custom")
        self.canonizers = canonizers
        self.composite_kwargs = dict(composite_kwargs or {})
        self.output_key = output_key

    def _build_composite(self, x: torch.Tensor, canonizers: list[Canonizer]) -> Composite:
        kwargs = dict(self.composite_kwargs)
        if self.composite_name == "epsilon_gamma_box":
            flat = x.detach().flatten(1)
            shape = (x.shape[0], *([1] * (x.ndim - 1)))
            kwargs.setdefault("low", flat.amin(1).view(shape))
            kwargs.setdefault("high", flat.amax(1).view(shape))
        return self.composite_factory(canonizers=canonizers, **kwargs)

    def attribute(self, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        if self.model.training:
            raise InputError(
                f"LRP needs {type(self.model).__name__} in eval mode (BatchNorm merging uses running statistics); "
                "call model.eval() first."
            )
        x = x.detach()
        reference: dict[str, torch.Tensor] = {}

        def reference_forward() -> None:
            reference["logits"] = select_output(self.model(x), self.output_key)

        with torch.no_grad():
            if self.canonizers == "auto":
                canonizers = default_canonizers(trace_batch_norm_merges(self.model, reference_forward))
            else:
                canonizers = list(self.canonizers)
                reference_forward()
        logits = reference["logits"]
        targets = resolve_targets(target, x.shape[0], logits).to(logits.device)
        composite = self._build_composite(x, canonizers)
        inputs = x.clone().requires_grad_(True)
        try:
            composite.register(self.model)
            output = select_output(self.model(inputs), self.output_key)
            tolerance = 1e-5 + 1e-3 * float(logits.abs().max())
            if output.shape != logits.shape or not torch.allclose(output, logits, rtol=1e-3, atol=tolerance):
                difference = (output - logits).abs().max().item() if output.shape == logits.shape else float("nan")
                raise InputError(
                    f"the LRP canonizers changed the outputs of {type(self.model).__name__} (max difference "
                    f"{difference:.3g}); pass canonizers that fit this architecture (or canonizers=[])."
                )
            one_hot = torch.zeros_like(output).scatter_(1, targets[:, None], 1.0)
            (relevance,) = torch.autograd.grad(output, inputs, grad_outputs=(one_hot * output).detach())
        finally:
            composite.remove()
        return relevance.sum(dim=1, keepdim=True).to(x.device)
