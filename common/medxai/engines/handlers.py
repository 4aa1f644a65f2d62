"""Ignite handlers for MONAI workflows: explanation overlays and learning rate in TensorBoard, and a
patient-level classification report (metrics JSON, ROC/PR/confusion plots, per-case CSV) at every
evaluation.

They follow MONAI's handler pattern (:mod:`monai.handlers`): build with arguments (from a bundle config),
then ``handler.attach(engine)``; a MONAI workflow does this for every entry of its ``handlers`` list.

- :class:`ExplanationImageHandler` writes overlays of explanation maps on their images (e.g. the learned
  EDM class activation map, seed 003 eq. 1-3) to TensorBoard at every validation (issue 4: "log example
  maps to TensorBoard every validation"; issue 9: "example explanation overlays").
- :class:`ClassificationReportHandler` gathers the predictions of a whole evaluation and writes
  :func:`medxai.metrics.classification.classification_report` with its plots, and puts the scalar metrics
  into ``engine.state.metrics`` for MONAI's ``StatsHandler``/``TensorBoardStatsHandler``/``MLFlowHandler``.
- :class:`LearningRateLogger` writes the optimizer's learning rate to TensorBoard. MONAI's
  ``LrScheduleHandler`` only prints it, ``TensorBoardStatsHandler`` writes ``engine.state.metrics`` and
  ``engine.state`` attributes (the learning rate is neither) and only ``MLFlowHandler`` logs optimizer
  parameters; ignite's ``OptimizerParamsHandler`` needs ignite's own ``TensorboardLogger`` rather than a
  ``SummaryWriter`` shared with MONAI's handlers.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.handlers.tensorboard_handlers import TensorBoardHandler
from monai.utils import evenly_divisible_all_gather, string_list_all_gather

from medxai.data.fault_tolerant import case_source
from medxai.errors import InputError
from medxai.explain.writers import render_overlay, top_slices
from medxai.metrics.classification import (
    SCALAR_METRICS,
    classification_report,
    plot_confusion,
    plot_pr,
    plot_roc,
    predicted_classes,
    roc_pr_curves,
    save_report_json,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "MapFn",
    "output_maps",
    "explainer_maps",
    "ExplanationImageHandler",
    "case_name_of",
    "ClassificationReportHandler",
    "LearningRateLogger",
    "class_indices_from_engine",
]

#: ``map_fn(engine) -> (images (B, C, *spatial), maps (B, 1, *spatial))``
MapFn = Callable[[Engine], tuple[torch.Tensor, torch.Tensor]]


def _plain(value: Any) -> Any:
    """A MetaTensor as a plain tensor (other values unchanged)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value


