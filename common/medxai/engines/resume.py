"""Resume interrupted training where it stopped: one training-state file, written atomically, read at start.

:class:`ResumableTraining` is an ignite handler for a MONAI trainer. Every ``save_interval`` iterations inside
an epoch, and after every epoch (attach it last, so after validation, the key-metric checkpoint and an
epoch-level scheduler step), it writes ``network``, ``optimizer``, ``lr_scheduler``, the trainer's iteration
and epoch, the AMP scaler and the random number generators to one file with ignite's
:class:`~ignite.handlers.DiskSaver` (``atomic=True``: a temporary file in the same folder, then
``os.replace``; a kill during a save leaves the previous file whole). When that file exists at
``Events.STARTED``, it is loaded with ``weights_only=True`` (:meth:`ignite.handlers.Checkpoint.load_objects`)
and the run goes on from the saved iteration.

Why the data position is restored too: ignite resumes mid-epoch by counting, not by data. It starts a fresh
iterator over the data loader and runs the epoch's remaining ``epoch_length - k`` iterations on its *first*
batches, and the next epoch then begins with the ``k`` batches left in that iterator. To see the same batches,
with the same random augmentations, as an uninterrupted run, the loader is wrapped (:class:`_PositionedLoader`):
it records the random number generators just before each epoch's iterator is made; on resume it puts back the
epoch's recorded state, makes the iterator, draws and drops its first ``k`` batches (so the sampler and the
augmentations consume exactly what they consumed before the kill), then puts back the state saved at the kill.

Other checkpoints of the run: MONAI's ``CheckpointSaver`` writes in place (``DiskSaver(atomic=False)``), so a
kill during a save of ``model.pt`` or a snapshot would leave a truncated file. The bundles use
:class:`AtomicCheckpointSaver` instead; ``atomic_savers`` switches a plain MONAI saver of a user's own config
(:func:`make_atomic`).

Limits: the data loader must not use ``persistent_workers=True`` (its workers would not be re-seeded per epoch);
a run whose state file says it is finished finishes at once (delete the file to train afresh). Under
``torchrun`` every rank loads the state rank 0 wrote (its random generators included), so the model and the
optimiser go on exactly, while per-rank random augmentations continue from rank 0's generators.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from medxai.errors import InputError

__all__ = [
    "ResumableTraining",
    "RngStates",
    "KeyMetricState",
    "BestMetricState",
    "make_atomic",
    "AtomicCheckpointSaver",
]


def _randomizables(obj: Any, found: list[Any], seen: set[int]) -> list[Any]:
    """Every object with a ``set_random_state`` and an ``R`` under ``obj``, nested ones included, each once.

    Walks attributes as :func:`monai.data.utils.set_rnd` does, but does not stop at the first randomizable:
    ``Compose.R`` and ``RandAffined.R`` are different generators from those of the transforms inside them.
    """
    if id(obj) in seen:
        return found
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _randomizables(item, found, seen)
        return found
    if not hasattr(obj, "__dict__"):
        return found
    seen.add(id(obj))
    if hasattr(obj, "set_random_state") and isinstance(getattr(obj, "R", None), np.random.RandomState):
        found.append(obj)  # and go on: a Compose or a dictionary transform holds randomizables with their own R
    for key, value in obj.__dict__.items():
        if not key.startswith("__"):
            _randomizables(value, found, seen)
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    """``numpy.random.RandomState.get_state()`` as tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


def _loader_generators(data_loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of a data loader, its sampler and its batch sampler's sampler, each once."""
    holders = [data_loader, getattr(data_loader, "sampler", None)]
    holders.append(getattr(getattr(data_loader, "batch_sampler", None), "sampler", None))
    found: dict[int, torch.Generator] = {}
    for holder in holders:
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())


