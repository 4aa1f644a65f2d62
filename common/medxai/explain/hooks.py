"""Capturing a layer's activations (and the gradient of a score with respect to them) for one call.

Layer-based explainers (CAM, Grad-CAM, Grad-CAM++) need the output of one inner layer of the model.
:class:`LayerCapture` registers a forward hook for the duration of a ``with`` block only, so the model
carries no hooks before or after the call, even when the block raises. Layers are named by module or by
dotted name (``"layer4"``, ``"features.denseblock4"``, ``"layer4.1.conv2"``) so bundle configs can name them.

Gradients are taken with :func:`torch.autograd.grad` with respect to the captured activation rather than
with ``.backward()``: nothing accumulates in the parameters' ``.grad``, and autograd prunes the part of the
graph below the layer.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch

from medxai.errors import InputError

__all__ = ["resolve_layer", "select_output", "LayerCapture"]


def resolve_layer(model: torch.nn.Module, layer: torch.nn.Module | str) -> torch.nn.Module:
    """Return the submodule ``layer`` of ``model``, given as a module or a dotted name.

    Parameters
    ----------
    model
        The network.
    layer
        A submodule of ``model`` or its dotted name as listed by ``model.named_modules()``
        (e.g. ``"layer4"``, ``"features.denseblock4"``, ``"features.0"``).

    Raises
    ------
    InputError
        When the name does not exist (the message lists the closest names) or the module is not part of ``model``.
    """
    if isinstance(layer, torch.nn.Module):
        if not any(layer is module for module in model.modules()):
            raise InputError(f"target layer {type(layer).__name__} is not a submodule of {type(model).__name__}.")
        return layer
    if not isinstance(layer, str):
        raise InputError(f"target layer must be a torch.nn.Module or a dotted name, got {type(layer).__name__}.")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        top_level = [n for n in names if "." not in n]
        hint = f" Closest names: {', '.join(close)}." if close else f" Top-level names: {', '.join(top_level)}."
        raise InputError(f"target layer '{layer}' is not a submodule of {type(model).__name__}.{hint}") from None


def select_output(output: Any, key: str | int | None = None) -> torch.Tensor:
    """Pick the tensor to explain from a model's output.

    Parameters
    ----------
    output
        What the model returned: a tensor, a tuple/list, or a mapping (e.g. ``{"logits": ..., "cam": ...}``).
    key
        ``None`` for a tensor output; an index into a tuple/list; a key into a mapping.

    Raises
    ------
    InputError
        When ``key`` does not select a tensor from ``output``.
    """
    if key is None:
        selected = output
    elif isinstance(output, Mapping):
        if key not in output:
            raise InputError(f"model output has no key {key!r}; keys: {', '.join(map(repr, output))}.")
        selected = output[key]
    elif isinstance(output, Sequence) and not isinstance(output, (str, torch.Tensor)):
        if not isinstance(key, int) or not -len(output) <= key < len(output):
            raise InputError(f"output key {key!r} does not index the model's {len(output)} outputs.")
        selected = output[key]
    else:
        raise InputError(f"output key {key!r} given, but the model returned a single {type(output).__name__}.")
    if not isinstance(selected, torch.Tensor):
        raise InputError(
            f"the model output selected by key {key!r} is a {type(selected).__name__}, not a tensor; "
            "set output_key to pick the logits from a tuple or dict output."
        )
    return selected


class LayerCapture:
    """Context manager recording the output of ``layer`` on every call of the model inside the block.

    Parameters
    ----------
    model
        The network the layer belongs to.
    layer
        The layer, as a module or a dotted name (see :func:`resolve_layer`).

    Examples
    --------
    >>> with LayerCapture(model, "layer4") as capture:          # doctest: +SKIP
    ...     logits = model(x)
    ...     activation = capture.activation()                    # (B, K, h, w)
    ...     gradient = capture.gradient(logits[:, 1].sum())      # d score / d activation, same shape

    Notes
    -----
    When gradients are enabled but the layer's output does not require one (a frozen model fed an input
    without ``requires_grad``), the hook replaces the output by a detached copy that requires grad, so the
    score can still be differentiated with respect to the layer. A layer used several times in one forward
    (weight-shared encoders, e.g. CXRNet) is recorded once per call, in call order.
    """

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module | str) -> None:
        self.layer = resolve_layer(model, layer)
        self.layer_name = layer if isinstance(layer, str) else type(layer).__name__
        self.activations: list[torch.Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise InputError(
                f"target layer '{self.layer_name}' returned a {type(output).__name__}; it must return a tensor "
                "(B, K, *spatial)."
            )
        replaced = None
        if torch.is_grad_enabled() and not output.requires_grad:
            replaced = output.detach().requires_grad_(True)
        self.activations.append(output if replaced is None else replaced)
        return replaced

    def __enter__(self) -> LayerCapture:
        self.activations = []
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def activation(self, call: int = 0) -> torch.Tensor:
        """The layer's output on its ``call``-th call (0: first) inside the block, (B, K, *spatial)."""
        if not self.activations:
            raise InputError(f"target layer '{self.layer_name}' was not called during the model's forward pass.")
        if not -len(self.activations) <= call < len(self.activations):
            raise InputError(
                f"layer_call {call} requested, but target layer '{self.layer_name}' was called "
                f"{len(self.activations)} time(s)."
            )
        return self.activations[call]

    def gradient(self, score: torch.Tensor, call: int = 0) -> torch.Tensor:
        """Gradient of the scalar ``score`` with respect to :meth:`activation` ``(call)``; same shape.

        Raises
        ------
        InputError
            When the score does not depend on the layer's output (e.g. the layer is not on the path to the logits).
        """
        activation = self.activation(call)
        if not activation.requires_grad:
            raise InputError(f"the output of target layer '{self.layer_name}' was computed without gradients.")
        (grad,) = torch.autograd.grad(score, activation, allow_unused=True)
        if grad is None:
            raise InputError(f"the explained score does not depend on target layer '{self.layer_name}'.")
        return grad
