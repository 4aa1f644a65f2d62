"""Per-case metrics gathered over an evaluation: explanation localisation and slice-level classification.

Two ignite handlers for MONAI evaluators, written like :class:`~medxai.engines.handlers.ClassificationReportHandler`:

- :class:`LocalizationMetricsHandler`: for every case whose lesion mask is not empty, the pointing game and
  the energy-based pointing game of its explanation map against the mask (2D or 3D), plus the chance level
  (the mask's share of the image, what a uniform map scores in energy), written as JSON and put in
  ``engine.state.metrics``. This is how the bundles measure that explanations "land on the lesions".
- :class:`SliceLevelReportHandler`: when the datalist has per-slice labels, the slice scores of a MIL
  network (e.g. ``slice_scores`` (D, C) of :class:`~medxai.networks.ct_mil.CTMILNet`) against them: the
  image-level metrics of seed 003 Table 2 (lower half).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from medxai.engines.handlers import _as_items, case_name_of
from medxai.errors import InputError
from medxai.metrics.classification import classification_report, save_report_json
from medxai.metrics.localization import energy_pointing_game, pointing_game

__all__ = ["LocalizationMetricsHandler", "SliceLevelReportHandler"]


def _plain(value: Any) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.as_subclass(torch.Tensor).detach().float().cpu()


def _resize_to(map_: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A (1, *spatial') map resized (linear) to ``shape``; unchanged when it already has that shape."""
    if tuple(map_.shape[1:]) == tuple(shape):
        return map_
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(map_[None], size=tuple(shape), mode=mode, align_corners=False)[0]


