"""Which workflow handlers run on which rank of a ``torchrun`` job.

Model-zoo's ``multi_gpu_train.json`` drops the rank-0-only handlers with a slice,
``@train#handlers[: -2 if dist.get_rank() > 0 else None]``, which is right only while those handlers are the
last two of the list; adding a handler to ``train.json`` or running with ``--tracking mlflow`` (which appends
an ``MLFlowHandler``) silently changes what the other ranks run. :func:`handlers_for_rank` picks them by type
instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import StatsHandler
from monai.handlers.tensorboard_handlers import TensorBoardHandler
from monai.utils import optional_import

from medxai.errors import InputError

MLFlowHandler, _has_mlflow_handler = optional_import("monai.handlers", name="MLFlowHandler")
ClearMLHandler, _has_clearml_handler = optional_import("monai.handlers", name="ClearMLHandler")

__all__ = ["RANK_ZERO_ONLY", "handlers_for_rank"]

#: Handler types that log or track and so run on rank 0 only: MONAI's console ``StatsHandler``, every
#: TensorBoard handler (MONAI's and :mod:`medxai.engines.handlers`') and the experiment trackers.
#: ``CheckpointSaver`` is not among them: ignite's ``DiskSaver`` already writes on rank 0 only.
RANK_ZERO_ONLY: tuple[type, ...] = (StatsHandler, TensorBoardHandler) + tuple(
    handler for handler, found in ((MLFlowHandler, _has_mlflow_handler), (ClearMLHandler, _has_clearml_handler))
    if found
)  # fmt: skip


def handlers_for_rank(handlers: Sequence[Any] | None, rank: int) -> list[Any]:
    """The handlers of ``handlers`` that ``rank`` runs: all of them on rank 0, on other ranks those that are
    not instances of :data:`RANK_ZERO_ONLY` (e.g. ``ValidationHandler``, ``LrScheduleHandler``,
    ``CheckpointSaver``). ``None`` entries (disabled config items) are dropped; ``handlers=None`` gives ``[]``.
    """
    if int(rank) < 0:
        raise InputError(f"rank must be >= 0, got {rank}.")
    kept = [handler for handler in (handlers or []) if handler is not None]
    return kept if int(rank) == 0 else [handler for handler in kept if not isinstance(handler, RANK_ZERO_ONLY)]
