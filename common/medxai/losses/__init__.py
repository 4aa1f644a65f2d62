"""Losses: MIL patient-level BCE with the noisy slice-label term (seed 003 eq. 7, 11, 12) and the slice-level baseline.

Bundle configs reference them as ``medxai.losses.<name>``, e.g.
``{"_target_": "medxai.losses.MILLoss", "lambda_noisy": 0.0001}``.
"""

from __future__ import annotations

from medxai.losses.fusion import FusionLoss
from medxai.losses.mil import MILLoss, SliceLevelLoss, one_hot_targets
from medxai.losses.segmentation import CEMinusLogDiceLoss

__all__ = ["CEMinusLogDiceLoss", "FusionLoss", "MILLoss", "SliceLevelLoss", "one_hot_targets"]
