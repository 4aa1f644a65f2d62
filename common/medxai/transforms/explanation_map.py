"""Post-hoc explanation maps inside a MONAI post-processing chain.

:class:`ExplanationMapd` runs an explainer of :mod:`medxai.explain` (Grad-CAM, Grad-CAM++, LRP, ...) on one
decollated case's network input and stores the map as a :class:`~monai.data.MetaTensor` that carries the
input's metadata and applied operations, so ``Invertd`` can bring it back to the original image's grid.
The explained class is the predicted one (arg-max of ``pred_key``), as in seed 002 Figs. 2-4, unless a
``target_key`` names the class to explain.

MONAI's evaluators run post-processing *after* leaving their ``eval_mode`` block, so a network built in
``train`` mode is back in it there; the explainer's model is therefore put in ``eval`` mode for the call
(BatchNorm would otherwise normalise the single image by its own statistics and overwrite the running
statistics that later cases are predicted with).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Callable

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medxai.engines.explain_handlers import evaluation_mode
from medxai.errors import InputError
from medxai.transforms.checks import case_name

__all__ = ["ExplanationMapd"]


class ExplanationMapd(MapTransform):
    """Add ``explainer(image, target)`` of one case under ``output_key``.

    Parameters
    ----------
    keys
        The network input (C, *spatial) of the case (one key).
    explainer
        ``explainer(x (1, C, *spatial), target: list[int]) -> maps (1, 1, *spatial)``; its ``model``
        attribute (:class:`medxai.explain.base.Explainer`), when present, is run in ``eval`` mode.
    output_key
        Where the map (1, *spatial) goes.
    pred_key
        Class scores or probabilities (K,): the explained class is their arg-max.
    target_key
        When given, the class to explain is read from it instead (an integer or a one-hot vector).
    device
        Device the network is on (the input is moved there).
    """

    def __init__(
        self,
        keys: Hashable,
        explainer: Callable[..., torch.Tensor],
        output_key: str = "map",
        pred_key: str = "pred",
        target_key: str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise InputError(f"ExplanationMapd explains one input key, got {list(self.keys)}.")
        self.explainer = explainer
        self.output_key, self.pred_key, self.target_key = output_key, pred_key, target_key
        self.device = torch.device(device)

    def _target(self, d: Mapping[Hashable, Any]) -> int:
        key = self.target_key or self.pred_key
        if key not in d:
            raise InputError(f"ExplanationMapd: key '{key}' is missing; the data has {sorted(map(str, d))}.")
        value = torch.as_tensor(d[key])
        if value.numel() == 0:
            raise InputError(
                f"ExplanationMapd: key '{key}' is empty (shape {tuple(value.shape)}); there is no class to explain."
            )
        return int(value.argmax()) if value.numel() > 1 else int(value.item())

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        image = d[key]
        x = (image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image))[None].float()
        model = getattr(self.explainer, "model", None)
        try:
            if isinstance(model, torch.nn.Module):
                with evaluation_mode(model):
                    heat = self.explainer(x.to(self.device), [self._target(d)])
            else:
                heat = self.explainer(x.to(self.device), [self._target(d)])
        except InputError as err:
            where = f"case '{case_name(image)}' (key '{key}', shape {tuple(image.shape)})"
            raise InputError(f"ExplanationMapd: {where}: {err}") from err
        heat = heat[0].detach().float().cpu()
        if isinstance(image, MetaTensor):
            heat = MetaTensor(heat, meta=dict(image.meta), applied_operations=list(image.applied_operations))
        d[self.output_key] = heat
        return d
