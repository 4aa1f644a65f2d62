"""Turn builder records into a MONAI datalist JSON with patient-level splits or k folds.

Three ways to split (``split=``):

``"patient"``
    :func:`medxai.data.splits.patient_split`: each patient (or ``group_key`` group) goes to exactly one
    of ``fractions`` (default 70/10/20 training/validation/test), stratified by ``stratify_key``.
``"kfold"``
    :func:`medxai.data.splits.patient_kfold`: every ``training`` record gets a ``fold`` (the fold that
    validates it), the layout of MONAI Auto3DSeg, read back with
    ``monai.auto3dseg.utils.datafold_read(datalist, basedir, fold)``; ``test_fraction`` of the patients is
    held out first as ``test``.
``"predefined"``
    The dataset's own split (records' ``source_split``: train/val/test), checked to be patient-disjoint.

Paths are written relative to the dataset root (load with
``monai.data.load_decathlon_datalist(path, base_dir=root)``) unless ``relative=False``; patient ids are
replaced by :func:`medxai.data.privacy.pseudonym` unless ``pseudonymize=False``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from medxai.data.datasets._records import Record
from medxai.data.datasets.registry import build_records, get_dataset_spec
from medxai.data.privacy import pseudonym
from medxai.data.splits import DEFAULT_FRACTIONS, check_patient_disjoint, patient_kfold, patient_split
from medxai.data.synthetic.io import write_datalist
from medxai.errors import DatasetError

__all__ = ["split_records", "records_to_datalist", "build_datalist", "SOURCE_SPLIT_NAMES"]

logger = logging.getLogger(__name__)

SplitMode = Literal["patient", "kfold", "predefined"]
SOURCE_SPLIT_NAMES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
PSEUDONYMIZED_KEYS = ("patient_id", "split_group")


def split_records(
    records: Sequence[Record],
    split: SplitMode = "patient",
    fractions: Mapping[str, float] | None = None,
    n_folds: int = 5,
    test_fraction: float = 0.0,
    group_key: str = "patient_id",
    stratify_key: str = "label",
    seed: int = 0,
) -> dict[str, list[Record]]:
    """Split ``records`` into named subsets without sharing any ``group_key`` value between them.

    Returns
    -------
    dict
        ``{"training": [...], "validation": [...], "test": [...]}`` (the ``fractions`` names) for
        ``"patient"``; ``{"training": [... with "fold"], "test": [...]}`` for ``"kfold"`` (``test`` only
        when ``test_fraction > 0``); the dataset's own subsets for ``"predefined"``.
    """
    if split not in ("patient", "kfold", "predefined"):
        raise DatasetError(f"split must be 'patient', 'kfold' or 'predefined', got {split!r}.")
    missing = sum(not str(r.get(group_key, "")).strip() for r in records)
    if missing:
        logger.warning(
            "%d of %d records have no '%s': each is split as its own patient, so images of one patient may "
            "land in different subsets.",
            missing,
            len(records),
            group_key,
        )
    if split == "patient":
        return patient_split(records, fractions, label_key=stratify_key, patient_key=group_key, seed=seed)
    if split == "kfold":
        if not 0.0 <= test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction}.")
        out: dict[str, list[Record]] = {}
        pool = list(records)
        if test_fraction > 0:
            held = patient_split(
                records, {"training": 1.0 - test_fraction, "test": test_fraction}, stratify_key, group_key, seed
            )
            pool, out["test"] = held["training"], held["test"]
        training = []
        for fold, parts in enumerate(patient_kfold(pool, n_folds, stratify_key, group_key, seed)):
            training.extend({**r, "fold": fold} for r in parts["validation"])
        # patient_kfold returns copies, fold by fold: restore the input order (by image path).
        position = {_identity(r): i for i, r in enumerate(pool)}
        return {"training": sorted(training, key=lambda r: position[_identity(r)]), **out}
    subsets: dict[str, list[Record]] = {}
    for record in records:  # split == "predefined"
        source = str(record.get("source_split", "")).strip().lower()
        if source not in SOURCE_SPLIT_NAMES:
            raise DatasetError(
                f"record {record.get('image')} has source_split {record.get('source_split')!r}; "
                f"split='predefined' needs one of {sorted(SOURCE_SPLIT_NAMES)}."
            )
        subsets.setdefault(SOURCE_SPLIT_NAMES[source], []).append(dict(record))
    check_patient_disjoint(subsets, group_key)
    return subsets


def _counts(records: Sequence[Record], key: str) -> dict[str, int]:
    """Number of records per value of ``key``, sorted by value."""
    return dict(sorted(Counter(str(r.get(key)) for r in records).items()))


def _class_names_of(records: Sequence[Record]) -> list[str | None]:
    """Class names in label order as the records name them (``None`` for a label no record has)."""
    names: list[str | None] = [None] * (max(int(r["label"]) for r in records) + 1)
    for record in records:
        names[int(record["label"])] = record["class_name"]
    return names


def _identity(record: Mapping[str, Any]) -> str:
    image = record.get("image")
    return "|".join(image) if isinstance(image, list) else str(image)


def _relative(value: Any, base: Path) -> Any:
    """Absolute path strings inside ``base`` (or lists of them) -> POSIX paths relative to ``base``."""
    if isinstance(value, list):
        return [_relative(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return Path(value).relative_to(base).as_posix()
        except ValueError:
            return value
    return value


def records_to_datalist(
    records: Sequence[Record],
    output: str | PathLike | None = None,
    base_dir: str | PathLike | None = None,
    split: SplitMode = "patient",
    fractions: Mapping[str, float] | None = None,
    n_folds: int = 5,
    test_fraction: float = 0.0,
    group_key: str = "patient_id",
    stratify_key: str = "label",
    seed: int = 0,
    pseudonymize: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Split records (:func:`split_records`), make paths relative to ``base_dir``, and write the JSON.

    Parameters
    ----------
    output
        Where to write the datalist JSON (:func:`medxai.data.synthetic.io.write_datalist`); ``None``
        only returns it.
    base_dir
        Paths under it are written relative to it; ``None`` keeps absolute paths.
    pseudonymize
        Replace ``patient_id`` and ``split_group`` values by :func:`medxai.data.privacy.pseudonym`
        (stable, so patient-level metrics still group correctly).
    metadata
        Extra entries for the ``metadata`` block.

    Returns
    -------
    dict
        The datalist: one list per subset and ``metadata`` (split settings and per-subset class counts).
    """
    if not records:
        raise DatasetError("no records to write into a datalist.")
    subsets = split_records(records, split, fractions, n_folds, test_fraction, group_key, stratify_key, seed)
    base = Path(os.path.abspath(Path(base_dir).expanduser())) if base_dir is not None else None
    for name, items in subsets.items():
        for i, record in enumerate(items):
            record = {k: _relative(v, base) for k, v in record.items()} if base is not None else dict(record)
            if pseudonymize:
                record.update({k: pseudonym(record[k]) for k in PSEUDONYMIZED_KEYS if k in record})
            items[i] = record
    count_key = "class_name" if all("class_name" in r for r in records) else stratify_key
    info: dict[str, Any] = {
        "split": split,
        "seed": seed,
        "group_key": group_key,
        "stratify_key": stratify_key,
        "pseudonymized": pseudonymize,
        "records_without_group": sum(not str(r.get(group_key, "")).strip() for r in records),
        "counts": {name: _counts(items, count_key) for name, items in subsets.items()},
    }
    if split == "patient":
        info["fractions"] = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if split == "kfold":
        info.update(n_folds=n_folds, test_fraction=test_fraction)
        folds = sorted({r["fold"] for r in subsets["training"]})
        info["fold_counts"] = {
            str(fold): _counts([r for r in subsets["training"] if r["fold"] == fold], count_key) for fold in folds
        }
    if base is not None:
        info["base_dir"] = str(base)
    info.update(metadata or {})
    datalist: dict[str, Any] = {**subsets, "metadata": info}
    if output is not None:
        write_datalist(subsets, output, info)
    return datalist


