"""Ignite handlers and engines for MONAI workflows: explanation overlays and learning rate in TensorBoard,
patient-level classification reports at every evaluation, the thick/thin trainer and the slice-Dice and
latent-space handlers of the ventricle segmentation, the GPU-only ``amp``/channels-last switches, and the
choice of handlers per rank under ``torchrun``."""

from __future__ import annotations

from medxai.engines.distributed import RANK_ZERO_ONLY, handlers_for_rank
from medxai.engines.handlers import (
    ClassificationReportHandler,
    ExplanationImageHandler,
    LearningRateLogger,
    case_name_of,
    class_indices_from_engine,
    explainer_maps,
    output_maps,
)
from medxai.engines.precision import amp_enabled, network_to, on_cuda
from medxai.engines.resume import (
    AtomicCheckpointSaver,
    BestMetricState,
    KeyMetricState,
    ResumableTraining,
    RngStates,
    make_atomic,
)
from medxai.engines.segmentation import LatentSpaceHandler, SliceDiceHandler
from medxai.engines.snapshots import (
    SnapshotSelector,
    cycle_length,
    cyclic_cosine_scheduler,
    list_snapshots,
    weightwatcher_alpha,
)

from medxai.engines.thick_thin import ThickThinTrainer

__all__ = [
    "ThickThinTrainer",
    "SliceDiceHandler",
    "LatentSpaceHandler",
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
    "amp_enabled",
    "network_to",
    "on_cuda",
    "handlers_for_rank",
    "RANK_ZERO_ONLY",
    "ResumableTraining",
    "AtomicCheckpointSaver",
    "make_atomic",
    "RngStates",
    "KeyMetricState",
    "BestMetricState",
]
