"""Snapshot ensembling with cyclic cosine annealing, and choice of the best snapshot (DeepCOVIDExplainer).

Karim et al. 2020 (DeepCOVIDExplainer), Sec. II-B, train every network with cyclic cosine annealing
(eq. 1)::

    alpha(t) = alpha_0 / 2 * (cos(pi * mod(t - 1, ceil(T / C)) / ceil(T / C)) + 1)

with ``t`` the (1-based) epoch, ``T`` the number of epochs and ``C`` the number of cycles, and save the
weights at the bottom of every cycle as a snapshot (``C`` snapshots per network). Sec. III chooses the
snapshot used for the decision visualisations with WeightWatcher.

- :func:`cycle_length` and :func:`cyclic_cosine_scheduler` give eq. 1 as torch's
  ``CosineAnnealingWarmRestarts`` (``T_0 = ceil(T / C)``), stepped once per epoch, e.g. by MONAI's
  ``LrScheduleHandler(epoch_level=True)``.
- Snapshots are written by a MONAI ``CheckpointSaver(save_dir=ckpt_dir, save_dict={"model": network},
  save_interval=cycle_length, epoch_level=True, n_saved=None, file_prefix="snapshot")``: ignite's
  ``Checkpoint`` names them ``snapshot_model_epoch=<N>.pt`` (``<file_prefix>_<save_dict key>_epoch=<N>.pt``)
  and, as ``save_dict`` holds one object, each file is that object's bare ``state_dict()`` (the module
  inside ``DistributedDataParallel``), loadable with ``torch.load(..., weights_only=True)``.
  :func:`list_snapshots` finds them in epoch order.
- :func:`weightwatcher_alpha` is the WeightWatcher quality of a network: the mean power-law exponent
  ``alpha`` of its layers' eigenvalue spectra (Martin & Mahoney; smaller, within about 2-6, is better
  trained).
- :class:`SnapshotSelector` (an ignite handler, attached to the trainer's ``COMPLETED``) scores every
  snapshot by a validation metric or by WeightWatcher, saves the best as ``model.pt`` and writes a JSON
  record of all scores, each written atomically (a temporary file in the folder, then ``os.replace``).
- MONAI's ``CheckpointSaver`` writes the snapshots in place; the bundle's ``train.json`` uses
  :class:`medxai.engines.resume.AtomicCheckpointSaver` (the same saver writing atomically), so a kill during a
  snapshot save leaves no truncated snapshot beside the whole earlier ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Engine, Events

from medxai.engines.inferers import unwrap_network
from medxai.errors import InputError
from medxai.serialization import weights_load_reason

__all__ = [
    "snapshot_epoch",
    "cycle_length",
    "cyclic_cosine_scheduler",
    "list_snapshots",
    "weightwatcher_alpha",
    "SnapshotSelector",
]

logger = logging.getLogger(__name__)

CRITERIA = ("val_metric", "weightwatcher")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def cycle_length(total_epochs: int, cycles: int) -> int:
    """Epochs per cycle of cyclic cosine annealing, ``ceil(T / C)`` (Karim et al. 2020, eq. 1).

    Snapshots saved every ``cycle_length`` epochs number ``floor(T / ceil(T / C))``: ``C`` when ``C`` divides
    ``T`` (paper: ``T=200, C=20`` gives 10 epochs per cycle and 20 snapshots), fewer otherwise (the last,
    shorter cycle does not reach its bottom).

    Parameters
    ----------
    total_epochs
        ``T``, the number of training epochs (>= 1).
    cycles
        ``C``, the number of cycles (1 <= C <= T).

    Returns
    -------
    int
        ``ceil(T / C)``.
    """
    total = _positive_int(total_epochs, "total_epochs")
    count = _positive_int(cycles, "cycles")
    if count > total:
        raise InputError(f"cycles must be <= total_epochs: got cycles={count} for total_epochs={total}.")
    return -(-total // count)


def cyclic_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_epochs: int, cycles: int, eta_min: float = 0.0
) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """Cyclic cosine annealing of Karim et al. 2020, eq. 1, as torch's ``CosineAnnealingWarmRestarts``.

    The learning rate during epoch ``t`` (1-based) is::

        eta_min + (alpha_0 - eta_min) / 2 * (cos(pi * mod(t - 1, ceil(T / C)) / ceil(T / C)) + 1)

    which is eq. 1 for ``eta_min = 0``; ``alpha_0`` is the optimizer's initial learning rate (each parameter
    group's ``lr``). It restarts at ``alpha_0`` at epochs ``1, ceil(T/C) + 1, ...`` and is lowest in the
    last epoch of each cycle, whose weights are the cycle's snapshot.

    The scheduler must be stepped once per epoch, after the epoch (MONAI:
    ``LrScheduleHandler(lr_scheduler, epoch_level=True)``); stepping per iteration would shrink the cycles
    to ``ceil(T / C)`` iterations.

    Parameters
    ----------
    optimizer
        The optimizer whose learning rate is scheduled.
    total_epochs
        ``T``, the number of training epochs.
    cycles
        ``C``, the number of cycles (snapshots).
    eta_min
        Lowest learning rate (>= 0); 0 in the paper.

    Returns
    -------
    torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
        With ``T_0 = cycle_length(total_epochs, cycles)`` and ``T_mult = 1``.
    """
    period = cycle_length(total_epochs, cycles)
    if isinstance(eta_min, bool) or not isinstance(eta_min, (int, float)) or not math.isfinite(eta_min) or eta_min < 0:
        raise InputError(f"eta_min must be a finite number >= 0, got {eta_min!r}.")
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=period, T_mult=1, eta_min=float(eta_min))


def _snapshot_regex(prefix: str) -> re.Pattern[str]:
    start = f"{re.escape(prefix)}_" if prefix else ""
    return re.compile(rf"^{start}.*?epoch=(\d+)\.pt$")


def _snapshot_glob(prefix: str) -> str:
    return f"{prefix}_*epoch=<N>.pt" if prefix else "*epoch=<N>.pt"


def snapshot_epoch(path: str | Path, prefix: str = "snapshot") -> int:
    """The epoch in a snapshot's file name (``snapshot_model_epoch=12.pt`` -> 12)."""
    match = _snapshot_regex(prefix).match(Path(path).name)
    if match is None:
        raise InputError(f"{Path(path).name!r} is not a snapshot file name {_snapshot_glob(prefix)!r}.")
    return int(match.group(1))


