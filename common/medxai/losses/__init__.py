"""Losses: MIL patient-level BCE with the noisy slice-label term (seed 003 eq. 7, 11, 12) and the slice-level baseline,
CE - log(Dice) (seed 001), the fusion loss (seed 001) and the divergence-to-uniform loss on unlabelled slices
(seed 003 eq. 16-17).

Bundle configs reference them as ``medxai.losses.<name>``, e.g.
``{"_target_": "medxai.losses.MILLoss", "lambda_noisy": 0.0001}``.
"""

from __future__ import annotations

from medxai.losses.fusion import FusionLoss
from medxai.losses.mil import MILLoss, SliceLevelLoss, one_hot_targets
from medxai.losses.segmentation import CEMinusLogDiceLoss
from medxai.losses.uncertainty import UNIFORM_DIVERGENCES, UniformDivergenceLoss, uniform_divergence_loss

__all__ = [
    "CEMinusLogDiceLoss",
    "FusionLoss",
    "MILLoss",
    "SliceLevelLoss",
    "one_hot_targets",
    "UNIFORM_DIVERGENCES",
    "UniformDivergenceLoss",
    "uniform_divergence_loss",
]
