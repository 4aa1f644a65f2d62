"""Loading a MONAI datalist for a bundle, checked before any training starts.

``load_datalist`` wraps :func:`monai.data.load_decathlon_datalist` (which resolves relative paths against the
datalist's folder) and checks what would otherwise fail hours into a run: malformed JSON, a missing split,
records without an image, files that do not exist, and labels outside the class range. Each problem is a
:class:`~medxai.errors.DatasetError` naming the datalist, the split, the record (by file name, never by
patient) and the value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from medxai.errors import DatasetError

__all__ = ["load_datalist", "case_name", "select_records"]


def case_name(record: dict[str, Any], index: int) -> str:
    """A readable name for a record in error messages: its image's file name (or its index)."""
    image = record.get("image")
    if isinstance(image, (list, tuple)) and image:
        image = image[0]
    return Path(str(image)).name if image else f"record {index}"


def load_datalist(
    datalist: str | PathLike,
    split: str = "training",
    label_key: str | None = "label",
    num_classes: int | None = None,
    required_keys: Sequence[str] = ("image",),
    base_dir: str | PathLike | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read one split of a datalist JSON and validate every record.

    Parameters
    ----------
    datalist
        Path of the JSON file (``{"training": [...], "validation": [...], "test": [...]}``).
    split
        The list to read.
    label_key
        Key holding the class index; copied to ``"label"`` when it differs (e.g. the CT demo set's binary
        ``"covid"``). ``None`` for unlabelled inference lists.
    num_classes
        When given, every label must be an integer in ``[0, num_classes)``.
    required_keys
        Keys every record must have (besides ``label_key``).
    base_dir
        Folder that relative paths are resolved against (default: the datalist's folder).
    check_files
        Check that every ``required_keys`` path exists.

    Returns
    -------
    list of dict
        The records with absolute paths and ``"label"`` set.
    """
    path = Path(datalist)
    if not path.is_file():
        raise DatasetError(f"datalist {path} does not exist.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"datalist {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}.")
    if not isinstance(content, dict):
        raise DatasetError(f"datalist {path} must be a JSON object with one list per split, got {type(content).__name__}.")
    if split not in content:
        available = [k for k, v in content.items() if isinstance(v, list)]
        raise DatasetError(f"datalist {path} has no '{split}' list; it has {available}.")
    if not isinstance(content[split], list) or not content[split]:
        raise DatasetError(f"datalist {path}: '{split}' must be a non-empty list of records.")
    for i, record in enumerate(content[split]):
        if not isinstance(record, dict):
            raise DatasetError(f"datalist {path}: '{split}' record {i} is a {type(record).__name__}, not an object.")
        missing = [k for k in (*required_keys, *([label_key] if label_key else [])) if k not in record]
        if missing:
            raise DatasetError(f"datalist {path}: '{split}' {case_name(record, i)} lacks {missing}.")
    records = load_decathlon_datalist(
        str(path), is_segmentation=False, data_list_key=split, base_dir=str(base_dir) if base_dir else None
    )
    for i, record in enumerate(records):
        name = case_name(record, i)
        if check_files:
            for key in required_keys:
                values = record[key] if isinstance(record[key], (list, tuple)) else [record[key]]
                for value in values:
                    if not Path(str(value)).exists():
                        raise DatasetError(f"datalist {path}: '{split}' {name}: {key} file {value} does not exist.")
        if label_key:
            label = record[label_key]
            if isinstance(label, bool) or not isinstance(label, int):
                raise DatasetError(f"datalist {path}: '{split}' {name}: label '{label_key}' = {label!r} is not an integer.")
            if num_classes is not None and not 0 <= label < num_classes:
                raise DatasetError(
                    f"datalist {path}: '{split}' {name}: label {label} is outside the class range [0, {num_classes})."
                )
            record["label"] = label
    return records


def select_records(
    records: Sequence[dict[str, Any]],
    key: str,
    values: str | Sequence[str],
    keep_keys: Sequence[str] | None = None,
    what: str = "records",
) -> list[dict[str, Any]]:
    """The records whose ``key`` is one of ``values``, optionally reduced to ``keep_keys``.

    Used to pick the labelled thick and the unlabelled thin volumes of one split (``key="thickness"``);
    ``keep_keys=["image"]`` drops the thin volumes' labels so training never reads them.

    Raises
    ------
    DatasetError
        When a record lacks ``key`` or a kept key, or when nothing matches (naming the values found).
    """
    wanted = [values] if isinstance(values, str) else list(values)
    selected = []
    for i, record in enumerate(records):
        if key not in record:
            raise DatasetError(f"{what}: {case_name(record, i)} has no '{key}' to select by.")
        if str(record[key]) in wanted:
            if keep_keys is not None:
                missing = [k for k in keep_keys if k not in record]
                if missing:
                    raise DatasetError(f"{what}: {case_name(record, i)} lacks {missing}.")
                record = {k: record[k] for k in keep_keys}
            selected.append(record)
    if not selected:
        found = sorted({str(r.get(key)) for r in records})
        raise DatasetError(f"{what}: no record has {key} in {wanted}; the values found are {found}.")
    return selected
