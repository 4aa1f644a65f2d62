"""Small adapters that let networks serve in standard bundle workflows: list outputs, MetaTensor inputs."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.data import MetaTensor

from medxai.errors import InputError

__all__ = ["FirstOutput", "plain_tensor"]


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` as a plain ``torch.Tensor``: a MONAI :class:`~monai.data.MetaTensor` loses its
    metadata (a collated batch of MetaTensors cannot be reshaped across samples); anything else is returned
    unchanged.

    Only a MetaTensor is converted: ``as_subclass`` on the fake tensor that ``torch.export`` (the ONNX
    exporter of ``torch.onnx.export(dynamo=True)``) traces with gives an untraceable constant and the export
    fails ("found a fake tensor in the exported program constant's list"). Call it outside TorchScript
    (``if not torch.jit.is_scripting():``), which has no MetaTensor.

    Shapes
    ------
    Any shape; returned unchanged.
    """
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return x


class FirstOutput(nn.Module):
    """Return the first output of a network that returns a list or tuple (else the output unchanged).

    MONAI's :class:`~monai.networks.nets.BasicUNetPlusPlus` returns ``[logits]`` even without deep supervision
    (and ``[logits_0_4, logits_0_3, ...]`` with it); MONAI inferers, ``verify_net_in_out`` and MONAI Label
    expect one tensor. The wrapped network is the attribute ``network`` (state-dict keys ``network.*``).

    Shapes
    ------
    Whatever ``network`` takes; returns its first (B, C, *spatial) output.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise InputError(f"FirstOutput wraps a torch.nn.Module, got {type(network).__name__}.")
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if isinstance(out, (list, tuple)):
            if len(out) == 0:
                raise InputError(f"{type(self.network).__name__} returned an empty {type(out).__name__}.")
            return out[0]
        return out
