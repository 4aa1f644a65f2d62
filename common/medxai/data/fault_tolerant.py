"""Batch inference that survives bad input: report each unreadable or invalid case and go on with the rest.

In a MONAI workflow the dataset's transform (loading, checking, preprocessing) runs per case inside the
data loader, so one missing file, truncated NIfTI, 2D picture, empty volume or NaN voxel raises from
``Compose`` (a ``RuntimeError`` wrapping the real error) and aborts the whole evaluator run. Two pieces
turn that into one reported case:

- :class:`FaultTolerantDataset`, a :class:`monai.data.Dataset` whose per-case transform catches the errors
  that loading and checking a case raise (:class:`medxai.errors.MedXAIError`, ``OSError``, ``EOFError``,
  ``zlib.error``, nibabel and pydicom read errors, also when ``Compose`` wrapped them) and returns a
  :class:`BadCase` in place of the case. Any other exception (a ``TypeError``, a ``KeyError`` from a wrong
  config, ...) is a programming error and propagates unchanged.
- :class:`FaultTolerantDataLoader`, a :class:`monai.data.DataLoader` whose collate function takes the
  :class:`BadCase` items out of every batch (they come back from worker processes inside the batch, so
  the main process sees every one of them whatever ``num_workers`` is), which logs one warning line per bad
  case, never hands an empty batch to the engine, logs ``"N of M cases skipped"`` at the end of each pass
  and writes the list as JSON (``[]`` when every case was fine).

The sampler still hands out indices, so every record is read exactly once and in order with any
``num_workers``. Since the number of good batches is known only after a pass, the loader has no length:
:class:`monai.engines.Workflow` then leaves ``epoch_length`` as ``None`` and ignite runs the epoch until the
loader is exhausted (with a length, ignite would restart the iterator to make up for skipped batches and
read cases twice).

Explanation jobs (``explain.json``) add two pieces that share one errors file per run:

- :class:`BadCaseLog`, the ``bad_cases.json`` of one run, fed by several sources (the loaders of every
  evaluator of the run, the explanation handlers, :class:`SkipFailedCases`): each source's entries replace
  its own earlier ones, identical entries are listed once, and the file is rewritten atomically after every
  change, so a killed job leaves a complete list of what it found so far;
- :class:`SkipFailedCases`, a wrapper for per-case work done after loading (an evaluator's
  ``postprocessing`` that computes and writes explanations): a case error there is recorded under the case's
  name and the case is passed on unchanged, so the run goes on with the next case.

Example bundle config::

    "dataset": {"_target_": "medxai.data.fault_tolerant.FaultTolerantDataset",
                "data": "@records", "transform": "@preprocessing"},
    "dataloader": {"_target_": "medxai.data.fault_tolerant.FaultTolerantDataLoader",
                   "dataset": "@dataset", "batch_size": 1, "num_workers": 2,
                   "report_path": "$@output_dir + '/bad_cases.json'"}

and in an explanation overlay, one log for the whole run::

    "bad_case_log": {"_target_": "medxai.data.fault_tolerant.BadCaseLog", "path": "@bad_cases_path"},
    "dataloader#bad_case_log": "@bad_case_log"
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from monai.data import DataLoader, Dataset
from monai.data.utils import list_data_collate
from monai.transforms import Transform, apply_transform
from nibabel.filebasedimages import ImageFileError
from pydicom.errors import InvalidDicomError

from medxai.errors import DatasetError, InputError, MedXAIError

__all__ = [
    "CASE_ERRORS",
    "BadCase",
    "BadCaseLog",
    "SkipFailedCases",
    "describe_case_error",
    "find_case_error",
    "FaultTolerantDataset",
    "FaultTolerantDataLoader",
    "write_bad_cases",
    "atomic_write",
    "as_bad_case_log",
    "case_source",
]

logger = logging.getLogger(__name__)

#: Exceptions that mean "this case cannot be read or used" rather than "the code is wrong": medxai's own
#: input and dataset errors, file-system and decompression errors (missing or truncated files; PIL's
#: ``UnidentifiedImageError`` and ``gzip.BadGzipFile`` are ``OSError``), nibabel and pydicom read errors.
CASE_ERRORS: tuple[type[BaseException], ...] = (
    MedXAIError,
    OSError,
    EOFError,
    zlib.error,
    ImageFileError,
    InvalidDicomError,
)


@dataclass(frozen=True)
class BadCase:
    """A case that could not be loaded or checked.

    Attributes
    ----------
    index
        Position of the record in the dataset.
    case
        Name of the case (the image's file name, or what ``case_name_fn`` made of it).
    error
        One line: the error type and its message, e.g. ``"InputError: case 'ct_7.nii.gz' (key 'image'):
        12 NaN and 0 infinite voxel(s) of 4096."``.
    """

    index: int
    case: str
    error: str

    def to_dict(self) -> dict[str, str]:
        """``{"case": ..., "error": ...}``, the entry written to ``bad_cases.json``."""
        return {"case": self.case, "error": self.error}


def find_case_error(
    exc: BaseException, case_errors: Sequence[type[BaseException]] = CASE_ERRORS
) -> BaseException | None:
    """The error in ``exc``'s explicit cause chain that marks a bad case, or ``None`` for a programming error.

    MONAI's ``Compose``/``apply_transform`` re-raises every transform failure as ``RuntimeError("applying
    transform ...")`` with the original error as ``__cause__`` (once per nesting level), so the chain
    ``exc, exc.__cause__, exc.__cause__.__cause__, ...`` is searched for the first instance of
    ``case_errors``.

    Parameters
    ----------
    exc
        The exception raised while transforming one case.
    case_errors
        Exception types that mean the case itself is bad.
    """
    types = tuple(case_errors)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (the message of a bad case is logged on one line)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip() if lines else repr(exc)}"


def describe_case_error(exc: BaseException, case: str, source: str | None = None) -> str:
    """One line ``"Type: message"`` for a bad case, with ``source`` (the case's path) and its base name replaced by
    ``case`` in the message when ``case`` is not simply that base name (a renamed, e.g. pseudonymised, case)."""
    message = _one_line(exc)
    if source:
        for text in sorted({source, source.rstrip("/\\"), _base_name(source)}, key=len, reverse=True):
            if text and text != case:
                message = message.replace(text, case)
    return message


def _source(record: Any, name_key: Hashable) -> str | None:
    """The path a record's case is read from (the first of a list of slice files), or ``None``."""
    if not isinstance(record, Mapping):
        return None
    value = record.get(name_key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, (str, PathLike)) and str(value).strip():
        return str(value)
    return None


def _base_name(source: str) -> str:
    return PurePath(source.replace("\\", "/").rstrip("/")).name


class FaultTolerantDataset(Dataset):
    """A :class:`monai.data.Dataset` that returns a :class:`BadCase` for a case its transform cannot handle.

    Parameters
    ----------
    data
        Records (dictionaries of paths and labels, as from :func:`medxai.data.datalist.load_datalist`).
    transform
        The per-case transform (typically a ``Compose`` that loads, checks and preprocesses).
    case_errors
        Exception types (searched for along the ``__cause__`` chain, see :func:`find_case_error`) that mark
        the case as bad. Anything else propagates.
    name_key
        Record key whose path names the case (default ``"image"``; a record without it is ``"record <i>"``).
    case_name_fn
        Maps that path to the reported name; default: its base name (``/data/site/ct_7.nii.gz`` ->
        ``ct_7.nii.gz``). Pass :func:`medxai.data.privacy.pseudonym` (or
        :func:`medxai.transforms.outputs.output_case_name`, the name case outputs are written under) where
        paths hold patient identifiers: the path and its base name are then also replaced by the case name
        inside the error message (``"image file or folder /data/PAT_7/ct.nii.gz does not exist."`` becomes
        ``"image file or folder pt-1f3a9c0d2b4e does not exist."``). It runs in the worker processes, so
        with a ``spawn`` start method it must be picklable (a module-level function, not a lambda).
    """

    def __init__(
        self,
        data: Sequence[Any],
        transform: Callable[..., Any] | None = None,
        case_errors: Sequence[type[BaseException]] = CASE_ERRORS,
        name_key: Hashable = "image",
        case_name_fn: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(data=data, transform=transform)
        case_errors = tuple(case_errors)
        if not case_errors or not all(isinstance(t, type) and issubclass(t, BaseException) for t in case_errors):
            raise InputError(f"case_errors must be a non-empty sequence of exception types, got {case_errors!r}.")
        self.case_errors = case_errors
        self.name_key = name_key
        self.case_name_fn = case_name_fn

    def case_name(self, index: int) -> str:
        """The reported name of record ``index``."""
        source = _source(self.data[index], self.name_key)
        if source is None:
            return f"record {index}"
        return self.case_name_fn(source) if self.case_name_fn is not None else _base_name(source)

    def _transform(self, index: int) -> Any:
        record = self.data[index]
        if self.transform is None:
            return record
        try:
            return apply_transform(self.transform, record)
        except Exception as exc:
            cause = find_case_error(exc, self.case_errors)
            if cause is None:
                raise
            return self._bad_case(index, cause)

    def _bad_case(self, index: int, cause: BaseException) -> BadCase:
        name = self.case_name(index)
        source = _source(self.data[index], self.name_key)
        # the case was renamed (pseudonymised): keep its path and file name out of the message too
        message = describe_case_error(cause, name, source if self.case_name_fn is not None else None)
        return BadCase(index=index, case=name, error=message)


class _CollatedBatch(NamedTuple):
    """What the collate function of :class:`FaultTolerantDataLoader` returns from a worker."""

    batch: Any
    bad_cases: list[BadCase]
    num_cases: int


class _CollateGoodCases:
    """Collate the good items of a batch with ``collate_fn`` and set the :class:`BadCase` items aside.

    A module-level class (not a closure) so that worker processes can receive it under any start method.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> _CollatedBatch:
        good, bad = [], []
        for item in items:
            (bad if isinstance(item, BadCase) else good).append(item)
        batch = self.collate_fn(good) if good else None
        return _CollatedBatch(batch=batch, bad_cases=bad, num_cases=len(items))


class FaultTolerantDataLoader(DataLoader):
    """A :class:`monai.data.DataLoader` that drops, logs and reports :class:`BadCase` items.

    Use it with :class:`FaultTolerantDataset`. After (or during) a pass, :attr:`bad_cases` lists the cases
    skipped so far in that pass and :attr:`num_cases` how many cases were read.

    Parameters
    ----------
    dataset
        Usually a :class:`FaultTolerantDataset`.
    num_workers
        Worker processes; each index is still read exactly once and batches come in sampler order.
    report_path
        When given, the list of ``{"case", "error"}`` of the pass is written there as JSON at the end of
        every complete pass (``[]`` when no case failed).
    fail_if_all_bad
        Raise :class:`medxai.errors.DatasetError` at the end of a pass in which every case failed (after
        writing the report), rather than letting the workflow finish without a single prediction.
    bad_case_log
        A :class:`BadCaseLog` shared with the other sources of the run (a second evaluator's loader, the
        explanation handlers): the pass's bad cases replace this loader's earlier entries there and the log
        writes its file. ``report_path`` must then be empty or the log's path.
    kwargs
        Passed to :class:`monai.data.DataLoader` (``batch_size``, ``shuffle``, ``collate_fn`` (default
        :func:`monai.data.utils.list_data_collate`, applied to the good items only), ...). ``batch_size=None``
        (no batching) is not supported.
    """

    def __init__(
        self,
        dataset: Any,
        num_workers: int = 0,
        report_path: str | PathLike | None = None,
        fail_if_all_bad: bool = True,
        bad_case_log: BadCaseLog | None = None,
        **kwargs: Any,
    ) -> None:
        if bad_case_log is not None:
            if not isinstance(bad_case_log, BadCaseLog):
                raise InputError(f"bad_case_log must be a BadCaseLog, got {type(bad_case_log).__name__}.")
            if report_path not in (None, "") and Path(report_path).resolve() != bad_case_log.path.resolve():
                raise InputError(
                    f"report_path {report_path} and bad_case_log's path {bad_case_log.path} differ; give one of them."
                )
        if "batch_size" in kwargs and kwargs["batch_size"] is None:
            raise InputError("FaultTolerantDataLoader needs batch_size >= 1 (batch_size=None is not supported).")
        if isinstance(kwargs.get("collate_fn"), _CollateGoodCases):
            raise InputError("collate_fn is already wrapped by FaultTolerantDataLoader; pass the inner one.")
        kwargs["collate_fn"] = _CollateGoodCases(kwargs.get("collate_fn") or list_data_collate)
        super().__init__(dataset, num_workers=num_workers, **kwargs)
        self.report_path = None if report_path in (None, "") else Path(report_path)  # type: ignore[arg-type]
        self.fail_if_all_bad = fail_if_all_bad
        self.bad_case_log = bad_case_log
        self._log_source = None if bad_case_log is None else bad_case_log.new_source("loader")
        if bad_case_log is not None:
            self.report_path = bad_case_log.path
        self.bad_cases: list[BadCase] = []
        self.num_cases = 0

    def __len__(self) -> int:
        # Workflow/ignite call len() inside ``try ... except TypeError`` and then run until exhaustion.
        raise TypeError(
            f"{type(self).__name__} has no length: cases that fail are dropped, so the number of batches is known "
            "only after a pass."
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self.bad_cases, self.num_cases = [], 0
        for collated in super().__iter__():
            self.num_cases += collated.num_cases
            for bad in collated.bad_cases:
                logger.warning("skipped case %s: %s", bad.case, bad.error)
                self.bad_cases.append(bad)
            if collated.batch is not None:
                yield collated.batch
        self._finish_pass()

    def _finish_pass(self) -> None:
        skipped, total = len(self.bad_cases), self.num_cases
        summary = f"{skipped} of {total} cases skipped"
        if self.bad_case_log is not None:
            self.bad_case_log.replace(self._log_source, self.bad_cases)
            summary += f"; the list is in {self.report_path}"
        elif self.report_path is not None:
            write_bad_cases(self.bad_cases, self.report_path)
            summary += f"; the list is in {self.report_path}"
        (logger.warning if skipped else logger.info)(summary + ".")
        if self.fail_if_all_bad and total > 0 and skipped == total:
            raise DatasetError(
                f"all {total} cases failed to load or check, nothing to infer; first: {self.bad_cases[0].case}: "
                f"{self.bad_cases[0].error}"
            )


def _entries(bad_cases: Sequence[BadCase | Mapping[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for bad in bad_cases:
        entry = bad.to_dict() if isinstance(bad, BadCase) else dict(bad)
        if set(entry) != {"case", "error"}:
            raise InputError(f"a bad case must have exactly the keys 'case' and 'error', got {sorted(entry)}.")
        entries.append(entry)
    return entries


def atomic_write(path: str | PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text or bytes) to ``path`` through a temporary file in the same folder and
    :func:`os.replace`, so the file is either absent, the old version or complete: a job killed while writing
    never leaves half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name beside the target ("x": never an existing file); plain open() keeps the umask's permissions
    temporary = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb" if isinstance(content, bytes) else "x") as stream:
            stream.write(content)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out


def write_bad_cases(bad_cases: Sequence[BadCase | Mapping[str, Any]], path: str | PathLike) -> Path:
    """Write ``[{"case": ..., "error": ...}, ...]`` (``[]`` when empty) to ``path`` as JSON (atomically);
    returns the path."""
    return atomic_write(path, json.dumps(_entries(bad_cases), indent=2) + "\n")


class BadCaseLog:
    """The errors file (``bad_cases.json``) of one run, fed by several sources.

    An explanation job reads its cases with one or two evaluators (each with a
    :class:`FaultTolerantDataLoader`) and explains them in handlers or postprocessing that can fail on one
    case too. Each of them is a *source* (:meth:`new_source`); :meth:`replace` sets a source's entries (a
    loader's list of a pass), :meth:`add` appends one (a case whose explanation failed). The file lists the
    entries source by source in the order the sources were created, each ``{"case", "error"}`` pair once, and
    is rewritten atomically after every change (``[]`` before any). A new log (one per parsed config, i.e.
    per run) starts empty, so a rerun's file lists what that run found, not what an earlier run did.

    Parameters
    ----------
    path
        The JSON file (e.g. ``<output_dir>/bad_cases.json``).
    """

    def __init__(self, path: str | PathLike) -> None:
        if path in (None, ""):
            raise InputError("BadCaseLog needs the path of its JSON file.")
        self.path = Path(path)
        self._sources: dict[str, list[dict[str, Any]]] = {}

    def new_source(self, kind: str = "source") -> str:
        """Register a source and return its key (sources are listed in the order they were registered)."""
        key = f"{kind}-{len(self._sources)}"
        self._sources[key] = []
        return key

    def _check(self, source: str) -> None:
        if source not in self._sources:
            raise InputError(f"unknown bad-case source {source!r}; get one from new_source().")

    def replace(self, source: str, bad_cases: Sequence[BadCase | Mapping[str, Any]]) -> Path:
        """Set the entries of ``source`` and rewrite the file."""
        self._check(source)
        self._sources[source] = _entries(bad_cases)
        return self.write()

    def add(self, source: str, case: str, error: str) -> Path:
        """Append ``{"case": case, "error": error}`` to ``source``'s entries and rewrite the file."""
        self._check(source)
        self._sources[source].extend(_entries([{"case": str(case), "error": str(error)}]))
        return self.write()

    @property
    def entries(self) -> list[dict[str, Any]]:
        """All entries, source by source, each distinct ``(case, error)`` once."""
        seen: set[tuple[str, str]] = set()
        entries = []
        for source in self._sources.values():
            for entry in source:
                key = (str(entry["case"]), str(entry["error"]))
                if key not in seen:
                    seen.add(key)
                    entries.append(entry)
        return entries

    def write(self) -> Path:
        """Rewrite the file with :attr:`entries` (atomically); returns its path."""
        return write_bad_cases(self.entries, self.path)


def as_bad_case_log(value: BadCaseLog | str | PathLike | None) -> BadCaseLog | None:
    """``value`` as a :class:`BadCaseLog`: a log as it is, a path as a new log there, ``None``/``""`` as ``None``."""
    if value is None or isinstance(value, BadCaseLog):
        return value
    if isinstance(value, (str, PathLike)):
        return None if str(value) == "" else BadCaseLog(value)
    raise InputError(f"bad_case_log must be a BadCaseLog, a path or None, got {type(value).__name__}.")


def case_source(item: Mapping[str, Any], image_key: Hashable = "image") -> str | None:
    """The file a case was (or is to be) loaded from: ``item[image_key]`` itself when it is a path, else its
    MetaTensor ``filename_or_obj``, else ``item["<image_key>_meta_dict"]["filename_or_obj"]``; ``None`` when none
    is there."""
    if not isinstance(item, Mapping):
        return None
    value = item.get(image_key)
    if isinstance(value, (str, PathLike)):
        return str(value) if str(value).strip() else None
    source = None
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping):
        source = meta.get("filename_or_obj")
    meta_dict = item.get(f"{image_key}_meta_dict")
    if not source and isinstance(meta_dict, Mapping):
        source = meta_dict.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else None
    return str(source) if isinstance(source, (str, PathLike)) and str(source).strip() else None


class SkipFailedCases(Transform):
    """Run ``transform`` on one case; on a case error record the case and return it unchanged.

    Meant for an evaluator's ``postprocessing`` that computes and writes explanations (Grad-CAM maps,
    expected Dice, ...): an error there would otherwise abort the whole run. The error is searched for along
    the ``__cause__`` chain (MONAI's ``Compose`` wraps it) as :class:`FaultTolerantDataset` does; errors that
    are not case errors (``TypeError``, ``KeyError``, ... : programming or configuration errors) propagate.
    A failed case is logged as one warning line, added to ``bad_case_log`` and counted in :attr:`failed`;
    the data it returns lacks the outputs ``transform`` would have added, so nothing is written for it.

    Parameters
    ----------
    transform
        The per-case transform (typically a ``Compose``).
    bad_case_log
        Where failed cases are recorded (a :class:`BadCaseLog`, or a path for a log of its own), or ``None``.
    case_errors
        Exception types that mark the case as bad (default :data:`CASE_ERRORS`).
    image_key
        Key of the image whose file names the case (:func:`case_source`).
    case_name_fn
        Maps that file to the case name; default its base name. Bundles pass
        :func:`medxai.transforms.outputs.output_case_name` (the name outputs are written under); the path and
        file name are then kept out of the recorded message.
    """

    def __init__(
        self,
        transform: Callable[..., Any],
        bad_case_log: BadCaseLog | str | PathLike | None = None,
        case_errors: Sequence[type[BaseException]] = CASE_ERRORS,
        image_key: Hashable = "image",
        case_name_fn: Callable[[str], str] | None = None,
    ) -> None:
        if not callable(transform):
            raise InputError(f"SkipFailedCases needs a callable transform, got {type(transform).__name__}.")
        self.transform = transform
        self.bad_case_log = as_bad_case_log(bad_case_log)
        self._log_source = None if self.bad_case_log is None else self.bad_case_log.new_source("postprocessing")
        self.case_errors = tuple(case_errors)
        self.image_key = image_key
        self.case_name_fn = case_name_fn
        self.failed: list[BadCase] = []

    def __call__(self, data: Any) -> Any:
        try:
            return apply_transform(self.transform, data)
        except Exception as exc:
            cause = find_case_error(exc, self.case_errors)
            if cause is None:
                raise
            source = case_source(data, self.image_key)
            if source is None:
                name = f"unnamed-{len(self.failed)}"
            else:
                name = self.case_name_fn(source) if self.case_name_fn is not None else _base_name(source)
            message = describe_case_error(cause, name, source if self.case_name_fn is not None else None)
            bad = BadCase(index=len(self.failed), case=name, error=message)
            self.failed.append(bad)
            logger.warning("case %s failed after loading, skipped: %s", name, message)
            if self.bad_case_log is not None:
                self.bad_case_log.add(self._log_source, name, message)
            return data
