"""The LAMB optimizer with the settings of Alshazly et al. 2021 (seed 004 sec. 5.2), from timm.

"The networks are optimized by applying the LAMB optimizer [12] on a binary cross-entropy loss. The
initial learning rate is set to 0.0003 [...] we apply a high weight decay of 1 for regularization."
:func:`lamb` returns :class:`timm.optim.Lamb` (You et al. 2020, NVIDIA's NVLAMB variant) with the paper's
learning rate and weight decay as defaults; nothing of LAMB is reimplemented. The learning-rate steps of
sec. 5.2 are :func:`medxai.optim.schedules.step_schedule`.

What timm's ``Lamb`` does per step, for each parameter tensor ``w`` (its ``foreach`` and single-tensor
paths agree):

- gradients are first divided by ``max(1, ||g||_global / max_grad_norm)`` (``max_grad_norm=1.0`` by
  default: global gradient-norm clipping, as NVLAMB; ``None`` disables it);
- ``u = m_hat / (sqrt(v_hat) + eps)`` is Adam's bias-corrected direction, and with ``weight_decay != 0``
  ``u += weight_decay * w`` (L2 decay added to the direction, not decoupled, unless ``decoupled_decay``);
- layer-wise adaptation: ``u *= ||w|| / ||u||`` (1 when either norm is 0), applied only when
  ``weight_decay != 0`` or ``always_adapt=True``; so with the paper's ``weight_decay=1`` every tensor with
  nonzero weights moves by exactly ``lr * ||w||`` per step, while with ``weight_decay=0`` and
  ``always_adapt=False`` (timm's default) the step is plain Adam's;
- ``w -= lr * u``.

The paper's weight decay applies to every parameter (biases and normalisation weights included); pass
``timm.optim.param_groups_weight_decay(model, 1.0)`` as ``params`` to exempt them instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import Lamb

from medxai.errors import InputError

__all__ = ["lamb"]


def lamb(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 3e-4,
    weight_decay: float = 1.0,
    **kwargs: Any,
) -> Lamb:
    """:class:`timm.optim.Lamb` with seed 004's defaults (sec. 5.2: lr 3e-4, weight decay 1).

    Parameters
    ----------
    params
        Parameters or parameter groups (e.g. ``model.parameters()``).
    lr
        Learning rate (> 0); step it with :func:`medxai.optim.schedules.step_schedule`.
    weight_decay
        L2 weight decay (>= 0), added to the Adam direction before the trust ratio (see the module docstring).
    kwargs
        Other arguments of :class:`timm.optim.Lamb`: ``betas=(0.9, 0.999)``, ``eps=1e-6``,
        ``max_grad_norm=1.0``, ``trust_clip=False``, ``always_adapt=False``, ``decoupled_decay=False``, ...

    Returns
    -------
    timm.optim.Lamb

    Raises
    ------
    InputError
        For ``lr <= 0`` or ``weight_decay < 0`` (or non-finite values), naming the value.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"lamb: lr must be a finite number > 0, got {lr!r}.")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise InputError(f"lamb: weight_decay must be a finite number >= 0, got {weight_decay!r}.")
    return Lamb(params, lr=float(lr), weight_decay=float(weight_decay), **kwargs)