class RngStates:
    """Capture and restore every random number generator a training step draws from.

    The global generators of ``torch`` (CPU and, when present, CUDA), ``numpy`` and ``random``; the
    ``torch.Generator`` of the data loader and of its sampler (e.g. a seeded ``WeightedRandomSampler``); and the
    ``numpy.random.RandomState`` of each MONAI ``Randomizable`` transform under the loader's dataset (the ones a
    loader with ``num_workers=0`` runs in this process; workers re-seed their copies every epoch).

    Parameters
    ----------
    data_loader
        The training data loader, or ``None`` for the global generators only.
    """

    def __init__(self, data_loader: Any = None) -> None:
        dataset = getattr(data_loader, "dataset", None)
        self.transforms = _randomizables(dataset, [], set()) if dataset is not None else []
        self.generators = _loader_generators(data_loader) if data_loader is not None else []

    def capture(self) -> dict[str, Any]:
        """The current states, as tensors, numbers and strings only."""
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss},
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
            "generators": [generator.get_state() for generator in self.generators],
        }  # fmt: skip
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self, state: Mapping[str, Any], include_global: bool = True) -> None:
        """Put back states from :meth:`capture`; the numbers of transforms and loader generators must match.

        With ``include_global=False`` only the transforms' and the loader's own generators are put back, and
        the global ``torch``/``numpy``/``random`` generators are left as they are.
        """
        for name, have in (("transforms", self.transforms), ("generators", self.generators)):
            if len(state[name]) != len(have):
                raise InputError(
                    f"the saved training state has random states for {len(state[name])} {name} of the training "
                    f"data loader, but this one has {len(have)}: the data pipeline changed since it was saved"
                )
        for transform, saved in zip(self.transforms, state["transforms"]):
            transform.R.set_state(_numpy_tuple(saved))
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved)
        if not include_global:
            return
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()), python["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class _PositionedLoader:
    """A data loader that records the generators before each epoch's iterator and can replay a position.

    ``len`` and the batches are the wrapped loader's. After :meth:`replay`, the next iterator starts from the
    recorded epoch state, skips ``skip`` batches, then leaves the generators at ``current``.
    """

    def __init__(self, loader: Any, rng: RngStates) -> None:
        self.loader = loader
        self.rng = rng
        self.epoch_start: dict[str, Any] | None = None
        self._pending: tuple[dict[str, Any] | None, dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def replay(self, epoch_start: dict[str, Any] | None, current: dict[str, Any], skip: int) -> None:
        self._pending = (epoch_start, current, skip)

    def __iter__(self) -> Iterator[Any]:
        if self._pending is None:
            self.epoch_start = self.rng.capture()
            return iter(self.loader)
        epoch_start, current, skip = self._pending
        self._pending = None
        if skip == 0 or epoch_start is None:
            self.rng.restore(current)
            self.epoch_start = self.rng.capture()
            return iter(self.loader)
        self.epoch_start = epoch_start
        iterator = replay_iterator(self.rng, epoch_start, lambda: iter(self.loader), skip)
        self.rng.restore(current)
        return iterator


def replay_iterator(
    rng: RngStates, start: Mapping[str, Any], make_iterator: Callable[[], Iterator], skip: int
) -> Iterator:
    """Rebuild a data iterator at a saved position: put back the generators ``start`` recorded just before the
    iterator was first made, make it, then draw and drop its first ``skip`` batches, so the sampler and the
    random transforms consume exactly what they consumed before. The caller then puts back the generators it
    wants going on (the state at the save)."""
    rng.restore(start)
    iterator = make_iterator()
    for _ in range(skip):
        next(iterator)
    return iterator


def make_atomic(saver: Any) -> Any:
    """Make a MONAI ``CheckpointSaver`` write every file atomically (a temporary file, then ``os.replace``).

    MONAI gives its savers ``DiskSaver(atomic=False)`` (for the file mode; ignite's atomic save now adds group
    and others read permission after the rename), so a kill during a save leaves a truncated ``model.pt`` or
    snapshot. This switches the final, key-metric and interval savers of ``saver`` to ignite's atomic mode.

    Parameters
    ----------
    saver
        A ``monai.handlers.CheckpointSaver``.

    Returns
    -------
    The same saver (for use inside config expressions).
    """
    checkpoints = [getattr(saver, name, None) for name in
                   ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")]  # fmt: skip
    disk_savers = [c.save_handler for c in checkpoints if isinstance(c, Checkpoint)]
    if not disk_savers or not all(isinstance(d, DiskSaver) for d in disk_savers):
        raise InputError(
            f"make_atomic needs a MONAI CheckpointSaver that saves to disk, got {type(saver).__name__}: check the "
            f"handler index in resume.json against the handler list of train.json"
        )
    for disk_saver in disk_savers:
        disk_saver._atomic = True
    return saver


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file atomically (:func:`make_atomic`).

    Takes exactly ``monai.handlers.CheckpointSaver``'s arguments. The bundles' ``train.json`` use it for the
    best-model ``model.pt`` and the snapshot files, so a run killed during a save keeps the previous file whole
    whether or not it is resumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        make_atomic(self)


class KeyMetricState:
    """The best-so-far list of a MONAI ``CheckpointSaver`` that keeps the best model by the key metric.

    Without it a resumed run would overwrite ``model.pt`` at its first validation even when that is worse.
    """

    def __init__(self, saver: Any) -> None:
        checkpoint = getattr(saver, "_key_metric_checkpoint", None)
        if checkpoint is None:
            raise InputError(f"{type(saver).__name__} does not save by key metric (save_key_metric is false)")
        self.saver = saver
        self.checkpoint: Checkpoint = checkpoint

    def state_dict(self) -> dict[str, Any]:
        """The saver's ``Checkpoint`` state with its scores as Python numbers.

        A metric such as MONAI's ``ROCAUC`` gives a ``numpy.float64`` score, which ``torch.load(...,
        weights_only=True)`` refuses to read back.
        """
        return _plain(self.checkpoint.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state_dict))


class BestMetricState:
    """An evaluator's ``best_metric`` and ``best_metric_epoch`` (MONAI keeps them on ``engine.state``)."""

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state_dict["best_metric"]
        self.evaluator.state.best_metric_epoch = state_dict["best_metric_epoch"]


class ResumableTraining:
    """Save the whole training state to one file during training, and go on from it when it exists.

    Parameters
    ----------
    save_dir
        Folder of the state file (made if missing).
    save_dict
        Objects with ``state_dict``/``load_state_dict`` to save, e.g. ``network``, ``optimizer``,
        ``lr_scheduler``, :class:`KeyMetricState`, :class:`BestMetricState`. The trainer (``trainer``), its AMP
        scaler (``scaler``) and the generators (``rng``) are added at attach.
    save_interval
        Save every this many iterations inside an epoch; the state is also saved after every epoch.
    filename
        Name of the state file in ``save_dir``.
    atomic_savers
        MONAI ``CheckpointSaver`` handlers of the run whose files are from now on written atomically too
        (:func:`make_atomic`): the best-model saver, the snapshot saver.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        filename: str = "last_state.pt",
        atomic_savers: Sequence[Any] = (),
    ) -> None:
        if int(save_interval) < 1:
            raise InputError(f"save_interval must be a positive number of iterations, got {save_interval!r}")
        reserved = {"trainer", "scaler", "rng"} & set(save_dict)
        if reserved:
            raise InputError(f"save_dict may not name {sorted(reserved)}: ResumableTraining adds them itself")
        for saver in atomic_savers:
            make_atomic(saver)
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.filename = filename
        self.logger = logging.getLogger(__name__)
        self.loader: _PositionedLoader | None = None
        self.rng = RngStates()
        self._saved_rng: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def state_dict(self) -> dict[str, Any]:
        """The generators' states now and at the start of the running epoch (the ``rng`` entry of the file)."""
        epoch_start = self.loader.epoch_start if self.loader is not None else None
        return {"current": self.rng.capture(), "epoch_start": epoch_start}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._saved_rng = dict(state_dict)

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {**self.save_dict, "trainer": engine, "rng": self}
        if getattr(engine, "scaler", None) is not None:
            objects["scaler"] = engine.scaler
        return objects

    def start(self, engine: Engine) -> None:
        """Wrap the data loader; when the state file exists, load it and set the replay of the epoch."""
        self.rng = RngStates(engine.state.dataloader)
        self.loader = _PositionedLoader(engine.state.dataloader, self.rng)
        engine.state.dataloader = self.loader
        if not self.path.is_file():
            return
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = checkpoint["trainer"]
        if saved.get("epoch_length") != epoch_length:
            raise InputError(
                f"{self.path} was saved with {saved.get('epoch_length')} iterations per epoch but this run has "
                f"{epoch_length}: the training data or batch size changed; delete the file to train afresh"
            )
        Checkpoint.load_objects(to_load=self._objects(engine), checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs
        if engine.state.epoch > max_epochs:
            raise InputError(f"{self.path} is at epoch {engine.state.epoch}, past this run's max_epochs {max_epochs}")
        if self._saved_rng is None:
            raise InputError(f"{self.path} has no random generator states: it was not written by ResumableTraining")
        skip = engine.state.iteration % epoch_length
        self.loader.replay(self._saved_rng["epoch_start"], self._saved_rng["current"], skip)
        self.logger.info(
            f"resuming from {self.path.name}: iteration {engine.state.iteration} "
            f"(epoch {engine.state.epoch + 1}, batch {skip}/{epoch_length} done)"
        )

    def iteration_completed(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if iteration % self.save_interval == 0 and iteration % engine.state.epoch_length != 0:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        """Write the state file atomically (a temporary file in ``save_dir``, then ``os.replace``)."""
        objects = self._objects(engine)
        checkpoint = {name: _unwrapped(obj).state_dict() for name, obj in objects.items()}
        DiskSaver(self.save_dir, atomic=True, create_dir=True, require_empty=False)(checkpoint, self.filename)
        position = engine.state.iteration % engine.state.epoch_length or engine.state.epoch_length
        self.logger.info(
            f"saved training state: iteration {engine.state.iteration}, "
            f"epoch {engine.state.epoch} batch {position}/{engine.state.epoch_length}"
        )


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python numbers, through dicts, lists and tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return type(value)((key, _plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _unwrapped(obj: Any) -> Any:
    """The module inside ``DataParallel``/``DistributedDataParallel``, so keys match a plain network."""
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj
