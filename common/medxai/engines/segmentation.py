"""Evaluation handlers of the thick/thin ventricle segmentation (seed 003 Tables 4-5, Fig. 17).

- :class:`SliceDiceHandler`: slice-wise Dice of every evaluated volume, grouped by slice thickness (thick,
  thin, mixed: Table 4's row), written as ``dice_table.json``, ``slice_dice.csv`` and a plot, and put in
  ``engine.state.metrics`` as ``slice_dice_<group>``.
- :class:`LatentSpaceHandler`: the encoder bottleneck features of every evaluated slice with ventricles,
  their Dice, the PCA plane and the MLP Dice landscape of sec. 3.3.3 (Fig. 17), saved as PNG, CSV and
  a pickle-free ``.npz`` that ``explain.json`` reuses to predict the expected Dice of new slices.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medxai.engines.case_metrics import _PerCaseHandler, _plain
from medxai.errors import InputError
from medxai.explain.latent_space import (
    cross_validated_error,
    fit_latent_landscape,
    latent_features,
    plot_latent_landscape,
    save_latent_landscape,
)
from medxai.metrics.segmentation import class_index_volume, dice_table, slice_dice

__all__ = ["SliceDiceHandler", "LatentSpaceHandler", "volume_slices"]


def _group_of(item: Mapping[str, Any], group_key: str) -> str:
    value = item.get(group_key, "all")
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return str(value)


def volume_slices(image: torch.Tensor, slice_axis: int = -1) -> torch.Tensor:
    """The slices of a channel-first volume (C, X, Y, Z) as a 2D batch (S, C, H, W) along ``slice_axis``."""
    image = _plain(image)
    if image.dim() != 4:
        raise InputError(f"expected a channel-first volume (C, X, Y, Z), got shape {tuple(image.shape)}.")
    axis = slice_axis % 3 + 1
    return torch.movedim(image, axis, 0)


class SliceDiceHandler(_PerCaseHandler):
    """Slice-wise Dice of each volume (all foreground classes together), pooled by ``group_key``.

    Parameters
    ----------
    output_dir
        Where ``<prefix>dice_table.json``, ``<prefix>slice_dice.csv`` and ``<prefix>dice_by_group.png`` go
        (``None``: only ``engine.state.metrics``).
    group_key
        Datalist field that groups the volumes (``"thickness"``: thick / thin).
    pred_key, label_key
        Class-index or one-hot volumes (C, X, Y, Z) in the engine's output.
    slice_axis
        Axis of the slices in (X, Y, Z).
    prefix
        Prefix of the files and of the metric names (``<prefix>slice_dice_thick`` ...).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        group_key: str = "thickness",
        pred_key: str = "pred",
        label_key: str = "label",
        slice_axis: int = -1,
        prefix: str = "",
        image_key: str = "image",
    ) -> None:
        super().__init__(output_dir or ".", f"{prefix}dice_table.json", image_key)
        self.write = output_dir is not None
        self.group_key, self.pred_key, self.label_key = group_key, pred_key, label_key
        self.slice_axis, self.prefix = int(slice_axis), prefix

    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        if self.label_key not in item:
            raise InputError(f"case {name}: no '{self.label_key}' to compute the Dice against.")
        dice, area = slice_dice(item[self.pred_key], item[self.label_key], self.slice_axis)
        return {"case": name, "group": _group_of(item, self.group_key), "dice": dice.tolist(), "area": area.tolist()}

    def rows(self) -> list[dict[str, Any]]:
        """One row per slice with foreground in the reference: case, group, slice, pixels, Dice."""
        rows = []
        for record in self.gathered():
            for index, (value, area) in enumerate(zip(record["dice"], record["area"])):
                if area > 0:
                    rows.append({"case": record["case"], "group": record["group"], "slice": index,
                                 "reference_pixels": int(area), "dice": float(value)})  # fmt: skip
        return rows

    def __call__(self, engine: Engine) -> None:
        rows = self.rows()
        table = dice_table([r["group"] for r in rows], [r["dice"] for r in rows])
        for group, summary in table.items():
            engine.state.metrics[f"{self.prefix}slice_dice_{group}"] = (
                float("nan") if summary["mean"] is None else summary["mean"]
            )
        if not self.write or idist.get_rank() != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        content = {"metric": "Dice of all ventricle classes together, per slice with reference ventricle pixels",
                   "volumes": len(self.gathered()), "table": table}  # fmt: skip
        (self.output_dir / self.filename).write_text(json.dumps(content, indent=2) + "\n")
        with open(self.output_dir / f"{self.prefix}slice_dice.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["case", "group", "slice", "reference_pixels", "dice"])
            writer.writeheader()
            writer.writerows(rows)
        self._plot(rows, table, self.output_dir / f"{self.prefix}dice_by_group.png")

    @staticmethod
    def _plot(rows: Sequence[Mapping[str, Any]], table: Mapping[str, Any], path: Path) -> None:
        groups = list(table)
        figure = Figure(figsize=(1.8 + 1.4 * len(groups), 3.6))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        rng = np.random.default_rng(0)
        for position, group in enumerate(groups):
            values = [r["dice"] for r in rows if group == "mixed" or r["group"] == group]
            if values:
                axes.boxplot([values], positions=[position], widths=0.5, showfliers=False)
                axes.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=6, alpha=0.5)
        axes.set_xticks(range(len(groups)), [f"{g}\n(n={table[g]['n_slices']})" for g in groups])
        axes.set_ylim(-0.02, 1.02)
        axes.set_ylabel("slice Dice")
        figure.tight_layout()
        figure.savefig(path, dpi=110)


