"""Small adapters that let MONAI networks with list outputs serve in standard bundle workflows."""

from __future__ import annotations

import torch
import torch.nn as nn

from medxai.errors import InputError

__all__ = ["FirstOutput"]


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
