"""Optimizers and learning-rate schedules: LAMB via timm and seed 004's step schedule.

Bundle configs reference them as ``medxai.optim.<name>``, e.g.
``"optimizer": "$medxai.optim.lamb(@network.parameters())"`` and
``"lr_scheduler": "$medxai.optim.step_schedule(@optimizer)"``.
"""

from __future__ import annotations

from medxai.optim.lamb import lamb
from medxai.optim.schedules import PiecewiseConstant, step_schedule

__all__ = ["lamb", "PiecewiseConstant", "step_schedule"]