class LatentSpaceHandler(_PerCaseHandler):
    """The latent-space explanation of seed 003 sec. 3.3.3 (Fig. 17) over an evaluation's slices.

    For every evaluated volume, the slices with reference foreground are run through ``network`` (in eval
    mode, in chunks) with a forward hook on ``layer`` (the encoder bottleneck), globally average-pooled
    (``pool``); each slice's Dice comes from the evaluator's prediction. At the end of the evaluation the
    features are projected to 2D by PCA, an MLP is fitted from the 2D point to the Dice
    (:func:`medxai.explain.latent_space.fit_latent_landscape`) and the smoothed landscape is plotted with
    example slices of low and high Dice. Files in ``output_dir``: ``latent_space.png``,
    ``latent_space.csv`` (case, group, slice, pc1, pc2, dice, expected_dice) and ``latent_landscape.npz``
    (also copied to ``landscape_path`` when given, e.g. ``models/latent_landscape.npz`` for explain.json).

    Parameters
    ----------
    network
        The segmentation network (2D, applied to slices (S, C, H, W)).
    layer
        Dotted name of the bottleneck layer (e.g. ``SubpixelUNet.latent_layer``, ``"down_4"`` of
        MONAI's BasicUNet).
    pool
        ``"avg"`` (default), ``"max"`` or ``"flatten"`` (see :func:`~medxai.explain.embedding.extract_features`).
    thumbnail_size
        Side of the slice thumbnails kept for the figure.
    landscape_kwargs
        Passed to :func:`~medxai.explain.latent_space.fit_latent_landscape`.
    cv_folds
        Folds of :func:`~medxai.explain.latent_space.cross_validated_error` (0: skip): the held-out mean
        absolute error of the landscape's expected Dice, against predicting the mean Dice, goes into
        ``engine.state.metrics`` (``latent_cv_mae``, ``latent_mean_predictor_mae``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        network: torch.nn.Module,
        layer: str,
        group_key: str = "thickness",
        pred_key: str = "pred",
        label_key: str = "label",
        slice_axis: int = -1,
        pool: str = "avg",
        batch_size: int = 32,
        thumbnail_size: int = 64,
        landscape_path: str | Path | None = None,
        landscape_kwargs: Mapping[str, Any] | None = None,
        cv_folds: int = 5,
        image_key: str = "image",
    ) -> None:
        super().__init__(output_dir, "latent_space.csv", image_key)
        self.cv_folds = int(cv_folds)
        self.network, self.layer, self.group_key = network, layer, group_key
        self.pred_key, self.label_key, self.slice_axis = pred_key, label_key, int(slice_axis)
        self.pool, self.batch_size, self.thumbnail_size = pool, int(batch_size), int(thumbnail_size)
        self.landscape_path = None if landscape_path is None else Path(landscape_path)
        self.landscape_kwargs = dict(landscape_kwargs or {})

    def measure(self, item: Mapping[str, Any], name: str) -> dict[str, Any] | None:
        dice, area = slice_dice(item[self.pred_key], item[self.label_key], self.slice_axis)
        keep = np.flatnonzero(area > 0)
        if keep.size == 0:
            return None
        slices = volume_slices(item[self.image_key], self.slice_axis)[torch.as_tensor(keep)]
        features = latent_features(self.network, slices, self.layer, self.pool, self.batch_size)
        thumbs = F.interpolate(slices[:, :1].float(), size=(self.thumbnail_size,) * 2, mode="area")[:, 0]
        return {"case": name, "group": _group_of(item, self.group_key), "slices": keep.tolist(),
                "dice": dice[keep].tolist(), "features": features, "thumbnails": thumbs.numpy()}  # fmt: skip

    def __call__(self, engine: Engine) -> None:
        records = self.gathered()
        if idist.get_rank() != 0:
            return
        if sum(len(r["slices"]) for r in records) < 3:
            raise InputError("LatentSpaceHandler: fewer than 3 evaluated slices with ventricles; nothing to map.")
        features = np.concatenate([r["features"] for r in records])
        dice = np.concatenate([np.asarray(r["dice"]) for r in records])
        groups = [r["group"] for r in records for _ in r["slices"]]
        landscape = fit_latent_landscape(features, dice, **self.landscape_kwargs)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # a slice's thumbnail is rotated so that anterior is up (RAS volumes: Y grows anteriorly)
        images = np.concatenate([np.rot90(r["thumbnails"], k=1, axes=(1, 2)) for r in records])
        plot_latent_landscape(landscape, self.output_dir / "latent_space.png", images=images, groups=groups)
        save_latent_landscape(landscape, self.output_dir / "latent_landscape.npz")
        if self.landscape_path is not None:
            save_latent_landscape(landscape, self.landscape_path)
        expected = landscape.predict_dice(landscape.coords)
        with open(self.output_dir / self.filename, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["case", "group", "slice", "pc1", "pc2", "dice", "expected_dice"])
            index = 0
            for record in records:
                for slice_index in record["slices"]:
                    pc1, pc2 = landscape.coords[index]
                    writer.writerow([record["case"], record["group"], slice_index, f"{pc1:.5f}", f"{pc2:.5f}",
                                     f"{dice[index]:.5f}", f"{expected[index]:.5f}"])  # fmt: skip
                    index += 1
        engine.state.metrics["latent_fit_r2"] = float(landscape.fit_r2)
        if self.cv_folds and len(dice) >= 2 * self.cv_folds:
            errors = cross_validated_error(features, dice, self.cv_folds, **self.landscape_kwargs)
            engine.state.metrics["latent_cv_mae"] = errors["cv_mae"]
            engine.state.metrics["latent_mean_predictor_mae"] = errors["mean_predictor_mae"]
