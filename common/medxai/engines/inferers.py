"""Inferers that return a network's intermediate outputs beside its prediction.

MONAI workflows call ``inferer(inputs, network)`` and store what it returns as ``pred``. For the CT MIL
classifier (:class:`medxai.networks.ct_mil.CTMILNet`) the explanation is free: the EDM class activation
maps, slice scores and section probabilities (seed 003 eq. 1-6) come out of the same forward pass as the
patient logits. :class:`DetailsInferer` asks the network for all of them in one call, so a bundle writes
maps, boxes and sentences without a second forward pass; :class:`medxai.transforms.outputs.SplitDetailsd`
then puts the plain patient logits back into ``pred`` (what ``verify_net_in_out``, metrics and MONAI Label
expect) and every detail under its own key.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer

from medxai.errors import InputError

__all__ = ["DetailsInferer", "unwrap_network", "accepts_return_details"]

_RETURN_DETAILS = "return_details"


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers.

    Parameters
    ----------
    network
        A module, possibly wrapped (several times).

    Returns
    -------
    nn.Module
        The innermost wrapped module (``network`` itself when it is not wrapped).
    """
    module = network
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module


def accepts_return_details(network: nn.Module) -> bool:
    """Whether the (unwrapped) network's ``forward`` has a ``return_details`` parameter.

    A ``forward`` whose signature cannot be read (some scripted modules) counts as not accepting it.
    """
    forward = getattr(unwrap_network(network), "forward", None)
    if forward is None:
        return False
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get(_RETURN_DETAILS)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


class DetailsInferer(Inferer):
    """Run a network once and return its dict of outputs (patient logits, maps, slice scores, ...).

    ``network(inputs, *args, return_details=True, **kwargs)`` when the network's ``forward`` accepts
    ``return_details`` (e.g. :class:`~medxai.networks.ct_mil.CTMILNet`); the call goes through the wrapper,
    so ``DistributedDataParallel`` (which forwards keyword arguments) keeps synchronising gradients. Other
    networks must have a ``forward_details(inputs)`` method, which is called on the unwrapped module.

    Calling ``forward_details`` of a module inside ``DistributedDataParallel`` bypasses the wrapper's
    gradient synchronisation, so that fallback is refused for a DDP-wrapped network in training mode with
    gradients enabled (give its ``forward`` a ``return_details`` keyword instead).

    A :class:`~monai.data.MetaTensor` batch (what MONAI's ``DataLoader`` delivers) is passed on as a plain
    tensor: the outputs do not live in the input's geometry, so they must not carry its metadata; the
    maps are put back into it by :class:`medxai.transforms.outputs.ResizeMapToImaged` and ``Invertd``.

    Returns
    -------
    dict of str to torch.Tensor
        Batch-first tensors as the network returns them, e.g. for ``CTMILNet``: ``patient_logits`` (B, C),
        ``patient_probs`` (B, C), ``slice_scores`` (B, D, C), ``section_probs`` (B, S, C), ``cams``
        (B, C, h, w, D), ``features`` (B, D, K). MONAI's postprocessing decollates it into one dict of
        per-sample tensors per case (:class:`medxai.transforms.outputs.SplitDetailsd` takes it from there).

    Examples
    --------
    In a bundle config::

        "inferer": {"_target_": "medxai.engines.inferers.DetailsInferer"}
    """

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, MetaTensor):
            # The details are not images in the input's geometry (maps at trunk resolution, per-slice scores), so
            # the batch's metadata must not ride along; and reshaping a batched MetaTensor into slices and
            # indexing it makes MONAI try to split the batch's metadata by slice, which fails.
            inputs = inputs.as_tensor()
        if accepts_return_details(network):
            kwargs[_RETURN_DETAILS] = True
            outputs = network(inputs, *args, **kwargs)
        else:
            module = unwrap_network(network)
            forward_details = getattr(module, "forward_details", None)
            if not callable(forward_details):
                raise InputError(
                    f"DetailsInferer: network {type(module).__name__} has neither a 'return_details' argument of "
                    "forward nor a forward_details method; use monai.inferers.SimpleInferer for plain outputs."
                )
            if (
                isinstance(network, nn.parallel.DistributedDataParallel)
                and network.training
                and torch.is_grad_enabled()
            ):
                raise InputError(
                    f"DetailsInferer: {type(module).__name__}.forward_details called inside DistributedDataParallel "
                    "in training would skip gradient synchronisation; add a 'return_details' argument to its forward."
                )
            outputs = forward_details(inputs, *args, **kwargs)
        if not isinstance(outputs, dict):
            raise InputError(
                f"DetailsInferer: network {type(unwrap_network(network)).__name__} returned "
                f"{type(outputs).__name__}, expected a dict of outputs."
            )
        return outputs
