"""Sanity check of explanation methods by cascading model-parameter randomisation.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity checks for saliency maps." NeurIPS 2018,
Sec. 3.1 ("cascading randomization"): re-initialise the weights of the model layer by layer, from the
output (top) back to the input, cumulatively, and compare each explanation of the progressively
randomised model with the explanation of the original model by Spearman rank correlation, of the absolute
values and of the signed values. A method that explains the *model* should lose its correlation as layers
are randomised; a method whose map stays the same (an edge detector, the input itself) fails the check.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.stats import ConstantInputWarning, spearmanr

from medxai.errors import InputError
from medxai.explain.base import check_batch, resolve_targets
from medxai.explain.registry import create_explainer
from medxai.metrics.localization import as_tensor, check_maps

__all__ = [
    "RandomizationResult",
    "execution_order",
    "reinitialize",
    "spearman_per_sample",
    "cascading_randomization",
]

ExplainerFactory = Callable[[torch.nn.Module], Callable[..., torch.Tensor]]


class RandomizationResult(NamedTuple):
    """Correlations between the original maps and the maps after each cascading step.

    Attributes
    ----------
    layers
        (L,) names of the layers in the order they were randomised (top first); entry ``k`` holds the
        state where ``layers[0] ... layers[k]`` are all randomised.
    spearman_abs
        (B, L) Spearman rank correlation of ``|map|`` with ``|original map|``, per sample and step.
    spearman_signed
        (B, L) the same on the signed maps.

    A correlation is NaN where a map is constant (no ranking), e.g. a gradient that vanished.
    """

    layers: list[str]
    spearman_abs: torch.Tensor
    spearman_signed: torch.Tensor

    def mean_abs(self) -> torch.Tensor:
        """(L,) mean over samples of the absolute-map correlation, NaN samples skipped."""
        return torch.nanmean(self.spearman_abs.double(), dim=0)

    def mean_signed(self) -> torch.Tensor:
        """(L,) mean over samples of the signed-map correlation, NaN samples skipped."""
        return torch.nanmean(self.spearman_signed.double(), dim=0)


def _owns_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _record_call(order: list[str], name: str, *_: Any) -> None:
    """Forward hook body: append ``name`` to ``order`` on the module's first call."""
    if name not in order:
        order.append(name)


