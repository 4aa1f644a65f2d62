"""The one interface every explainer follows.

An explainer is built with a model (and a target layer where the method needs one) and called on a batch::

    explainer = GradCAM(model, target_layer="layer4")
    maps = explainer(x, target)          # x: (B, C, H, W) or (B, C, D, H, W); target: int, (B,) or None

and returns maps of shape (B, 1, *spatial) as float tensors on ``x``'s device, with no hidden
normalisation (normalise explicitly with :mod:`medxai.explain.normalize`). ``target=None`` explains the
predicted class of each sample. Gradients are enabled inside the call, so explainers work inside MONAI
evaluators, which run under ``torch.no_grad()``; hooks are registered for the call only and removed
afterwards. The model is used in whatever mode (train/eval) the caller put it in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from medxai.errors import InputError

__all__ = ["Explainer", "resolve_targets", "check_batch", "check_model_input", "check_finite"]


def check_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate an explainer input: a float tensor (B, C, *spatial) with 2 or 3 spatial dims, all finite."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim not in (4, 5):
        raise InputError(f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}.")
    if any(s == 0 for s in x.shape):
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}.")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be floating point, got {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf values ({int((~torch.isfinite(x)).sum())} elements).")
    return x


@contextmanager
def check_model_input(model: torch.nn.Module, x: torch.Tensor, name: str = "x") -> Iterator[None]:
    """Within the block, the model's first layer that runs checks that it can take its input.

    A forward pre-hook on every convolution and linear layer checks the *first one called*: its input must
    have the layer's weight dtype, and (a batched convolution input) its ``in_channels``. A mismatch raises
    :class:`InputError` naming ``x``'s shape and dtype and the layer, where torch would fail inside the
    forward pass with a message about weights, biases or channels. Later layers are not checked (their input
    is the model's own doing); the hooks are removed when the block ends.
    """
    state = {"checked": False}

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if state["checked"]:
            return
        state["checked"] = True
        inp = args[0] if args else None
        weight = getattr(module, "weight", None)
        if not isinstance(inp, torch.Tensor) or not isinstance(weight, torch.Tensor):
            return
        layer = f"the model's first layer ({type(module).__name__})"
        if inp.dtype != weight.dtype:
            raise InputError(
                f"{name} of shape {tuple(x.shape)} reaches {layer} as {inp.dtype}, but its weights are "
                f"{weight.dtype}; cast {name} first, e.g. {name}.to({weight.dtype})."
            )
        if isinstance(module, torch.nn.modules.conv._ConvNd) and inp.ndim == len(module.kernel_size) + 2:
            if inp.shape[1] != module.in_channels:
                raise InputError(
                    f"{name} of shape {tuple(x.shape)} reaches {layer} with {inp.shape[1]} channel(s); it expects "
                    f"{module.in_channels}."
                )

    layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    # TorchScript modules take no Python hooks: they run unchecked, as before
    scripted = isinstance(model, torch.jit.ScriptModule)
    handles = [] if scripted else [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_finite(values: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """Raise :class:`InputError` when ``values`` computed from ``x`` hold NaN/Inf, naming ``x``'s shape and range.

    Finite inputs with huge values (e.g. 1e38 in float32) overflow inside the model; the result is NaN, not
    an explanation.
    """
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise InputError(
            f"{what} hold {int((~finite).sum())} NaN/Inf value(s) for x of shape {tuple(x.shape)} with values in "
            f"[{float(x.min()):g}, {float(x.max()):g}]: the model overflows in {x.dtype}; rescale the input "
            "(e.g. ScaleIntensityd)."
        )
    return values


def resolve_targets(
    target: int | torch.Tensor | list[int] | None, batch_size: int, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Turn ``target`` into a LongTensor (B,): an int broadcasts, ``None`` takes ``logits.argmax(1)``.

    Raises :class:`InputError` when the number of targets differs from the batch size or a target is
    outside ``[0, num_classes)`` (when ``logits`` is given).
    """
    if target is None:
        if logits is None:
            raise InputError("target=None needs the model's logits to pick the predicted class.")
        return logits.detach().argmax(dim=1).long()
    t = torch.as_tensor(target).long().flatten().cpu()
    if t.numel() == 1:
        t = t.expand(batch_size).clone()
    if t.numel() != batch_size:
        raise InputError(f"got {t.numel()} targets for a batch of {batch_size} samples.")
    if logits is not None:
        num_classes = logits.shape[1]
        bad = ((t < 0) | (t >= num_classes)).nonzero().flatten().tolist()
        if bad:
            raise InputError(
                f"target class {t[bad[0]].item()} of sample {bad[0]} is outside [0, {num_classes})."
            )
    return t


class Explainer(ABC):
    """Base class: validates the batch, resolves targets, enables gradients, and calls :meth:`attribute`.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` mapping (B, C, *spatial) to class logits (B, K).
    """

    #: whether maps are non-negative by construction (CAM family after ReLU, saliency magnitudes)
    non_negative: bool = False

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, target: int | torch.Tensor | list[int] | None = None, **kwargs: Any) -> torch.Tensor:
        """Explain ``x`` for ``target``; returns finite maps (B, 1, *spatial) on ``x``'s device.

        Raises
        ------
        InputError
            For a batch that is not a finite, non-empty float tensor (B, C, *spatial), whose dtype or channel
            count the model's first layer does not take (:func:`check_model_input`), a target outside the
            classes, or maps that overflow to NaN/Inf (:func:`check_finite`).
        """
        check_batch(x)
        with torch.enable_grad(), check_model_input(self.model, x):
            maps = self.attribute(x, target, **kwargs)
        expected = (x.shape[0], 1, *x.shape[2:])
        if tuple(maps.shape) != expected:
            raise RuntimeError(f"{type(self).__name__} returned maps {tuple(maps.shape)}, expected {expected}.")
        check_finite(maps, x, f"{type(self).__name__} maps")
        return maps

    @abstractmethod
    def attribute(self, x: torch.Tensor, target: int | torch.Tensor | list[int] | None, **kwargs: Any) -> torch.Tensor:
        """Compute the maps (B, 1, *spatial); subclasses resolve ``target`` with :func:`resolve_targets`."""
