"""Patient-level splits: no patient in two splits, classes balanced across splits.

Public COVID-19 datasets hold several slices or scans per patient; splitting them image by image leaks
patients between training and test and inflates every metric. These helpers split *patients*, stratified
by label, and check the result.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medxai.data.privacy import pseudonym
from medxai.errors import DatasetError

__all__ = ["patient_split", "patient_kfold", "check_patient_disjoint", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS: dict[str, float] = {"training": 0.7, "validation": 0.1, "test": 0.2}

Record = Mapping[str, Any]


def _patient_of(record: Record, index: int, patient_key: str) -> str:
    """A record's patient id; a record without one is its own patient."""
    value = record.get(patient_key)
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return f"__record_{index}"
    return str(value)


def _group_by_patient(
    records: Sequence[Record], label_key: str, patient_key: str
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Indices of each patient's records and each patient's label (the most common one)."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        if label_key not in record:
            raise DatasetError(f"record {i} ({record.get('image', '?')}) has no label key '{label_key}'.")
        members[_patient_of(record, i, patient_key)].append(i)
    labels = {
        pid: Counter(str(records[i][label_key]) for i in idx).most_common(1)[0][0] for pid, idx in members.items()
    }
    return dict(members), labels


def patient_split(
    records: Sequence[Record],
    fractions: Mapping[str, float] | None = None,
    label_key: str = "label",
    patient_key: str = "patient_id",
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Split records into named subsets so that every patient lands in exactly one.

    Patients are shuffled within each label (a patient's label is the most common label of its records)
    and dealt to the subsets in proportion to ``fractions``, so each subset keeps the class balance.

    Parameters
    ----------
    records
        Datalist entries (dicts) with at least ``label_key``; ``patient_key`` is optional per record
        (a record without it is treated as its own patient).
    fractions
        Subset name -> fraction of patients; must sum to 1. Default 70/10/20 training/validation/test.
    seed
        Seed of the shuffle: the same seed gives the same split.

    Returns
    -------
    dict
        Subset name -> list of records (copies), in the original record order.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if not fractions or any(f < 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise DatasetError(f"split fractions must be non-negative and sum to 1, got {fractions}.")
    members, labels = _group_by_patient(records, label_key, patient_key)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], dtype=float)
    assignment: dict[str, str] = {}
    for label in sorted(set(labels.values())):
        patients = sorted(pid for pid, lab in labels.items() if lab == label)
        patients = [patients[i] for i in rng.permutation(len(patients))]
        # Largest-remainder rounding keeps the per-class counts summing to the class size.
        raw = weights * len(patients)
        counts = np.floor(raw).astype(int)
        for j in np.argsort(-(raw - counts), kind="stable")[: len(patients) - counts.sum()]:
            counts[j] += 1
        start = 0
        for name, count in zip(names, counts):
            for pid in patients[start : start + count]:
                assignment[pid] = name
            start += count
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i, record in enumerate(records):
        out[assignment[_patient_of(record, i, patient_key)]].append(dict(record))
    check_patient_disjoint(out, patient_key)
    return out


def patient_kfold(
    records: Sequence[Record],
    n_folds: int = 5,
    label_key: str = "label",
    patient_key: str = "patient_id",
    seed: int = 0,
) -> list[dict[str, list[dict[str, Any]]]]:
    """Stratified, patient-grouped k-fold cross-validation (scikit-learn's ``StratifiedGroupKFold``).

    Returns
    -------
    list
        One dict per fold with ``"training"`` and ``"validation"`` record lists; every record is in the
        validation part of exactly one fold, and no patient is on both sides of any fold.
    """
    members, _ = _group_by_patient(records, label_key, patient_key)
    if n_folds < 2 or n_folds > len(members):
        raise DatasetError(f"n_folds must be in [2, number of patients = {len(members)}], got {n_folds}.")
    groups = [_patient_of(r, i, patient_key) for i, r in enumerate(records)]
    y = [str(r[label_key]) for r in records]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for train_idx, val_idx in splitter.split(np.zeros(len(records)), y, groups):
        fold = {
            "training": [dict(records[i]) for i in sorted(train_idx)],
            "validation": [dict(records[i]) for i in sorted(val_idx)],
        }
        check_patient_disjoint(fold, patient_key)
        folds.append(fold)
    return folds


def check_patient_disjoint(splits: Mapping[str, Sequence[Record]], patient_key: str = "patient_id") -> None:
    """Raise :class:`DatasetError` if any patient appears in more than one split.

    The message names the splits and the patients by pseudonym (never the raw identifier).
    """
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for name, records in splits.items():
        for record in records:
            value = record.get(patient_key)
            if value is None or str(value).strip() == "":
                continue
            pid = str(value)
            if pid in seen and seen[pid] != name:
                clashes.append(f"{pseudonym(pid)} in '{seen[pid]}' and '{name}'")
            seen.setdefault(pid, name)
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; ... {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise DatasetError(f"{len(clashes)} patient(s) appear in more than one split: {shown}.")
