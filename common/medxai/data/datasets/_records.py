"""Checks and helpers shared by the dataset builders.

Every check raises :class:`medxai.errors.DatasetError` naming the path (or manifest row) and the problem;
nothing is skipped silently and nothing falls back to demo data.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from medxai.errors import DatasetError

__all__ = [
    "Record",
    "IMAGE_SUFFIXES",
    "require_dir",
    "require_file",
    "read_manifest",
    "class_index",
    "make_record",
    "list_image_files",
    "natural_key",
    "require_records",
    "merge_groups",
]

Record = dict[str, Any]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _absolute(path: str | PathLike) -> Path:
    """Absolute, normalised path (``..`` resolved lexically, symbolic links kept)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def require_dir(path: str | PathLike, what: str = "dataset root") -> Path:
    """``path`` as an absolute :class:`~pathlib.Path`; raises when it is not an existing folder."""
    path = _absolute(path)
    if not path.is_dir():
        reason = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {reason}.")
    return path


def require_file(path: str | PathLike, where: str) -> Path:
    """``path`` as an absolute path; raises naming ``where`` (manifest row, folder) when it is not a file."""
    path = _absolute(path)
    if not path.is_file():
        raise DatasetError(f"{where}: file {path} does not exist.")
    return path


def read_manifest(path: str | PathLike, required: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV manifest as dicts; raises when the file, a required column or any row is missing.

    Cells are stripped of surrounding white space; empty cells are ``""``.
    """
    path = _absolute(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatasetError(f"manifest {path} lacks required column(s) {missing}; it has {columns}.")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise DatasetError(f"manifest {path} has no rows.")
    return rows


def class_index(value: str | int, class_names: Sequence[str], where: str) -> int:
    """Index of ``value`` in ``class_names``: a class name, or an integer (as int or digits) in range."""
    text = str(value).strip()
    if text in class_names:
        return list(class_names).index(text)
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if not 0 <= index < len(class_names):
            raise DatasetError(f"{where}: label {index} is outside the class range [0, {len(class_names) - 1}].")
        return index
    raise DatasetError(f"{where}: unknown class {text!r}; expected one of {list(class_names)}.")


def make_record(
    image: str | PathLike | Sequence[str | PathLike],
    label: int,
    class_names: Sequence[str],
    patient_id: str | None = None,
    **extra: Any,
) -> Record:
    """A datalist entry: absolute ``image`` path(s), ``label``, ``class_name``, ``patient_id`` and extras.

    Path-valued extras must already be strings; ``None`` extras are left out so that optional masks are
    absent rather than empty.
    """
    if not 0 <= label < len(class_names):
        raise DatasetError(f"{image}: label {label} is outside the class range [0, {len(class_names) - 1}].")
    if isinstance(image, (str, PathLike)):
        image_value: str | list[str] = str(_absolute(image))
    else:
        image_value = [str(_absolute(p)) for p in image]
    record: Record = {"image": image_value, "label": int(label), "class_name": class_names[label]}
    if patient_id is not None and str(patient_id).strip():
        record["patient_id"] = str(patient_id).strip()
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def natural_key(path: str | PathLike) -> list[Any]:
    """Sort key that orders ``2.png`` before ``10.png`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]


def list_image_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (case-insensitive suffix match), naturally sorted; hidden files ignored."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in pattern
        if p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in suffixes)
    ]
    return sorted(files, key=lambda p: [*(natural_key(part) for part in p.relative_to(folder).parts)])


def require_records(records: Sequence[Record], root: Path, what: str) -> list[Record]:
    """Raise when a builder found no case at all under ``root``."""
    if not records:
        raise DatasetError(f"{what} at {root} holds no images.")
    return list(records)


def merge_groups(
    records: Sequence[Mapping[str, Any]],
    linked: Iterable[tuple[int, int]],
    patient_key: str = "patient_id",
) -> list[str]:
    """Split-group id per record: records of one patient or linked by ``linked`` pairs share a group.

    Union-find over record indices: two records end up in one group when they share a patient id or are
    connected by a chain of linked pairs (e.g. near-duplicate images of different "patients"). A group is
    named by the smallest patient id it contains (or ``record-<i>`` for records without one), so it reads
    like a patient id and can go through :func:`medxai.data.splits.patient_split` as one.
    """
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_of_patient: dict[str, int] = {}
    for i, record in enumerate(records):
        pid = record.get(patient_key)
        if pid is not None and str(pid) != "":
            union(i, first_of_patient.setdefault(str(pid), i))
    for i, j in linked:
        union(i, j)
    names: dict[int, str] = {}
    for i, record in enumerate(records):
        pid = record.get(patient_key)
        name = str(pid) if pid is not None and str(pid) != "" else f"record-{i}"
        root = find(i)
        names[root] = min(names.get(root, name), name)
    return [names[find(i)] for i in range(len(records))]
