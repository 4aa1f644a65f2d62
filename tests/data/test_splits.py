from __future__ import annotations

from collections import Counter

import pytest

from medxai.data.privacy import pseudonym
from medxai.data.splits import check_patient_disjoint, patient_kfold, patient_split
from medxai.errors import DatasetError


def _records(n_patients: int = 40, slices_per_patient: int = 3) -> list[dict]:
    return [
        {"image": f"p{p}_s{s}.png", "label": p % 2, "patient_id": f"P{p:03d}"}
        for p in range(n_patients)
        for s in range(slices_per_patient)
    ]


def test_patient_split_is_disjoint_complete_and_stratified():
    records = _records()
    splits = patient_split(records, {"training": 0.5, "validation": 0.25, "test": 0.25}, seed=3)
    patients = {name: {r["patient_id"] for r in recs} for name, recs in splits.items()}
    assert not patients["training"] & patients["test"]
    assert not patients["training"] & patients["validation"]
    assert not patients["validation"] & patients["test"]
    # every record kept exactly once
    assert sorted(r["image"] for recs in splits.values() for r in recs) == sorted(r["image"] for r in records)
    # 20 patients per class: largest-remainder rounding gives exactly 10/5/5 per class
    for name, expected in (("training", 10), ("validation", 5), ("test", 5)):
        per_class = Counter(r["label"] for r in splits[name])
        assert per_class == {0: expected * 3, 1: expected * 3}


def test_patient_split_is_deterministic_by_seed():
    records = _records()
    a = patient_split(records, seed=1)
    b = patient_split(records, seed=1)
    c = patient_split(records, seed=2)
    assert a == b
    assert a != c


def test_records_without_patient_are_their_own_patient():
    records = [{"image": f"{i}.png", "label": i % 2} for i in range(10)]
    splits = patient_split(records, {"training": 0.8, "test": 0.2}, seed=0)
    assert len(splits["training"]) == 8 and len(splits["test"]) == 2


def test_bad_fractions_and_missing_label_raise():
    with pytest.raises(DatasetError, match="sum to 1"):
        patient_split(_records(), {"training": 0.5, "test": 0.2})
    with pytest.raises(DatasetError, match="no label key 'label'"):
        patient_split([{"image": "a.png"}])


def test_kfold_validates_every_record_once_without_patient_leak():
    records = _records(30, 2)
    folds = patient_kfold(records, n_folds=5, seed=0)
    assert len(folds) == 5
    validated = Counter(r["image"] for fold in folds for r in fold["validation"])
    assert set(validated.values()) == {1} and len(validated) == len(records)
    for fold in folds:
        train_p = {r["patient_id"] for r in fold["training"]}
        val_p = {r["patient_id"] for r in fold["validation"]}
        assert not train_p & val_p
        # 30 patients, 15 per class -> 3 per class per validation fold
        assert Counter(r["label"] for r in fold["validation"]) == {0: 6, 1: 6}


def test_check_patient_disjoint_names_pseudonym_not_identifier():
    splits = {"training": [{"patient_id": "Jane Doe"}], "test": [{"patient_id": "Jane Doe"}]}
    with pytest.raises(DatasetError) as err:
        check_patient_disjoint(splits)
    assert "Jane Doe" not in str(err.value)
    assert pseudonym("Jane Doe") in str(err.value)


def test_pseudonym_is_stable_salted_and_opaque():
    assert pseudonym("123", salt="a") == pseudonym("123", salt="a")
    assert pseudonym("123", salt="a") != pseudonym("123", salt="b")
    assert pseudonym("123", salt="a").startswith("pt-")
    assert len(pseudonym("x", length=8)) == 3 + 8
