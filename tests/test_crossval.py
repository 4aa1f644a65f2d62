"""Five-fold cross-validation helpers (seed 004 sec. 5.3, Table 2, Figs. 9-10): fold datalists and the table."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

from medxai.crossval import aggregate_fold_metrics, fold_commands, write_fold_datalists
from medxai.errors import DatasetError, InputError


def _metrics(tmp_path: Path, k: int, values: dict, matrix: list) -> Path:
    path = tmp_path / f"fold_{k}" / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**values, "confusion_matrix": matrix, "class_names": ["non-COVID-19", "COVID-19"]}))
    return path


def test_aggregate_gives_hand_computed_mean_sample_std_and_mean_confusion(tmp_path):
    folds = [
        ({"accuracy": 0.90, "precision": 0.80, "sensitivity": 1.00, "specificity": 0.80, "f1": 0.8}, [[8, 2], [0, 10]]),
        ({"accuracy": 0.80, "precision": 1.00, "sensitivity": 0.60, "specificity": 1.00, "f1": 0.75}, [[10, 0], [4, 6]]),
        ({"accuracy": 0.70, "precision": 0.60, "sensitivity": 0.90, "specificity": None, "f1": 0.72}, [[4, 6], [1, 9]]),
    ]
    files = [_metrics(tmp_path, k, v, m) for k, (v, m) in enumerate(folds)]
    summary = aggregate_fold_metrics(files, tmp_path / "out", title="DenseNet201")
    acc = summary["metrics"]["accuracy"]
    # mean (0.9 + 0.8 + 0.7) / 3 = 0.8; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    assert acc["mean"] == pytest.approx(0.8) and acc["std"] == pytest.approx(0.1)
    # precision: mean 0.8, deviations 0, 0.2, -0.2 -> sqrt(0.08 / 2) = 0.2
    assert summary["metrics"]["precision"]["std"] == pytest.approx(0.2)
    # sensitivity: mean 2.5 / 3; deviations 1/6, -7/30, 1/15 -> sum of squares 0.0866..., / 2 -> sqrt
    sens = [1.0, 0.6, 0.9]
    mean = sum(sens) / 3
    assert summary["metrics"]["sensitivity"]["mean"] == pytest.approx(0.8333333333)
    assert summary["metrics"]["sensitivity"]["std"] == pytest.approx(math.sqrt(sum((s - mean) ** 2 for s in sens) / 2))
    assert summary["metrics"]["sensitivity"]["std"] == pytest.approx(0.2081665999)
    # an undefined value (None) is left out: specificity over the two defined folds, mean 0.9, std sqrt(0.02)
    spec = summary["metrics"]["specificity"]
    assert spec["per_fold"] == [0.8, 1.0, None]
    assert spec["mean"] == pytest.approx(0.9) and spec["std"] == pytest.approx(math.sqrt(0.02))
    # averaged confusion matrix: [[22/3, 8/3], [5/3, 25/3]]
    assert sum(summary["confusion_matrix_mean"], []) == pytest.approx([22 / 3, 8 / 3, 5 / 3, 25 / 3])
    assert summary["confusion_matrix_sum"] == [[22, 8], [5, 25]]
    out = tmp_path / "out"
    md = (out / "cv_table.md").read_text()
    assert "| DenseNet201 | 80.00 +- 10.00 | 80.00 +- 20.00 | 83.33 +- 20.82 | 90.00 +- 14.14 |" in md
    rows = list(csv.reader((out / "cv_table.csv").open()))
    assert rows[0] == ["metric", "mean", "std", "fold_0", "fold_1", "fold_2"]
    assert float(rows[1][1]) == pytest.approx(0.8)
    assert json.loads((out / "cv_summary.json").read_text())["n_folds"] == 3
    assert (out / "cv_confusion.png").stat().st_size > 1000


def test_aggregate_names_a_missing_fold_file(tmp_path):
    with pytest.raises(InputError, match="fold_9"):
        aggregate_fold_metrics([tmp_path / "fold_9" / "metrics.json"])


def _datalist(tmp_path: Path) -> Path:
    records = []
    for p in range(20):
        for s in range(2 if p % 3 else 1):
            records.append({"image": f"images/p{p}_{s}.png", "label": p % 2, "patient_id": f"pat{p}"})
    path = tmp_path / "data" / "datalist.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"training": records[:25], "validation": records[25:], "metadata": {"x": 1}}))
    return path


def test_fold_datalists_cover_every_record_once_patient_grouped_with_absolute_paths(tmp_path):
    source = _datalist(tmp_path)
    paths = write_fold_datalists(source, tmp_path / "cv", n_folds=5)
    assert [p.relative_to(tmp_path / "cv").as_posix() for p in paths] == [f"fold_{k}/datalist.json" for k in range(5)]
    held_out = []
    for path in paths:
        fold = json.loads(path.read_text())
        assert fold["test"] == fold["validation"]
        train_patients = {r["patient_id"] for r in fold["training"]}
        test_patients = {r["patient_id"] for r in fold["test"]}
        assert not train_patients & test_patients
        assert len(fold["training"]) + len(fold["test"]) == 33
        assert {r["label"] for r in fold["test"]} == {0, 1}  # stratified: both classes in every fold
        assert all(Path(r["image"]).is_absolute() and r["image"].startswith(str(source.parent)) for r in fold["test"])
        held_out += [r["image"] for r in fold["test"]]
    assert len(held_out) == len(set(held_out)) == 33


def test_fold_datalists_refuse_a_missing_split(tmp_path):
    with pytest.raises(DatasetError, match="no list 'test'"):
        write_fold_datalists(_datalist(tmp_path), tmp_path / "cv", splits=["test"])


def test_fold_commands_train_then_evaluate_on_the_fold(tmp_path):
    train, evaluate = fold_commands(
        tmp_path / "b", tmp_path / "f" / "datalist.json", tmp_path / "f", overlays=["configs/demo.json"],
        overrides={"num_epochs": 3, "backbone": "resnet18"},
    )
    assert train[:5] == [sys.executable, "-m", "monai.bundle", "run", "training"]
    assert evaluate[:4] == [sys.executable, "-m", "monai.bundle", "run"] and evaluate[4] == "--config_file"
    configs = eval(evaluate[5])  # a Python list literal, as monai.bundle reads it
    assert [Path(c).name for c in configs] == ["train.json", "evaluate.json", "demo.json"]
    assert train[train.index("--dataset_dir") + 1] == str((tmp_path / "f" / "datalist.json").resolve())
    assert evaluate[evaluate.index("--output_dir") + 1] == str((tmp_path / "f" / "eval").resolve())
    assert train[train.index("--num_epochs") + 1] == "3" and train[train.index("--backbone") + 1] == "resnet18"


def test_fold_overrides_reach_monai_bundle_as_the_same_python_values(tmp_path):
    """``monai.bundle run`` parses its options with Python Fire: ``False``, ``None``, lists and dicts must come back
    unchanged (JSON's ``false`` would arrive as the string ``'false'``)."""
    import fire

    overrides = {"pretrained": False, "pretrained_path": None, "canvas_hw": [32, 44], "lr_values": [0.01, 1e-3],
                 "demo_args": {"num_cases": 12, "fractions": {"training": 0.5}}, "backbone": "resnet18", "num_epochs": 3}
    train, _ = fold_commands(tmp_path / "b", tmp_path / "f" / "datalist.json", tmp_path / "f", overrides=overrides)
    options = train[train.index("--pretrained"):train.index("--output_dir")]
    parsed = fire.Fire(lambda **kwargs: kwargs, command=options)
    assert parsed == overrides and parsed["pretrained"] is False and parsed["pretrained_path"] is None