def list_snapshots(ckpt_dir: str | Path, prefix: str = "snapshot") -> list[Path]:
    """Snapshot files of a folder, in epoch order.

    Matches the names MONAI's epoch-level ``CheckpointSaver(file_prefix=prefix, save_interval=...)`` gives:
    ``<prefix>_<key>_epoch=<N>.pt`` (``<key>_epoch=<N>.pt`` for an empty prefix), sorted by the number
    ``N`` (``epoch=10`` after ``epoch=9``), then by name.

    Parameters
    ----------
    ckpt_dir
        Folder of the snapshots.
    prefix
        ``file_prefix`` of the ``CheckpointSaver``.

    Returns
    -------
    list[Path]
        The snapshot files, at least one.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        raise InputError(f"snapshot folder {str(folder)!r} does not exist or is not a folder.")
    regex = _snapshot_regex(prefix)
    found = [(int(m.group(1)), p.name, p) for p in folder.iterdir() if p.is_file() and (m := regex.match(p.name))]
    if not found:
        others = sorted(p.name for p in folder.glob("*.pt"))
        raise InputError(
            f"no snapshot file {_snapshot_glob(prefix)!r} in {str(folder)!r}"
            + (f"; its .pt files are {others}." if others else "; it has no .pt file.")
        )
    return [path for _, _, path in sorted(found)]


class _DebugForwarder(logging.Handler):
    """Re-emits WeightWatcher's log records on this module's logger at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger.debug("weightwatcher %s: %s", record.levelname, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _import_weightwatcher() -> Any:
    """Import ``weightwatcher`` with its logging routed to DEBUG and its import side effects undone.

    WeightWatcher logs warnings at import ("PyTorch is available but CUDA is not ...") and calls
    ``logging.basicConfig(level=INFO)``, which would make every INFO record of the program print. Its
    ``weightwatcher`` logger is given a handler that forwards to this module's logger at DEBUG and stops
    propagating; root handlers and level added by its import are removed again.
    """
    ww_logger = logging.getLogger("weightwatcher")
    if not any(isinstance(handler, _DebugForwarder) for handler in ww_logger.handlers):
        ww_logger.addHandler(_DebugForwarder())
        ww_logger.propagate = False
    if "weightwatcher" in sys.modules:
        return sys.modules["weightwatcher"]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import weightwatcher
    except ImportError as error:
        raise ImportError("weightwatcher_alpha needs the weightwatcher package: pip install weightwatcher") from error
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return weightwatcher


def _analyze(network: nn.Module) -> Any:
    """WeightWatcher's ``analyze()`` details (a DataFrame), its prints and warnings sent to DEBUG."""
    weightwatcher = _import_weightwatcher()
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        details = weightwatcher.WeightWatcher(model=network).analyze()
    for line in printed.getvalue().splitlines():
        logger.debug("weightwatcher print: %s", line)
    for warning in caught:
        logger.debug("weightwatcher warning: %s", warning.message)
    return details


def weightwatcher_alpha(network: nn.Module) -> dict[str, Any]:
    """WeightWatcher's power-law exponent ``alpha`` of each layer and their mean (Martin & Mahoney).

    WeightWatcher (``WeightWatcher(model).analyze()`` with its defaults) fits a power law
    ``p(lambda) ~ lambda^-alpha`` to the tail of the eigenvalues of ``W^T W`` of every ``Linear``,
    ``Conv1d``/``Conv2d`` (kernel positions pooled) and ``Embedding`` layer with at least 8 eigenvalues
    (``min_evals``) and at most 15000 (``max_evals``); other and smaller layers are not analysed. A smaller
    mean alpha, within about 2-6, indicates a better-trained network; above 6, under-trained (random
    weights give large alphas); below 2, over-trained. Layers whose fit fails (WeightWatcher's
    ``alpha = -1``, status ``failed``, e.g. all-zero or rank-1 weights) or is not finite are left out of the
    mean and listed in ``ignored_layers``.

    The ``weightwatcher`` package is imported on first use (about 2 s); its logging and prints go to this
    module's logger at DEBUG (``logging.getLogger("weightwatcher").setLevel(logging.INFO)`` shows its INFO).

    Parameters
    ----------
    network
        The network (wrappers such as ``DistributedDataParallel`` are looked through). Its weights are
        read, not changed.

    Returns
    -------
    dict
        ``mean_alpha`` (float), ``num_layers`` (layers with an alpha), ``layers`` (list of
        ``{"layer_id", "name", "alpha"}``, ``name`` the module's dotted name) and ``ignored_layers``
        (``{"layer_id", "name"}`` of analysed layers without an alpha).
    """
    module = unwrap_network(network)
    details = _analyze(module)
    layers: list[dict[str, Any]] = []
    ignored: list[dict[str, Any]] = []
    if len(details) and "alpha" in details.columns:
        names = details["longname"] if "longname" in details.columns else details["name"]
        statuses = details["status"] if "status" in details.columns else ["success"] * len(details)
        for layer_id, name, alpha, status in zip(details["layer_id"], names, details["alpha"], statuses):
            row = {"layer_id": int(layer_id), "name": str(name)}
            alpha = float(alpha)
            # a power-law MLE exponent is > 1; WeightWatcher marks a failed fit with alpha = -1
            if status == "success" and math.isfinite(alpha) and alpha > 1.0:
                layers.append({**row, "alpha": alpha})
            else:
                ignored.append(row)
    if not layers:
        reason = (
            f"the power-law fit failed for all {len(ignored)} analysed layers ({[r['name'] for r in ignored]})"
            if ignored
            else "it has no Linear/Conv/Embedding layer with at least 8 eigenvalues"
        )
        raise InputError(f"WeightWatcher found no layer alpha in {type(module).__name__}: {reason}.")
    mean = sum(layer["alpha"] for layer in layers) / len(layers)
    return {"mean_alpha": mean, "num_layers": len(layers), "layers": layers, "ignored_layers": ignored}


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_distributed() else 0


def _broadcast_from_rank0(index: int) -> int:
    """Rank 0's ``index`` on every rank (all ranks then keep the same snapshot)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([index], dtype=torch.long, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _matching_state_dict(state: Mapping[str, Any], target: nn.Module) -> Mapping[str, Any]:
    """``state`` with a ``{"model": ...}`` level and ``module.``/``_orig_mod.`` key prefixes removed when
    that makes its keys those of ``target``."""
    expected = set(target.state_dict())
    if set(state) != expected and isinstance(state.get("model"), Mapping):
        state = state["model"]
    while set(state) != expected and state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(str(k).startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _write_atomically(path: Path, write: Any) -> None:
    """``write(handle)`` into a temporary file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    A kill or an error during the write leaves ``path`` as it was (the temporary file is removed on errors).
    """
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, os.stat(handle.name).st_mode | stat.S_IRGRP | stat.S_IROTH)  # as torch.save gives
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(handle.name)
        raise


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class SnapshotSelector:
    """Choose the best of a run's snapshots, save it as ``model.pt`` and record every snapshot's score.

    An ignite handler in MONAI's pattern: ``SnapshotSelector(...).attach(trainer)`` runs it at the trainer's
    ``Events.COMPLETED``, after the last snapshot was saved; ``selector()`` or ``selector.select()`` runs it
    directly. For every snapshot of ``ckpt_dir`` (:func:`list_snapshots`, in epoch order) its state dict is
    loaded into ``network`` (``torch.load(..., weights_only=True)``; into the module inside
    ``DistributedDataParallel``/``torch.compile`` wrappers) and scored:

    - ``criterion="val_metric"``: ``evaluator.run()`` then ``evaluator.state.metrics[metric_name]``; the
      highest wins (the lowest with ``greater_is_better=False``).
    - ``criterion="weightwatcher"`` (the paper, Sec. III): :func:`weightwatcher_alpha`'s mean alpha; the
      smallest wins. With an ``evaluator``, every snapshot's validation metric is recorded too, so both
      criteria can be compared.

    Ties go to the later snapshot. ``network`` is left holding the chosen weights, which are saved to
    ``ckpt_dir/output_name``. ``ckpt_dir/record_name`` (JSON) gets ``criterion``, ``score_name`` (the metric
    name or ``"mean_alpha"``), ``metric_name`` (``null`` without an evaluator), ``greater_is_better`` (of the
    score), ``snapshots`` (per snapshot: ``file``, ``epoch``, ``score``, ``val_metric`` when evaluated and,
    for WeightWatcher, ``mean_alpha``, ``num_layers``, ``layer_alphas``, ``ignored_layers``), ``chosen``,
    ``chosen_epoch``, ``chosen_score`` and ``output``. Non-finite numbers are written as ``null`` and never
    chosen.

    Under ``torch.distributed`` every rank scores the snapshots (the evaluator's metrics are reduced
    across ranks) after a barrier (rank 0's ``CheckpointSaver`` writes the snapshots), all ranks keep rank
    0's choice, only rank 0 writes the files, and a barrier ends the selection.

    The evaluator runs with all its handlers: one that saves the best key-metric model or logs each run will
    also fire for every snapshot.

    Parameters
    ----------
    ckpt_dir
        Folder of the snapshots; ``model.pt`` and the JSON record are written there.
    network
        The network the snapshots were saved from, possibly wrapped (the evaluator's network).
    criterion
        ``"val_metric"`` or ``"weightwatcher"``.
    evaluator
        An engine whose ``run()`` evaluates ``network`` on the validation data (a MONAI
        ``SupervisedEvaluator``); required for ``"val_metric"``.
    metric_name
        Key of the validation metric in ``evaluator.state.metrics``.
    greater_is_better
        Whether a higher validation metric is better (``"val_metric"`` only).
    prefix
        ``file_prefix`` of the ``CheckpointSaver`` that wrote the snapshots.
    output_name
        File name of the chosen state dict in ``ckpt_dir``.
    record_name
        File name of the JSON record in ``ckpt_dir``.
    name
        Logger name; the attached engine's logger when None.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        network: nn.Module,
        criterion: Literal["val_metric", "weightwatcher"] = "val_metric",
        evaluator: Engine | None = None,
        metric_name: str = "val_accuracy",
        greater_is_better: bool = True,
        prefix: str = "snapshot",
        output_name: str = "model.pt",
        record_name: str = "snapshot_selection.json",
        name: str | None = None,
    ) -> None:
        if criterion not in CRITERIA:
            raise InputError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}.")
        if criterion == "val_metric" and evaluator is None:
            raise InputError("criterion 'val_metric' needs an evaluator (an engine computing the metric), got None.")
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        for label, file_name in (("output_name", output_name), ("record_name", record_name)):
            if not file_name or Path(file_name).name != file_name:
                raise InputError(f"{label} must be a plain file name (no folder), got {file_name!r}.")
        self.ckpt_dir = Path(ckpt_dir)
        self.network = network
        self.criterion = criterion
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.greater_is_better = bool(greater_is_better)
        self.prefix = prefix
        self.output_name = output_name
        self.record_name = record_name
        self.logger = logging.getLogger(name)
        self._name = name
        self.record: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Select at the engine's ``Events.COMPLETED`` (attach to the trainer)."""
        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        """Run :meth:`select` (``engine`` is unused)."""
        return self.select()

    def _load(self, path: Path) -> Mapping[str, Any]:
        """Read a snapshot and load it into the network; returns the state dict that was loaded."""
        target = unwrap_network(self.network)
        try:
            state = torch.load(path, map_location=_device_of(target), weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
            raise InputError(f"cannot read snapshot {str(path)!r}: {weights_load_reason(error)}") from error
        if not isinstance(state, Mapping):
            raise InputError(f"snapshot {str(path)!r} holds a {type(state).__name__}, not a state dict.")
        state = _matching_state_dict(state, target)
        try:
            target.load_state_dict(state)
        except RuntimeError as error:
            raise InputError(f"snapshot {str(path)!r} does not fit {type(target).__name__}: {error}") from error
        return state

    def _evaluate(self, path: Path) -> float:
        """Run the evaluator on the loaded snapshot and return its metric."""
        assert self.evaluator is not None
        self.evaluator.run()
        metrics = self.evaluator.state.metrics
        if self.metric_name not in metrics:
            raise InputError(
                f"metric {self.metric_name!r} is not in evaluator.state.metrics after evaluating {path.name}; "
                f"available: {sorted(map(str, metrics))}."
            )
        value = metrics[self.metric_name]
        try:
            return float(torch.as_tensor(value).item())
        except (RuntimeError, TypeError, ValueError) as error:
            raise InputError(
                f"metric {self.metric_name!r} of {path.name} is not a scalar: {value!r}."
            ) from error

    def _score(self, path: Path) -> dict[str, Any]:
        entry: dict[str, Any] = {"file": path.name, "epoch": snapshot_epoch(path, self.prefix), "score": None}
        if self.criterion == "weightwatcher":
            try:
                alphas = weightwatcher_alpha(self.network)
            except InputError as error:
                raise InputError(f"snapshot {path.name}: {error}") from error
            entry["score"] = alphas["mean_alpha"]
            entry.update(
                mean_alpha=alphas["mean_alpha"], num_layers=alphas["num_layers"],
                layer_alphas=alphas["layers"], ignored_layers=alphas["ignored_layers"],
            )
        if self.evaluator is not None:
            value = self._evaluate(path)
            entry["val_metric"] = _finite_or_none(value)
            if self.criterion == "val_metric":
                entry["score"] = value
        entry["score"] = _finite_or_none(float(entry["score"]))
        return entry

    def _choose(self, entries: list[dict[str, Any]]) -> int:
        """Index of the best finite score; a tie goes to the later snapshot."""
        greater = self.greater_is_better if self.criterion == "val_metric" else False
        best: int | None = None
        for index, entry in enumerate(entries):
            score = entry["score"]
            if score is None:
                continue
            if best is None or (score >= entries[best]["score"] if greater else score <= entries[best]["score"]):
                best = index
        if best is None:
            raise InputError(
                f"no snapshot in {str(self.ckpt_dir)!r} has a finite {self._score_name()}: "
                f"{[(e['file'], e['score']) for e in entries]}."
            )
        return best

    def _score_name(self) -> str:
        return self.metric_name if self.criterion == "val_metric" else "mean_alpha"

    def select(self) -> dict[str, Any]:
        """Score every snapshot, keep and save the best, write the record.

        Returns
        -------
        dict
            The record written to ``ckpt_dir/record_name`` (also kept as ``self.record``).
        """
        distributed = _is_distributed()
        if distributed:
            dist.barrier()
        paths = list_snapshots(self.ckpt_dir, self.prefix)
        entries = []
        for path in paths:
            self._load(path)
            entries.append(self._score(path))
        chosen = self._choose(entries)
        if distributed:
            chosen = _broadcast_from_rank0(chosen)
        state = self._load(paths[chosen])
        record = {
            "criterion": self.criterion,
            "score_name": self._score_name(),
            "metric_name": self.metric_name if self.evaluator is not None else None,
            "greater_is_better": self.greater_is_better if self.criterion == "val_metric" else False,
            "snapshots": entries,
            "chosen": paths[chosen].name,
            "chosen_epoch": entries[chosen]["epoch"],
            "chosen_score": entries[chosen]["score"],
            "output": self.output_name,
        }
        if _rank() == 0:
            _write_atomically(self.ckpt_dir / self.output_name, lambda handle: torch.save(state, handle))
            text = json.dumps(record, indent=2).encode()
            _write_atomically(self.ckpt_dir / self.record_name, lambda handle: handle.write(text))
        if distributed:
            dist.barrier()
        self.record = record
        self.logger.info(
            f"SnapshotSelector ({self.criterion}): chose {record['chosen']} with {record['score_name']} "
            f"{record['chosen_score']} of {len(entries)} snapshots; saved as {self.output_name}."
        )
        return record
