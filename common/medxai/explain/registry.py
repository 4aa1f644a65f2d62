"""A registry of explainers and a ``create_explainer(name, model, **kwargs)`` factory (timm style).

Explainer classes register themselves with ``@register_explainer("gradcam")``; bundle configs then pick a
method by name, e.g. ``"$medxai.explain.create_explainer('gradcam', @network, target_layer='layer4')"``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

from medxai.errors import InputError

__all__ = ["register_explainer", "create_explainer", "list_explainers"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_explainer(name: str) -> Callable[[T], T]:
    """Class decorator adding an explainer class to the registry under ``name`` (lower case)."""

    def decorator(cls: T) -> T:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"explainer name '{key}' is already registered by {_REGISTRY[key].__name__}.")
        _REGISTRY[key] = cls
        return cls

    return decorator


def list_explainers() -> list[str]:
    """Names of all registered explainers, sorted."""
    return sorted(_REGISTRY)


def create_explainer(name: str, model: torch.nn.Module, **kwargs: Any) -> Any:
    """Build the explainer registered as ``name`` for ``model``; extra keyword arguments go to its constructor."""
    key = name.lower()
    if key not in _REGISTRY:
        raise InputError(f"unknown explainer '{name}'; available: {', '.join(list_explainers())}.")
    return _REGISTRY[key](model, **kwargs)