class _PerCaseHandler(ABC):
    """Collects one record per case at ITERATION_COMPLETED, writes at EPOCH_COMPLETED (rank 0)."""

    def __init__(self, output_dir: str | Path, filename: str, image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.image_key = image_key
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.records.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def collect(self, engine: Engine) -> None:
        outputs = _as_items(engine.state.output, "output")
        # MONAI evaluators keep datalist fields (masks, slice labels) in engine.state.batch and only
        # image/label/pred (+ postprocessing keys) in engine.state.output: read both, output first.
        batch = _as_items(engine.state.batch, "batch")
        if len(batch) != len(outputs):
            batch = [{}] * len(outputs)
        for out_item, batch_item in zip(outputs, batch):
            item = {**batch_item, **out_item}
            name = case_name_of(item, self.image_key) or f"case-{len(self.records):05d}"
            record = self.measure(item, name)
            if record is not None:
                self.records.append(record)

    @abstractmethod
    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        """The record of one decollated case, or ``None`` to skip it."""

    def gathered(self) -> list[dict[str, Any]]:
        if idist.get_world_size() > 1:
            return [r for part in idist.all_gather(self.records) for r in part]  # type: ignore[union-attr]
        return list(self.records)


class LocalizationMetricsHandler(_PerCaseHandler):
    """Pointing game and energy share of each case's map against its lesion mask.

    Parameters
    ----------
    output_dir
        Where ``<prefix>localization.json`` is written.
    map_key
        Key of the explanation map (1, *spatial) (resized to the mask's shape when it differs).
    mask_key
        Key of the lesion mask (1, *spatial), any positive value is lesion. Cases without the key or with an
        empty mask are skipped (they have nothing to point at).
    tolerance
        Pointing-game tolerance in voxels.
    prefix
        Prefix of the metric names in ``engine.state.metrics`` and of the file.
    """

    def __init__(
        self,
        output_dir: str | Path,
        map_key: str = "cam",
        mask_key: str = "lesion_mask",
        tolerance: float = 0.0,
        prefix: str = "",
        image_key: str = "image",
    ) -> None:
        super().__init__(output_dir, f"{prefix}localization.json", image_key)
        self.map_key, self.mask_key, self.tolerance, self.prefix = map_key, mask_key, float(tolerance), prefix

    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        if self.mask_key not in item or self.map_key not in item:
            return None
        mask = (_plain(item[self.mask_key]) > 0).float()
        if mask.ndim < 3 or not bool(mask.any()):
            return None
        map_ = _resize_to(_plain(item[self.map_key]), mask.shape[1:])
        if map_.shape[0] != 1:
            raise InputError(f"case {name}: map '{self.map_key}' must have one channel, got shape {tuple(map_.shape)}.")
        return {
            "case": name,
            "pointing_game": float(pointing_game(map_[None], mask[None], tolerance=self.tolerance)[0]),
            "energy_share": float(energy_pointing_game(map_[None], mask[None])[0]),
            "chance_energy_share": float(mask.mean()),
        }

    def __call__(self, engine: Engine) -> None:
        records = self.gathered()
        summary: dict[str, Any] = {"cases": len(records)}
        for key in ("pointing_game", "energy_share", "chance_energy_share"):
            values = [r[key] for r in records if not math.isnan(r[key])]
            summary[f"mean_{key}"] = float(np.mean(values)) if values else None
            engine.state.metrics[f"{self.prefix}{key}"] = summary[f"mean_{key}"] if values else float("nan")
        if idist.get_rank() == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            content = {"summary": summary, "per_case": records, "map_key": self.map_key, "mask_key": self.mask_key}
            (self.output_dir / self.filename).write_text(json.dumps(content, indent=2) + "\n")


class SliceLevelReportHandler(_PerCaseHandler):
    """Image-level (slice-level) classification report from per-slice scores and per-slice labels.

    Parameters
    ----------
    scores_key
        Key of the slice scores (D, C) (logits; the ``activation`` turns them into probabilities).
    labels_key
        Key of the per-slice labels (D,) 0/1 (e.g. the CT demo set's ``slice_labels``). Cases without it,
        or whose label count differs from the slice count, are skipped and counted.
    positive_class
        Column of the scores that is the positive class.
    """

    def __init__(
        self,
        output_dir: str | Path,
        scores_key: str = "slice_scores",
        labels_key: str = "slice_labels",
        positive_class: int = 1,
        activation: str = "sigmoid",
        class_names: Sequence[str] | None = None,
        prefix: str = "slice_",
        image_key: str = "image",
    ) -> None:
        super().__init__(output_dir, f"{prefix}metrics.json", image_key)
        if activation not in ("sigmoid", "softmax", "none"):
            raise InputError(f"activation must be 'sigmoid', 'softmax' or 'none', got {activation!r}.")
        self.scores_key, self.labels_key = scores_key, labels_key
        self.positive_class, self.activation, self.prefix = int(positive_class), activation, prefix
        self.class_names = class_names
        self.skipped = 0

    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        if self.scores_key not in item or self.labels_key not in item:
            self.skipped += 1
            return None
        scores = _plain(item[self.scores_key])
        labels = _plain(item[self.labels_key]).flatten()
        if scores.ndim != 2 or scores.shape[0] != labels.numel():
            self.skipped += 1
            return None
        if self.activation == "sigmoid":
            scores = scores.sigmoid()
        elif self.activation == "softmax":
            scores = scores.softmax(dim=1)
        return {"case": name, "scores": scores[:, self.positive_class].tolist(), "labels": labels.long().tolist()}

    def __call__(self, engine: Engine) -> None:
        records = self.gathered()
        if not records:
            return
        y_score = np.concatenate([r["scores"] for r in records])
        y_true = np.concatenate([r["labels"] for r in records])
        report = classification_report(y_true, y_score, class_names=self.class_names, positive_class=1)
        report["cases"], report["skipped_cases"] = len(records), self.skipped
        for key in ("accuracy", "sensitivity", "specificity", "auc"):
            value = report.get(key)
            engine.state.metrics[f"{self.prefix}{key}"] = float("nan") if value is None else float(value)
        if idist.get_rank() == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_report_json(report, self.output_dir / self.filename)
