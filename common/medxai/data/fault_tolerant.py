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

Example bundle config::

    "dataset": {"_target_": "medxai.data.fault_tolerant.FaultTolerantDataset",
                "data": "@records", "transform": "@preprocessing"},
    "dataloader": {"_target_": "medxai.data.fault_tolerant.FaultTolerantDataLoader",
                   "dataset": "@dataset", "batch_size": 1, "num_workers": 2,
                   "report_path": "$@output_dir + '/bad_cases.json'"}
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from monai.data import DataLoader, Dataset
from monai.data.utils import list_data_collate
from monai.transforms import apply_transform
from nibabel.filebasedimages import ImageFileError
from pydicom.errors import InvalidDicomError

from medxai.errors import DatasetError, InputError, MedXAIError

__all__ = [
    "CASE_ERRORS",
    "BadCase",
    "find_case_error",
    "FaultTolerantDataset",
    "FaultTolerantDataLoader",
    "write_bad_cases",
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
        message = _one_line(cause)
        source = _source(self.data[index], self.name_key)
        if source is not None and self.case_name_fn is not None:
            # the case was renamed (pseudonymised): keep its path and file name out of the message too
            for text in sorted({source, source.rstrip("/\\"), _base_name(source)}, key=len, reverse=True):
                if text:
                    message = message.replace(text, name)
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
        **kwargs: Any,
    ) -> None:
        if "batch_size" in kwargs and kwargs["batch_size"] is None:
            raise InputError("FaultTolerantDataLoader needs batch_size >= 1 (batch_size=None is not supported).")
        if isinstance(kwargs.get("collate_fn"), _CollateGoodCases):
            raise InputError("collate_fn is already wrapped by FaultTolerantDataLoader; pass the inner one.")
        kwargs["collate_fn"] = _CollateGoodCases(kwargs.get("collate_fn") or list_data_collate)
        super().__init__(dataset, num_workers=num_workers, **kwargs)
        self.report_path = None if report_path in (None, "") else Path(report_path)  # type: ignore[arg-type]
        self.fail_if_all_bad = fail_if_all_bad
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
        if self.report_path is not None:
            write_bad_cases(self.bad_cases, self.report_path)
            summary += f"; the list is in {self.report_path}"
        (logger.warning if skipped else logger.info)(summary + ".")
        if self.fail_if_all_bad and total > 0 and skipped == total:
            raise DatasetError(
                f"all {total} cases failed to load or check, nothing to infer; first: {self.bad_cases[0].case}: "
                f"{self.bad_cases[0].error}"
            )


def write_bad_cases(bad_cases: Sequence[BadCase | Mapping[str, Any]], path: str | PathLike) -> Path:
    """Write ``[{"case": ..., "error": ...}, ...]`` (``[]`` when empty) to ``path`` as JSON; returns the path."""
    entries = []
    for bad in bad_cases:
        entry = bad.to_dict() if isinstance(bad, BadCase) else dict(bad)
        if set(entry) != {"case", "error"}:
            raise InputError(f"a bad case must have exactly the keys 'case' and 'error', got {sorted(entry)}.")
        entries.append(entry)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=2) + "\n")
    return out
