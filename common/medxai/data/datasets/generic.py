"""Generic builders: a CSV of image paths and labels, and a folder-per-class tree.

These cover a hospital's own data: export a table (image path, label, patient) or sort images into one
folder per class, and build a patient-level datalist with :func:`medxai.data.datasets.build_datalist`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from medxai.data.datasets._records import (
    IMAGE_SUFFIXES,
    Record,
    class_index,
    list_image_files,
    make_record,
    read_manifest,
    require_dir,
    require_file,
    require_records,
)
from medxai.data.datasets.registry import register_dataset
from medxai.errors import DatasetError

__all__ = ["csv_dataset", "folder_dataset"]

VOLUME_SUFFIXES = (".nii", ".nii.gz")


def _class_names_from_labels(values: Sequence[str], where: str) -> tuple[str, ...]:
    """Class names when none are given: ``"0".."K-1"`` for integer labels, else the sorted distinct names."""
    if all(re.fullmatch(r"\d+", v) for v in values):
        return tuple(str(i) for i in range(max(int(v) for v in values) + 1))
    if any(re.fullmatch(r"-\d+", v) for v in values):
        raise DatasetError(f"{where}: negative labels {sorted({v for v in values if v.startswith('-')})}.")
    return tuple(sorted(set(values)))


@register_dataset("csv", class_names=lambda kw: kw.get("class_names"))
def csv_dataset(
    root: str | PathLike,
    csv_path: str | PathLike = "manifest.csv",
    image_column: str = "image",
    label_column: str = "label",
    patient_column: str | None = None,
    class_names: Sequence[str] | None = None,
    path_columns: Sequence[str] = (),
    extra_columns: Sequence[str] = (),
) -> list[Record]:
    """Records from a CSV table with one row per image.

    Layout::

        <root>/manifest.csv        (or csv_path; relative to root)
        <root>/<image paths as listed in the image column>

    Parameters
    ----------
    root
        Folder that relative image paths in the table start from.
    csv_path
        The table (comma separated, header row).
    image_column, label_column, patient_column
        Column names of the image path, the label (class name or integer index) and the patient id.
    class_names
        Class names in label order. When omitted: ``"0".."K-1"`` for integer labels (K = largest + 1),
        otherwise the distinct names sorted alphabetically.
    path_columns
        Further columns holding file paths (masks); each non-empty cell must name an existing file and is
        stored as an absolute path under the column name.
    extra_columns
        Columns copied into the records as strings.

    Raises
    ------
    DatasetError
        Missing root, table, column or referenced file; unknown class or out-of-range label (naming the row).
    """
    root = require_dir(root)
    table = Path(csv_path) if Path(csv_path).is_absolute() else root / csv_path
    required = [image_column, label_column, *path_columns, *extra_columns]
    required += [patient_column] if patient_column else []
    rows = read_manifest(table, required)
    names = tuple(class_names) if class_names is not None else _class_names_from_labels(
        [r[label_column] for r in rows], f"manifest {table}"
    )
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"manifest {table} line {line}"
        image = require_file(root / row[image_column], where)
        extras: dict[str, str | None] = {
            c: str(require_file(root / row[c], where)) if row[c] else None for c in path_columns
        }
        extras.update({c: row[c] for c in extra_columns})
        patient = row[patient_column] if patient_column else None
        records.append(make_record(image, class_index(row[label_column], names, where), names, patient, **extras))
    return require_records(records, root, f"table {table}")


@register_dataset("folder", class_names=lambda kw: kw.get("class_names"))
def folder_dataset(
    root: str | PathLike,
    class_names: Sequence[str] | None = None,
    patient_pattern: str | None = None,
    suffixes: Sequence[str] = IMAGE_SUFFIXES + VOLUME_SUFFIXES,
) -> list[Record]:
    """Records from one sub-folder per class (images found at any depth below each class folder).

    Layout::

        <root>/<class 0>/**/<image>.png|jpg|nii.gz ...
        <root>/<class 1>/**/...

    Parameters
    ----------
    class_names
        Class folder names in label order; default the sub-folders of ``root`` sorted alphabetically.
    patient_pattern
        Regular expression searched in each image path relative to its class folder (POSIX separators);
        its group ``patient`` (or its first group) is the patient id, e.g. ``r"^(?P<patient>[^/]+)/"`` for
        ``<class>/<patient>/<image>``. An image the pattern does not match is an error.
    suffixes
        File name endings counted as images (case-insensitive).
    """
    root = require_dir(root)
    if class_names is None:
        class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_names:
            raise DatasetError(f"dataset root {root} has no class sub-folders.")
    pattern = re.compile(patient_pattern) if patient_pattern else None
    records = []
    for label, name in enumerate(class_names):
        folder = require_dir(root / name, "class folder")
        files = list_image_files(folder, tuple(suffixes), recursive=True)
        if not files:
            raise DatasetError(f"class folder {folder} holds no images ({', '.join(suffixes)}).")
        for file in files:
            patient = None
            if pattern is not None:
                match = pattern.search(file.relative_to(folder).as_posix())
                if match is None:
                    raise DatasetError(f"{file}: patient_pattern {pattern.pattern!r} does not match its path.")
                patient = match.group("patient") if "patient" in pattern.groupindex else match.group(1)
            records.append(make_record(file, label, tuple(class_names), patient))
    return require_records(records, root, "folder dataset")