def execution_order(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Names of the modules that own parameters, in the order a forward pass on ``x`` first calls them.

    The pass runs on a deep copy under ``no_grad`` (so batch-norm statistics of a model in training mode
    are not touched); modules never called are left out.

    Returns
    -------
    tuple
        ``(names, outputs)``: the names (input side first) and the model's outputs (B, K) on ``x``.
    """
    probe = copy.deepcopy(model)
    order: list[str] = []
    handles = []
    for name, module in probe.named_modules():
        if _owns_parameters(module):
            handles.append(module.register_forward_hook(functools.partial(_record_call, order, name)))
    try:
        with torch.no_grad():
            outputs = probe(x)
    finally:
        for handle in handles:
            handle.remove()
    return order, outputs


def reinitialize(module: torch.nn.Module) -> None:
    """Re-draw the parameters of ``module`` and of its sub-modules, in place, from the global RNG.

    Each module that owns parameters is reset with its own ``reset_parameters()`` (PyTorch's default
    initialisation, as Adebayo et al. re-initialise with the network's initialisation scheme; batch-norm
    layers return to weight 1, bias 0 and fresh running statistics). Parameters of a module without
    ``reset_parameters`` are drawn from a zero-mean normal with the tensor's current standard deviation
    (its largest absolute value when constant, 1 when all zero).
    """
    owners = [m for m in module.modules() if _owns_parameters(m)]
    if not owners:
        raise InputError(f"module {type(module).__name__} has no parameters to randomise.")
    for owner in owners:
        reset = getattr(owner, "reset_parameters", None)
        if callable(reset):
            reset()
            continue
        with torch.no_grad():
            for parameter in owner.parameters(recurse=False):
                values = parameter.detach().double()
                scale = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
                scale = scale or float(values.abs().max()) or 1.0
                parameter.normal_(0.0, scale)


def spearman_per_sample(maps: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Spearman rank correlation (:func:`scipy.stats.spearmanr`) of each sample's map with its reference.

    Parameters
    ----------
    maps, reference
        (B, 1, *spatial) each.

    Returns
    -------
    torch.Tensor
        (B,) float64 on the CPU; NaN where either map is constant.
    """
    maps, reference = check_maps(maps), check_maps(reference, "reference")
    if maps.shape != reference.shape:
        raise InputError(f"maps {tuple(maps.shape)} and reference {tuple(reference.shape)} differ in shape.")
    a = maps.detach().flatten(1).cpu().double().numpy()
    b = reference.detach().flatten(1).cpu().double().numpy()
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        for row_a, row_b in zip(a, b):
            constant = np.ptp(row_a) == 0 or np.ptp(row_b) == 0
            values.append(float("nan") if constant else float(spearmanr(row_a, row_b).statistic))
    return torch.tensor(values, dtype=torch.float64)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNGs for a block and restore the caller's RNG state afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _step_seed(seed: int, step: int) -> int:
    """An independent seed for cascading step ``step`` (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _resolve_layers(
    model: torch.nn.Module, layer_order: Sequence[str | torch.nn.Module] | None, x: torch.Tensor
) -> tuple[list[str], torch.Tensor]:
    """Layer names to randomise, top first, and the model's outputs on ``x``."""
    traced, outputs = execution_order(model, x)
    if layer_order is None:
        return traced[::-1], outputs
    names_by_id = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    names = []
    for layer in layer_order:
        name = names_by_id.get(id(layer)) if isinstance(layer, torch.nn.Module) else str(layer)
        if name is None or name not in modules:
            shown = type(layer).__name__ if isinstance(layer, torch.nn.Module) else layer
            raise InputError(f"layer '{shown}' in layer_order is not a sub-module of {type(model).__name__}.")
        names.append(name)
    if len(set(names)) != len(names):
        raise InputError(f"layer_order names a layer twice: {names}.")
    return names, outputs


def cascading_randomization(
    model: torch.nn.Module,
    explainer_factory: ExplainerFactory | str,
    x: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    layer_order: Sequence[str | torch.nn.Module] | None = None,
    seed: int = 0,
    explainer_kwargs: dict[str, Any] | None = None,
) -> RandomizationResult:
    """Cascading model-parameter randomisation test (Adebayo et al., NeurIPS 2018, Sec. 3.1).

    Works on a deep copy: the caller's model is never modified. Starting from the top, each layer of
    ``layer_order`` is re-initialised (:func:`reinitialize`) on top of the previous ones, the explainer is
    rebuilt on the randomised copy and run on ``x`` for the same targets as the original, and its maps are
    rank-correlated (:func:`spearman_per_sample`) with the original maps, absolute and signed.

    Parameters
    ----------
    model
        The trained classifier, (B, C, *spatial) -> (B, K). Use it in eval mode, as the explainer will.
    explainer_factory
        ``factory(model) -> explainer`` with ``explainer(x, target) -> maps (B, 1, *spatial)``, e.g.
        ``lambda m: GradCAM(m, target_layer="layer4")``, or the registry name of an explainer
        (:func:`medxai.explain.registry.create_explainer`, with ``explainer_kwargs``). A target layer must
        be given by name so it resolves on each copy.
    x
        Input batch (B, C, *spatial).
    target
        Class per sample; ``None`` fixes the original model's predicted classes for every step.
    layer_order
        Modules or dotted names to randomise, top (output side) first; a block randomises every layer
        inside it. ``None``: every module that owns parameters, in the reverse order of a forward pass.
    seed
        Seeds the re-initialisation of each step and every explainer call (the same seed for each call, so
        a stochastic explainer such as SmoothGrad draws the same noise and only the weights differ). The
        caller's RNG state is restored.

    Returns
    -------
    RandomizationResult
        Per layer, the (B,) correlations of absolute and signed maps with the original ones.
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(explainer_factory, str):
        factory: ExplainerFactory = functools.partial(create_explainer, explainer_factory, **(explainer_kwargs or {}))
    elif explainer_kwargs:
        raise InputError("explainer_kwargs apply only when explainer_factory is a registry name.")
    else:
        factory = explainer_factory
    x = check_batch(as_tensor(x, "x"))
    layers, outputs = _resolve_layers(model, layer_order, x)
    if not layers:
        raise InputError(f"{type(model).__name__} has no layers with parameters to randomise.")
    targets = resolve_targets(target, x.shape[0], outputs)
    device = x.device

    def explain(network: torch.nn.Module) -> torch.Tensor:
        with _seeded(seed, device):
            maps = factory(network)(x, targets)
        return check_maps(maps.detach(), "explainer maps")

    working = copy.deepcopy(model)
    original = explain(copy.deepcopy(model))
    modules = dict(working.named_modules())
    correlations_abs, correlations_signed = [], []
    for step, layer in enumerate(layers):
        with _seeded(_step_seed(seed, step), device):
            reinitialize(modules[layer])
        maps = explain(working)
        correlations_abs.append(spearman_per_sample(maps.abs(), original.abs()))
        correlations_signed.append(spearman_per_sample(maps, original))
    return RandomizationResult(list(layers), torch.stack(correlations_abs, 1), torch.stack(correlations_signed, 1))
