"""GPU-only speed switches of the bundle configs: mixed precision (``amp``) and channels-last memory format.

Both are CUDA features. On a CPU device the bundles ignore them: :func:`amp_enabled` is false there (MONAI's
``SupervisedTrainer(amp=True)`` would otherwise create a ``torch.GradScaler`` that warns "CUDA is not
available" and run ``torch.autocast("cuda")`` on CPU tensors), and :func:`network_to` moves the network
without changing its memory format, so a CPU run with the switches on computes exactly what it computes with
them off.
"""

from __future__ import annotations

import torch

from medxai.errors import InputError

__all__ = ["on_cuda", "amp_enabled", "network_to"]


def on_cuda(device: torch.device | str) -> bool:
    """Whether ``device`` (``torch.device`` or its name, e.g. ``"cuda:0"``) is a CUDA device."""
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError) as error:
        raise InputError(f"device {device!r} is not a torch device: {error}") from error


def amp_enabled(amp: bool, device: torch.device | str) -> bool:
    """The ``amp`` argument for MONAI's trainers and evaluators: ``amp`` on a CUDA ``device``, else ``False``."""
    return bool(amp) and on_cuda(device)


def network_to(network: torch.nn.Module, device: torch.device | str, channels_last: bool = False) -> torch.nn.Module:
    """Move ``network`` to ``device``; on CUDA with ``channels_last``, also store its 4D parameters and buffers
    (2D convolution kernels, (out, in, kH, kW)) as ``torch.channels_last`` and 5D ones (3D kernels) as
    ``torch.channels_last_3d``.

    ``torch.nn.Module.to(memory_format=...)`` takes one format for every tensor and fails on 5D tensors with
    ``channels_last``; this picks the format by dimension. Convolutions whose weight is channels-last return
    channels-last outputs, so the layers after the first run in that format without converting the inputs.
    On a CPU ``device`` the memory format is left as it is (the switch is ignored). Returns ``network``
    (moved in place, as ``Module.to`` does).
    """
    network = network.to(torch.device(device))
    if not (channels_last and on_cuda(device)):
        return network

    def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        if tensor.dim() == 5:
            return tensor.contiguous(memory_format=torch.channels_last_3d)
        return tensor

    return network._apply(_channels_last)
