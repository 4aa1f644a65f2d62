"""Piecewise-constant learning-rate schedules.

Seed 004 (Alshazly et al. 2021, sec. 5.2): "The initial learning rate is set to 0.0003 and is scheduled to
decrease according to the following steps: epoch 50: 0.0001, epoch 70: 0.00003, epoch 80: 0.00001, epoch
90: 0.000003", over 100 epochs. The drops are not one constant factor (1/3, 0.3, 1/3, 0.3), so torch's
``MultiStepLR`` cannot express them; :func:`step_schedule` is torch's ``LambdaLR`` with a piecewise-constant
factor. Epochs count from 0 and the scheduler is stepped once per epoch (MONAI's ``LrScheduleHandler``
with ``epoch_level=True``): epochs 0-49 train at 3e-4, 50-69 at 1e-4, 70-79 at 3e-5, 80-89 at 1e-5 and
90-99 at 3e-6. The cyclic cosine annealing of seed 002 is
:func:`medxai.engines.snapshots.cyclic_cosine_scheduler`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from medxai.errors import InputError

__all__ = ["PAPER_MILESTONES", "PAPER_VALUES", "PiecewiseConstant", "step_schedule"]

#: Seed 004 sec. 5.2: the epochs at which the learning rate drops, and the rates before and after them.
PAPER_MILESTONES = (50, 70, 80, 90)
PAPER_VALUES = (3e-4, 1e-4, 3e-5, 1e-5, 3e-6)


class PiecewiseConstant:
    """Learning-rate factor ``values[i] / values[0]`` for ``milestones[i - 1] <= epoch < milestones[i]``.

    A callable object rather than a closure, so that ``LambdaLR.state_dict()`` saves it (with plain tuples,
    loadable with ``weights_only=True``).

    Parameters
    ----------
    milestones
        Strictly increasing epochs (>= 1) at which the rate changes.
    values
        The rates, one more than ``milestones`` (all > 0).
    """

    def __init__(self, milestones: Sequence[int], values: Sequence[float]) -> None:
        self.milestones, self.values = _check(milestones, values)

    def rate(self, epoch: int) -> float:
        """The absolute rate at ``epoch`` (``values[i]``)."""
        return self.values[bisect.bisect_right(self.milestones, epoch)]

    def __call__(self, epoch: int) -> float:
        return self.rate(epoch) / self.values[0]


def _check(milestones: Sequence[int], values: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    steps = tuple(milestones)
    rates = tuple(values)
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in steps) or any(
        b <= a for a, b in zip(steps, steps[1:])
    ):
        raise InputError(f"step_schedule: milestones must be strictly increasing integers >= 1, got {milestones!r}.")
    if len(rates) != len(steps) + 1:
        raise InputError(
            f"step_schedule: values must hold one more rate than milestones ({len(steps) + 1}), got {len(rates)}: "
            f"{values!r}."
        )
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 for v in rates):
        raise InputError(f"step_schedule: values must be finite numbers > 0, got {values!r}.")
    return steps, tuple(float(v) for v in rates)


def step_schedule(
    optimizer: Optimizer,
    milestones: Sequence[int] = PAPER_MILESTONES,
    values: Sequence[float] = PAPER_VALUES,
) -> LambdaLR:
    """Seed 004's step schedule (sec. 5.2) as ``LambdaLR``, stepped once per epoch.

    Each parameter group's learning rate is multiplied by ``values[i] / values[0]`` from epoch
    ``milestones[i - 1]`` on, so an optimizer built with ``lr=values[0]`` (as :func:`medxai.optim.lamb`'s
    default 3e-4) follows the rates in ``values`` exactly; another lr scales the whole schedule.

    Parameters
    ----------
    optimizer
        The optimizer, e.g. from :func:`medxai.optim.lamb`.
    milestones
        Strictly increasing epochs (counted from 0) at which the rate changes; default ``(50, 70, 80, 90)``.
    values
        ``len(milestones) + 1`` rates; default ``(3e-4, 1e-4, 3e-5, 1e-5, 3e-6)``.

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR

    Raises
    ------
    InputError
        When ``len(values) != len(milestones) + 1``, milestones are not strictly increasing positive
        integers, or a rate is not a finite positive number, naming the values.
    """
    return LambdaLR(optimizer, PiecewiseConstant(milestones, values))