def build_datalist(
    name: str,
    root: str | PathLike,
    output: str | PathLike | None = None,
    split: SplitMode = "patient",
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    n_folds: int = 5,
    test_fraction: float = 0.0,
    group_key: str | None = None,
    stratify_key: str | None = None,
    relative: bool = True,
    pseudonymize: bool = True,
    **builder_kwargs: Any,
) -> dict[str, Any]:
    """Build the registered dataset ``name`` from ``root`` and write its split datalist.

    Example
    -------
    >>> build_datalist("covid_ct_ucsd_manifest", "../shared/data/covid_ct_ucsd",  # doctest: +SKIP
    ...                output="datalist.json", split="kfold", n_folds=5, seed=0)

    Parameters
    ----------
    name
        A name from :func:`medxai.data.datasets.list_datasets`.
    root
        The dataset folder (layouts in each builder's docstring and ``docs/data.md``).
    output
        JSON file to write; ``None`` only returns the datalist.
    split, seed, fractions, n_folds, test_fraction
        See :func:`split_records`.
    group_key, stratify_key
        Default to the dataset's (:class:`medxai.data.datasets.DatasetSpec`).
    relative
        Write paths relative to ``root`` (load with ``load_decathlon_datalist(output, base_dir=root)``).
    pseudonymize
        Replace patient ids by pseudonyms in the written datalist.
    builder_kwargs
        Passed to the dataset's builder (e.g. ``label_mode="severity"`` for MosMedData).
    """
    spec = get_dataset_spec(name)
    records = build_records(spec.name, root, **builder_kwargs)
    metadata: dict[str, Any] = {"dataset": spec.name, "task": spec.task, "patient_ids_known": spec.patient_ids}
    if spec.task == "classification":
        metadata["class_names"] = spec.resolve_class_names(builder_kwargs) or _class_names_of(records)
    return records_to_datalist(
        records,
        output=output,
        base_dir=Path(root) if relative else None,
        split=split,
        fractions=fractions,
        n_folds=n_folds,
        test_fraction=test_fraction,
        group_key=group_key or spec.group_key,
        stratify_key=stratify_key or spec.stratify_key,
        seed=seed,
        pseudonymize=pseudonymize,
        metadata=metadata,
    )
