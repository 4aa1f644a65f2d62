"""Loading weights files that may come from anyone: ``torch.load(..., weights_only=True)`` and clear errors.

A ``.pt`` file is a pickle; unpickling it with ``weights_only=False`` runs whatever callable it names.
``weights_only=True`` (passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off) restricts
it to tensors and plain containers. torch's refusal is a long message that suggests reloading with
``weights_only=False``; :func:`weights_load_reason` keeps its reason only, and :func:`load_weights` raises an
:class:`~medxai.errors.InputError` that names the file. See ``docs/security.md``.
"""

from __future__ import annotations

import pickle
from os import PathLike
from typing import Any

import torch

from medxai.errors import InputError

__all__ = ["load_weights", "weights_load_reason"]

_TORCH_REASON = "WeightsUnpickler error:"


def weights_load_reason(error: BaseException) -> str:
    """A one-line reason for a failed ``torch.load``.

    For a refused pickle (``pickle.UnpicklingError``) it is torch's ``WeightsUnpickler`` reason, e.g.
    ``"refused by weights_only=True: Unsupported global: GLOBAL io.open was not an allowed global by
    default."``; for any other error, its type and first line.
    """
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        lines = [line.strip() for line in text.splitlines()]
        found = next((line for line in lines if line.startswith(_TORCH_REASON)), None)
        reason = found[len(_TORCH_REASON):].strip() if found else (lines[0] if lines else "")
        reason = reason.split(" Please use ")[0]  # drop torch's advice on how to allow the global
        return f"refused by weights_only=True: {reason} Only load weights files you trust."
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"


def load_weights(path: str | PathLike[str], map_location: Any = "cpu", what: str = "weights file") -> Any:
    """``torch.load(path, map_location=map_location, weights_only=True)``.

    Parameters
    ----------
    path
        The file (a plain state dict, or a mapping of state dicts).
    map_location
        As for :func:`torch.load`.
    what
        How the error message names the file, e.g. ``"ensemble member checkpoint"``.

    Raises
    ------
    InputError
        ``"<what> <path> cannot be read: <reason>"`` for any failure: a pickled object outside torch's
        allow-list, a truncated or foreign file, a missing file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a bad input
        raise InputError(f"{what} {path} cannot be read: {weights_load_reason(error)}") from error
