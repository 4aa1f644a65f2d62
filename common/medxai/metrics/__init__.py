"""Metrics: patient-level classification, slice-wise segmentation Dice, and explanation quality (perturbation
curves, localisation, sanity).

All take batches of 2D (B, 1, H, W) or 3D (B, 1, D, H, W) maps and masks and return one value per sample.
"""

from __future__ import annotations

from medxai.metrics.classification import classification_report, plot_confusion, plot_pr, plot_roc, roc_pr_curves
from medxai.metrics.localization import (
    binarize_maps,
    energy_pointing_game,
    overlap_scores,
    overlap_sweep,
    pointing_game,
    sample_mean,
)
from medxai.metrics.perturbation_curves import aopc_morf, aoppc, average_drop_increase, deletion, insertion
from medxai.metrics.sanity import cascading_randomization
from medxai.metrics.segmentation import dice_table, slice_dice

__all__ = [
    "classification_report",
    "roc_pr_curves",
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "aoppc",
    "deletion",
    "insertion",
    "aopc_morf",
    "average_drop_increase",
    "pointing_game",
    "energy_pointing_game",
    "binarize_maps",
    "overlap_scores",
    "overlap_sweep",
    "sample_mean",
    "cascading_randomization",
    "slice_dice",
    "dice_table",
]
