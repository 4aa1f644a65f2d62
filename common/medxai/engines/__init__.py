"""Ignite handlers for MONAI workflows: explanation overlays and learning rate in TensorBoard, and
patient-level classification reports at every evaluation."""

from __future__ import annotations

from medxai.engines.handlers import (
    ClassificationReportHandler,
    ExplanationImageHandler,
    LearningRateLogger,
    case_name_of,
    class_indices_from_engine,
    explainer_maps,
    output_maps,
)
from medxai.engines.snapshots import (
    SnapshotSelector,
    cycle_length,
    cyclic_cosine_scheduler,
    list_snapshots,
    weightwatcher_alpha,
)

__all__ = [
    "ExplanationImageHandler",
    "ClassificationReportHandler",
    "LearningRateLogger",
    "output_maps",
    "explainer_maps",
    "case_name_of",
    "class_indices_from_engine",
    "SnapshotSelector",
    "cyclic_cosine_scheduler",
    "cycle_length",
    "list_snapshots",
    "weightwatcher_alpha",
]