def _as_items(data: Any, name: str) -> list[Mapping[str, Any]]:
    """``engine.state.output`` or ``.batch`` as a list of per-sample dicts (MONAI decollated lists pass as
    they are; a batch-first dict is decollated with :func:`monai.data.decollate_batch`)."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        return list(decollate_batch(dict(data), detach=True))
    if isinstance(data, Sequence) and all(isinstance(item, Mapping) for item in data):
        return list(data)
    raise InputError(
        f"engine.state.{name} must be a dict or a list of dicts (MONAI workflows), got {type(data).__name__}."
    )


def output_maps(
    image_key: str = "image", map_key: str = "cam", channels: int | Sequence[int] | None = None
) -> MapFn:
    """A ``map_fn`` that reads images and maps already computed by the workflow from
    ``engine.state.output`` (e.g. the EDM activation map the network returns beside ``pred``, or a
    segmentation's ``pred`` with ``channels`` set to its foreground classes).

    Works on MONAI's decollated list of dicts and on a batch-first dict; returns (B, C, *spatial) images and
    (B, 1, *spatial) maps: ``output[map_key]`` itself when ``channels`` is ``None``, else the sum of its
    channels ``channels`` (e.g. ``[1, 2, 3]`` of a one-hot prediction (B, 4, *spatial): the foreground mask).
    """
    selected = None if channels is None else [int(c) for c in ([channels] if isinstance(channels, int) else channels)]
    if selected is not None and not selected:
        raise InputError("output_maps: channels is empty; give at least one channel or None.")

    def _select(maps: torch.Tensor) -> torch.Tensor:
        if selected is None:
            return maps
        bad = [c for c in selected if maps.ndim < 2 or not -maps.shape[1] <= c < maps.shape[1]]
        if bad:
            raise InputError(
                f"output_maps: channel(s) {bad} are not channels of '{map_key}' with shape {tuple(maps.shape)}."
            )
        return maps[:, selected].sum(dim=1, keepdim=True)

    def _read(engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
        output = engine.state.output
        if isinstance(output, Mapping):
            missing = [key for key in (image_key, map_key) if key not in output]
            if missing:
                raise InputError(f"engine.state.output has no key(s) {missing}; it has {sorted(map(str, output))}.")
            return _plain(output[image_key]), _select(_plain(output[map_key]))
        items = _as_items(output, "output")
        for index, item in enumerate(items):
            missing = [key for key in (image_key, map_key) if key not in item]
            if missing:
                raise InputError(
                    f"engine.state.output item {index} has no key(s) {missing}; it has {sorted(map(str, item))}."
                )
        images = torch.stack([_plain(item[image_key]) for item in items])
        maps = torch.stack([_plain(item[map_key]) for item in items])
        return images, _select(maps)

    return _read


def explainer_maps(
    explainer: Callable[..., torch.Tensor],
    image_key: str = "image",
    target_key: str | None = None,
    max_images: int = 4,
) -> MapFn:
    """A ``map_fn`` that explains the first ``max_images`` inputs of the engine's last batch, as found in
    ``engine.state.output[image_key]`` (on the network's device), with an explainer of
    :mod:`medxai.explain` (e.g. ``GradCAM(network, "layer4")``).

    The target class is the label in ``engine.state.output[target_key]`` (integer class or one-hot) when
    ``target_key`` is given, else the predicted class (``target=None``).
    """
    if int(max_images) < 1:
        raise InputError(f"max_images must be at least 1, got {max_images}.")

    def _explain(engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
        items = _as_items(engine.state.output, "output")[: int(max_images)]
        if not items:
            raise InputError("engine.state.output is empty: nothing to explain.")
        images = torch.stack([_plain(item[image_key]) for item in items]).float()
        target = None
        if target_key is not None:
            target = [_label_index(item[target_key], f"{target_key} of item {i}") for i, item in enumerate(items)]
        return images, explainer(images, target)

    return _explain


class ExplanationImageHandler(TensorBoardHandler):
    """Write overlays of explanation maps on their images to TensorBoard (grayscale image, jet map, RGB).

    At every ``interval``-th epoch (``epoch_level=True``, default: every validation when attached to the
    evaluator) or iteration, ``map_fn(engine)`` gives images (B, C, H, W[, D]) and maps (B, 1, H, W[, D])
    of the last batch; the first ``max_images`` samples are rendered with
    :func:`medxai.explain.writers.render_overlay` and written as ``"<tag>/<i>"`` at step
    ``global_step_transform(epoch or iteration)``. A 3D sample is shown at the slice along ``slice_axis``
    (of the spatial axes, default the last, depth in MONAI's (H, W, D)) with the most positive map mass
    (:func:`medxai.explain.writers.top_slices`). Images with several channels are shown as their channel
    mean; maps of another spatial size (a CAM at feature resolution) are resized to the image with linear
    interpolation for display. The map's colour scale is ``(0, max)`` of the shown slice (no other
    normalisation).

    Parameters
    ----------
    map_fn
        ``callable(engine) -> (images, maps)``; default :func:`output_maps` with ``image_key`` and
        ``map_key``. Use :func:`explainer_maps` to run a post-hoc explainer on the last batch.
    summary_writer, log_dir
        A TensorBoard ``SummaryWriter`` (e.g. shared with ``TensorBoardStatsHandler``), or the folder of a
        new one.
    """

    def __init__(
        self,
        map_fn: MapFn | None = None,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        image_key: str = "image",
        map_key: str = "cam",
        max_images: int = 4,
        tag: str = "explanation",
        interval: int = 1,
        epoch_level: bool = True,
        slice_axis: int = -1,
        cmap: str = "jet",
        alpha: float = 0.5,
        global_step_transform: Callable[[int], int] = lambda step: step,
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        if int(max_images) < 1 or int(interval) < 1:
            raise InputError(f"max_images and interval must be at least 1, got {max_images} and {interval}.")
        if not isinstance(tag, str) or not tag.strip("/ "):
            raise InputError(f"tag must be a non-empty TensorBoard tag, got {tag!r}.")
        self.map_fn = map_fn if map_fn is not None else output_maps(image_key, map_key)
        self.max_images = int(max_images)
        self.tag = tag
        self.interval = int(interval)
        self.epoch_level = epoch_level
        self.slice_axis = int(slice_axis)
        self.cmap = cmap
        self.alpha = float(alpha)
        self.global_step_transform = global_step_transform

    def attach(self, engine: Engine) -> None:
        """Call this handler every ``interval`` epochs (or iterations) of ``engine``."""
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event(every=self.interval), self)

    def overlays(self, images: torch.Tensor, maps: torch.Tensor) -> list[np.ndarray]:
        """RGB overlays (H, W, 3) uint8 of the first ``max_images`` samples (2D, or the top slice of 3D)."""
        images, maps = _plain(images), _plain(maps)
        if not isinstance(images, torch.Tensor) or not isinstance(maps, torch.Tensor):
            raise InputError(f"map_fn must return two tensors, got {type(images).__name__} and {type(maps).__name__}.")
        if images.ndim not in (4, 5) or maps.ndim != images.ndim or maps.shape[1] != 1:
            raise InputError(
                f"map_fn must return images (B, C, H, W[, D]) and maps (B, 1, H, W[, D]), got "
                f"{tuple(images.shape)} and {tuple(maps.shape)}."
            )
        count = min(self.max_images, images.shape[0], maps.shape[0])
        gray = images[:count].detach().float().mean(dim=1, keepdim=True).cpu()
        heat = maps[:count].detach().float().cpu()
        if heat.shape[2:] != gray.shape[2:]:
            mode = "bilinear" if heat.ndim == 4 else "trilinear"
            heat = F.interpolate(heat, size=tuple(gray.shape[2:]), mode=mode, align_corners=False)
        rendered = []
        for index in range(count):
            image, saliency = gray[index, 0].numpy(), heat[index, 0].numpy()
            if image.ndim == 3:
                axis = self.slice_axis % 3
                slice_index = top_slices(saliency, 1, axis=axis)[0]
                image, saliency = np.take(image, slice_index, axis=axis), np.take(saliency, slice_index, axis=axis)
            rendered.append(render_overlay(image, saliency, cmap=self.cmap, alpha=self.alpha))
        return rendered

    def __call__(self, engine: Engine) -> None:
        """Render the overlays of the engine's last batch and write them to TensorBoard."""
        images, maps = self.map_fn(engine)
        step = self.global_step_transform(engine.state.epoch if self.epoch_level else engine.state.iteration)
        for index, rgb in enumerate(self.overlays(images, maps)):
            self._writer.add_image(f"{self.tag}/{index}", rgb, global_step=step, dataformats="HWC")
        self._writer.flush()


def _label_index(label: Any, name: str) -> int:
    """A class index from an integer label (scalar or one element) or a one-hot vector."""
    values = torch.as_tensor(_plain(label)).detach().flatten().cpu()
    if values.numel() == 1:
        value = float(values.item())
        if not math.isfinite(value) or value != round(value):
            raise InputError(f"{name} is {value}, not an integer class index.")
        return int(round(value))
    if values.numel() == 0:
        raise InputError(f"{name} is empty.")
    return int(values.argmax().item())


def class_indices_from_engine(pred_key: str = "pred", label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform`` for ignite's classification metrics (``ignite.metrics.Accuracy``, ``Precision``, ...).

    MONAI evaluators decollate their output into a list of per-case dicts, which ignite's metrics cannot
    read (MONAI's ``from_engine`` returns lists). The returned function stacks the cases into scores
    ``(B, K)`` and class indices ``(B,)`` (from integer or one-hot labels).
    """

    def transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        items = _as_items(output, "output")
        if not items:
            raise InputError("class_indices_from_engine: the engine's output holds no cases.")
        scores = torch.stack([torch.as_tensor(_plain(item[pred_key])).detach().float().flatten() for item in items])
        labels = torch.as_tensor([_label_index(item[label_key], f"'{label_key}'") for item in items])
        return scores, labels.to(scores.device)

    return transform


def case_name_of(item: Mapping[str, Any], image_key: str = "image", pseudonymize: bool = False) -> str | None:
    """The case name of one decollated sample, named as the case writers name it
    (:func:`medxai.transforms.outputs.output_case_name`: a file's stem, a pseudonym for a DICOM series or an
    unsafe name) from the case's file (:func:`medxai.data.fault_tolerant.case_source`: ``item[image_key]`` when
    it is a path, else its MetaTensor ``filename_or_obj`` or ``item["<image_key>_meta_dict"]``); ``None`` when
    none is there. With ``pseudonymize``, every name is a pseudonym."""
    from medxai.transforms.outputs import output_case_name  # the case writers' naming: outputs share folders

    source = case_source(item, image_key)
    if source is None:
        return None

    return output_case_name(source, pseudonymize)


class ClassificationReportHandler:
    """Classification report of a whole evaluation, written at every EPOCH_COMPLETED.

    Collects ``pred`` (class probabilities (K,), or the positive class's probability (1,)) and ``label``
    (class index, or one-hot) of every case from ``engine.state.output`` (MONAI's decollated list of dicts,
    or a batch-first dict), gathers them across ranks, and writes into ``output_dir``:

    - ``<prefix>metrics.json``: :func:`medxai.metrics.classification.classification_report` with ROC/PR
      curves, plus ``epoch``;
    - ``<prefix>predictions.csv``: one row per case: ``case``, ``label``, ``predicted`` and the class scores;
    - with ``save_plots``, ``<prefix>roc.png``, ``<prefix>pr.png`` and ``<prefix>confusion.png``.

    Files are written by rank 0 only. On every rank, the :data:`~medxai.metrics.classification.SCALAR_METRICS`
    go into ``engine.state.metrics`` as ``<prefix><name>`` (NaN where undefined), so MONAI's
    ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MLFlowHandler`` log them. ``pred`` must hold
    probabilities (add ``Activationsd`` to the evaluator's postprocessing): ``threshold`` applies to them.

    Case names come from the image's ``filename_or_obj`` (MetaTensor meta or ``<image_key>_meta_dict``, in
    the output or else the batch; :func:`case_name_of`), or are ``case-<index>`` when there is none. They are
    file names, never patient names from the data; set ``pseudonymize`` when file names may identify
    patients.
    """

    def __init__(
        self,
        output_dir: str | Path,
        pred_key: str = "pred",
        label_key: str = "label",
        class_names: Sequence[str] | None = None,
        positive_class: int | str = 1,
        prefix: str = "",
        save_plots: bool = True,
        threshold: float = 0.5,
        image_key: str = "image",
        pseudonymize: bool = False,
        n_bootstrap: int = 0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if prefix and not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):
            raise InputError(f"prefix {prefix!r} may contain letters, digits, '.', '_' and '-' only.")
        self.output_dir = Path(output_dir)
        self.pred_key = pred_key
        self.label_key = label_key
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.positive_class = positive_class
        self.prefix = prefix
        self.save_plots = save_plots
        self.threshold = float(threshold)
        self.image_key = image_key
        self.pseudonymize = pseudonymize
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self.logger = logging.getLogger(name)
        self._name = name
        self.report: dict[str, Any] | None = None
        self._scores: list[torch.Tensor] = []
        self._labels: list[int] = []
        self._cases: list[str | None] = []

    def attach(self, engine: Engine) -> None:
        """Reset at EPOCH_STARTED, collect at ITERATION_COMPLETED, report at EPOCH_COMPLETED."""
        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, _engine: Engine | None = None) -> None:
        """Forget the collected cases."""
        self._scores, self._labels, self._cases = [], [], []

    def __call__(self, engine: Engine) -> None:
        """Collect the cases of the current iteration."""
        outputs = _as_items(engine.state.output, "output")
        batch: list[Mapping[str, Any]] | None = None
        for index, item in enumerate(outputs):
            for key in (self.pred_key, self.label_key):
                if key not in item:
                    raise InputError(
                        f"engine.state.output item {index} of iteration {engine.state.iteration} has no key "
                        f"'{key}'; it has {sorted(map(str, item))}."
                    )
            score = torch.as_tensor(_plain(item[self.pred_key])).detach().float().flatten().cpu()
            if self._scores and score.numel() != self._scores[0].numel():
                raise InputError(
                    f"'{self.pred_key}' of iteration {engine.state.iteration} item {index} has {score.numel()} "
                    f"values, earlier cases had {self._scores[0].numel()}."
                )
            self._scores.append(score)
            self._labels.append(_label_index(item[self.label_key], f"'{self.label_key}' of item {index}"))
            case = case_name_of(item, self.image_key, self.pseudonymize)
            if case is None:
                batch = self._batch_items(engine) if batch is None else batch
                if index < len(batch):
                    case = case_name_of(batch[index], self.image_key, self.pseudonymize)
            self._cases.append(case)

    @staticmethod
    def _batch_items(engine: Engine) -> list[Mapping[str, Any]]:
        """``engine.state.batch`` as per-sample dicts, or ``[]`` when it is not dict-based."""
        try:
            return _as_items(engine.state.batch, "batch")
        except InputError:
            return []

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        scores = torch.stack(self._scores) if self._scores else torch.zeros(0, 1)
        labels = torch.as_tensor(self._labels, dtype=torch.float32).reshape(-1, 1)
        cases = [case if case is not None else "" for case in self._cases]
        if idist.get_world_size() > 1:
            scores = evenly_divisible_all_gather(scores, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True)
            cases = string_list_all_gather(cases)
        names = [case if case else f"case-{index:05d}" for index, case in enumerate(cases)]
        return scores.numpy(), labels[:, 0].numpy().astype(np.int64), names

    def epoch_completed(self, engine: Engine) -> None:
        """Compute the report of all collected cases, store the metrics in ``engine.state.metrics`` and write
        the files (rank 0)."""
        scores, labels, cases = self._gathered()
        if labels.size == 0:
            self.logger.warning("ClassificationReportHandler: no case was collected in this epoch; nothing written.")
            return
        y_score = scores[:, 0] if scores.shape[1] == 1 else scores
        report = classification_report(
            labels, y_score, threshold=self.threshold, class_names=self.class_names,
            positive_class=self.positive_class, n_bootstrap=self.n_bootstrap, seed=self.seed, include_curves=True,
        )
        report["epoch"] = int(engine.state.epoch)
        self.report = report
        for metric in SCALAR_METRICS:
            value = report[metric]
            engine.state.metrics[f"{self.prefix}{metric}"] = float("nan") if value is None else float(value)
        summary = ", ".join(f"{m} {report[m]:.4f}" for m in ("accuracy", "sensitivity", "specificity", "auc")
                            if report[m] is not None)
        self.logger.info(f"classification report of {report['n_cases']} cases (epoch {report['epoch']}): {summary}")
        if idist.get_rank() == 0:
            self._write(report, labels, y_score, cases)

    def _write(self, report: dict[str, Any], labels: np.ndarray, y_score: np.ndarray, cases: list[str]) -> None:
        folder = self.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        save_report_json(report, folder / f"{self.prefix}metrics.json")
        names = report["class_names"]
        positive = names.index(report["positive_class"])
        predicted = predicted_classes(y_score, self.threshold, names, positive)
        if y_score.ndim == 1:
            score_columns = {f"score_{names[positive]}": y_score[:, None]}
        else:
            score_columns = {f"score_{name}": y_score[:, [k]] for k, name in enumerate(names)}
        with open(folder / f"{self.prefix}predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "label", "label_name", "predicted", "predicted_name", *score_columns])
            for row, case in enumerate(cases):
                scores = [f"{float(column[row, 0]):.6g}" for column in score_columns.values()]
                writer.writerow([case, int(labels[row]), names[labels[row]], int(predicted[row]),
                                 names[predicted[row]], *scores])
        if self.save_plots:
            curves = roc_pr_curves(labels, y_score, class_names=names, positive_class=positive)
            plot_roc(curves, folder / f"{self.prefix}roc.png")
            plot_pr(curves, folder / f"{self.prefix}pr.png")
            plot_confusion(report["confusion_matrix"], names, folder / f"{self.prefix}confusion.png")


class LearningRateLogger(TensorBoardHandler):
    """Write the optimizer's learning rate to TensorBoard.

    With ``epoch_level`` (default) it writes at EPOCH_STARTED with step = epoch, i.e. the rate used during
    that epoch (before an epoch-level ``LrScheduleHandler`` steps at EPOCH_COMPLETED); otherwise at
    ITERATION_STARTED with step = iteration. One parameter group is written as ``tag``; several as
    ``<tag>/group_<i>``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        tag: str = "learning_rate",
        epoch_level: bool = True,
        param_name: str = "lr",
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        if not getattr(optimizer, "param_groups", None):
            raise InputError(f"optimizer must be a torch optimizer with param_groups, got {type(optimizer).__name__}.")
        missing = [i for i, group in enumerate(optimizer.param_groups) if param_name not in group]
        if missing:
            raise InputError(f"parameter group(s) {missing} of the optimizer have no '{param_name}'.")
        self.optimizer = optimizer
        self.tag = tag
        self.epoch_level = epoch_level
        self.param_name = param_name

    def attach(self, engine: Engine) -> None:
        """Call this handler at every EPOCH_STARTED (or ITERATION_STARTED) of ``engine``."""
        event = Events.EPOCH_STARTED if self.epoch_level else Events.ITERATION_STARTED
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        """Write the current value of every parameter group."""
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        groups = self.optimizer.param_groups
        for index, group in enumerate(groups):
            tag = self.tag if len(groups) == 1 else f"{self.tag}/group_{index}"
            self._writer.add_scalar(tag, float(group[self.param_name]), step)
        self._writer.flush()
