"""End to end: ``medxai.crossval.run_cross_validation`` (``medxai cv``) trains and evaluates the
covid19_ct_transfer_classification bundle on every fold (seed 004 sec. 5.3, Table 2), tests every slice exactly
once, aggregates the folds' own metrics, and on ``resume`` runs only the folds that did not finish with the same
datalist and options.

Two folds of 12 synthetic slices with the bundle test's tiny overlay (the CPU test trunk, a 32 x 44 canvas, two
epochs): four ``python -m monai.bundle`` subprocesses.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bundle_runner import REPO
from test_covid19_ct_transfer_bundle import TINY as BUNDLE_TEST_TINY

import medxai.crossval
from medxai.crossval import run_cross_validation
from medxai.data.synthetic.ct_slices import generate_ct_slice_dataset

BUNDLE = REPO / "bundles" / "covid19_ct_transfer_classification"

# the bundle test's tiny overlay without its data generator (the folds come from the datalist)
TINY = {k: v for k, v in BUNDLE_TEST_TINY.items() if k != "demo_args"}


class _WouldRun(Exception):
    """Raised instead of starting a subprocess, with the command it was given."""


@pytest.fixture(scope="module")
def finished_cv(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("transfer_cv")
    datalist = generate_ct_slice_dataset(root / "data", num_cases=12, shape=(64, 48, 8), slices_per_case=1)
    out = root / "cv"
    summary = run_cross_validation(BUNDLE, datalist, out, n_folds=2, overrides=TINY, title="tiny")
    return datalist, out, summary


def _predicted_cases(fold_dir: Path) -> list[str]:
    with (fold_dir / "eval" / "predictions.csv").open() as handle:
        return [row["case"] for row in csv.DictReader(handle)]


def test_every_slice_is_tested_once_and_the_table_aggregates_the_folds(finished_cv):
    datalist, out, summary = finished_cv
    records = [r for split in json.loads(datalist.read_text()).values() if isinstance(split, list) for r in split]
    all_cases = sorted(Path(r["image"]).name.removesuffix(".png") for r in records)
    tested = _predicted_cases(out / "fold_0") + _predicted_cases(out / "fold_1")
    assert sorted(tested) == all_cases  # the held-out folds partition the data

    folds = [json.loads((out / f"fold_{k}" / "eval" / "metrics.json").read_text()) for k in range(2)]
    for name in medxai.crossval.TABLE2_METRICS:
        values = [fold[name] for fold in folds]
        assert summary["metrics"][name]["per_fold"] == values  # None where a fold's value is undefined
        if None not in values:  # e.g. precision is undefined for a fold with no COVID-19 prediction
            assert summary["metrics"][name]["mean"] == pytest.approx((values[0] + values[1]) / 2)
            assert summary["metrics"][name]["std"] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2))
    assert None not in [summary["metrics"][name]["mean"] for name in ("accuracy", "sensitivity", "specificity")]
    matrices = np.array([fold["confusion_matrix"] for fold in folds], dtype=float)
    assert np.array(summary["confusion_matrix_mean"]) == pytest.approx(matrices.mean(axis=0))
    assert matrices.sum() == len(all_cases)
    assert "tiny" in (out / "cv_table.md").read_text()


def test_resume_skips_finished_folds_and_reruns_the_unfinished_or_changed_ones(finished_cv, monkeypatch):
    datalist, out, summary = finished_cv
    started: list[list[str]] = []

    def no_subprocess(command, **kwargs):
        started.append(command)
        raise _WouldRun(command)

    monkeypatch.setattr(medxai.crossval.subprocess, "run", no_subprocess)
    # both folds finished with these options: nothing runs, the same table comes back
    again = run_cross_validation(BUNDLE, datalist, out, n_folds=2, overrides=TINY, title="tiny", resume=True)
    assert started == []
    assert again["metrics"]["accuracy"]["per_fold"] == summary["metrics"]["accuracy"]["per_fold"]

    # fold 1 interrupted (no record of its end): fold 0 is kept, fold 1 starts again from training
    (out / "fold_1" / "fold_done.json").unlink()
    with pytest.raises(_WouldRun):
        run_cross_validation(BUNDLE, datalist, out, n_folds=2, overrides=TINY, resume=True)
    assert len(started) == 1 and started[0][4] == "training"
    assert started[0][started[0].index("--dataset_dir") + 1] == str((out / "fold_1" / "datalist.json").resolve())

    # another option (and a fold started with it is no longer the old result): fold 0 runs again
    started.clear()
    with pytest.raises(_WouldRun):
        run_cross_validation(BUNDLE, datalist, out, n_folds=2, overrides={**TINY, "num_epochs": 3}, resume=True)
    assert started[0][started[0].index("--dataset_dir") + 1] == str((out / "fold_0" / "datalist.json").resolve())
    assert started[0][started[0].index("--num_epochs") + 1] == "3"
