"""k-fold cross-validation of a bundle: per-fold datalists, one train + evaluate run per fold, and the table.

Alshazly et al. 2021 (seed 004, sec. 5.3) evaluate every network by five-fold cross-validation and report the
mean and standard deviation over the folds of accuracy, precision, sensitivity (recall), specificity and F1
(Table 2), and the confusion matrix averaged over the folds (Figs. 9-10). This module does that for any
classification bundle whose ``evaluate.json`` writes ``metrics.json``
(:class:`medxai.engines.ClassificationReportHandler`):

1. :func:`write_fold_datalists` pools the records of a datalist and splits them with
   :func:`medxai.data.splits.patient_kfold` (stratified by label, grouped by patient where patient ids
   exist), writing ``fold_<k>/datalist.json`` with ``training`` = the other folds and ``validation`` =
   ``test`` = the held-out fold (relative paths made absolute). The held-out fold is never used to choose a
   model: the bundle keeps its final weights.
2. :func:`run_cross_validation` runs ``python -m monai.bundle run training`` and then ``run`` with
   ``evaluate.json`` for every fold as subprocesses, with ``--dataset_dir`` pointing at the fold's datalist.
3. :func:`aggregate_fold_metrics` reads the folds' ``metrics.json`` and writes ``cv_summary.json``,
   ``cv_table.csv``, ``cv_table.md`` (Table 2 shape, in percent) and ``cv_confusion.png`` (the averaged
   confusion matrix).

The standard deviation is the sample standard deviation over folds (``ddof=1``); the paper does not say
which it used. The command line is ``medxai cv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medxai.data.splits import patient_kfold
from medxai.errors import DatasetError, InputError

__all__ = [
    "TABLE2_METRICS",
    "write_fold_datalists",
    "aggregate_fold_metrics",
    "fold_commands",
    "fold_is_done",
    "run_cross_validation",
]

logger = logging.getLogger(__name__)

#: Seed 004 Table 2 columns, as keys of ``metrics.json``.
TABLE2_METRICS: tuple[str, ...] = ("accuracy", "precision", "sensitivity", "specificity", "f1")
_PATH_KEYS = ("image", "lesion_mask", "lung_mask", "label_image", "mask")


def _load_records(datalist: str | Path, splits: Sequence[str] | None) -> tuple[list[dict[str, Any]], Path]:
    path = Path(datalist)
    if not path.is_file():
        raise DatasetError(f"datalist {path} is not a file.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"datalist {path} is not valid JSON: {err}.") from err
    names = [k for k, v in content.items() if isinstance(v, list)] if splits is None else list(splits)
    records: list[dict[str, Any]] = []
    for name in names:
        if not isinstance(content.get(name), list):
            raise DatasetError(f"datalist {path} has no list '{name}'; it has {sorted(content)}.")
        records.extend(dict(r) for r in content[name])
    if not records:
        raise DatasetError(f"datalist {path} has no records in {names}.")
    base = path.parent
    for record in records:
        for key in _PATH_KEYS:
            value = record.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                record[key] = str((base / value).resolve())
    return records, path


def write_fold_datalists(
    datalist: str | Path,
    output_dir: str | Path,
    n_folds: int = 5,
    label_key: str = "label",
    patient_key: str = "patient_id",
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> list[Path]:
    """Split the records of ``datalist`` into ``n_folds`` stratified, patient-grouped folds.

    Parameters
    ----------
    datalist
        A MONAI datalist JSON (relative paths are resolved against its folder).
    output_dir
        Gets ``fold_<k>/datalist.json`` for ``k = 0 .. n_folds - 1``.
    splits
        The datalist lists to pool (default: every list in the file, e.g. training + validation + test).
    label_key, patient_key, seed
        As :func:`medxai.data.splits.patient_kfold` (records without a patient id are their own group).

    Returns
    -------
    list of Path
        The fold datalists; each holds ``training``, ``validation`` and ``test`` (= validation, the held-out
        fold) and a ``metadata`` block.
    """
    records, source = _load_records(datalist, splits)
    missing = [i for i, r in enumerate(records) if label_key not in r]
    if missing:
        raise DatasetError(f"datalist {source}: {len(missing)} record(s) have no '{label_key}' (first index {missing[0]}).")
    folds = patient_kfold(records, n_folds=n_folds, label_key=label_key, patient_key=patient_key, seed=seed)
    out = Path(output_dir)
    paths = []
    for k, fold in enumerate(folds):
        path = out / f"fold_{k}" / "datalist.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {
            "training": fold["training"],
            "validation": fold["validation"],
            "test": fold["validation"],
            "metadata": {
                "source": str(source),
                "fold": k,
                "n_folds": int(n_folds),
                "seed": int(seed),
                "label_key": label_key,
                "patient_key": patient_key,
                "note": "validation = test = the held-out fold; it is not used to select a model",
            },
        }
        path.write_text(json.dumps(content, indent=2) + "\n")
        paths.append(path)
    return paths


def _metric_value(report: Mapping[str, Any], name: str, where: Path) -> float:
    if name not in report:
        raise InputError(f"{where} has no metric '{name}'.")
    value = report[name]
    return float("nan") if value is None else float(value)


def aggregate_fold_metrics(
    metrics_files: Sequence[str | Path],
    output_dir: str | Path | None = None,
    metrics: Sequence[str] = TABLE2_METRICS,
    title: str = "",
    ddof: int = 1,
) -> dict[str, Any]:
    """Mean and standard deviation over folds of ``metrics`` and the averaged confusion matrix.

    Parameters
    ----------
    metrics_files
        One ``metrics.json`` per fold (:func:`medxai.metrics.classification.classification_report` output).
    output_dir
        If given, write ``cv_summary.json``, ``cv_table.csv``, ``cv_table.md`` and ``cv_confusion.png``.
    ddof
        Delta degrees of freedom of the standard deviation (1: sample standard deviation).

    Returns
    -------
    dict
        ``n_folds``, ``metrics`` (name -> ``mean``, ``std``, ``per_fold``; fractions, NaN where a fold's value
        is undefined, mean/std over the defined folds), ``confusion_matrix_mean`` (K x K, rows true),
        ``confusion_matrix_sum``, ``class_names``, ``ddof``.
    """
    files = [Path(f) for f in metrics_files]
    if len(files) < 1:
        raise InputError("aggregate_fold_metrics needs at least one metrics file.")
    reports = []
    for f in files:
        if not f.is_file():
            raise InputError(f"fold metrics file {f} does not exist (did the fold's evaluation run?).")
        reports.append(json.loads(f.read_text()))
    summary: dict[str, Any] = {"n_folds": len(files), "ddof": int(ddof), "files": [str(f) for f in files], "metrics": {}}
    for name in metrics:
        values = np.array([_metric_value(r, name, f) for r, f in zip(reports, files)], dtype=np.float64)
        defined = values[np.isfinite(values)]
        summary["metrics"][name] = {
            "mean": float(defined.mean()) if defined.size else None,
            "std": float(defined.std(ddof=ddof)) if defined.size > ddof else None,
            "per_fold": [None if not np.isfinite(v) else float(v) for v in values],
        }
    matrices = [np.asarray(r.get("confusion_matrix"), dtype=np.float64) for r in reports]
    if all(m.ndim == 2 and m.shape == matrices[0].shape for m in matrices):
        stack = np.stack(matrices)
        summary["confusion_matrix_mean"] = stack.mean(axis=0).tolist()
        summary["confusion_matrix_sum"] = stack.sum(axis=0).astype(int).tolist()
    summary["class_names"] = reports[0].get("class_names")
    if output_dir is not None:
        _write_summary(summary, Path(output_dir), title)
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _write_summary(summary: Mapping[str, Any], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = list(summary["metrics"])
    with (out / "cv_table.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "mean", "std", *[f"fold_{k}" for k in range(summary["n_folds"])]])
        for name in names:
            row = summary["metrics"][name]
            writer.writerow([name, row["mean"], row["std"], *row["per_fold"]])
    header = "| model | " + " | ".join(names) + " |"
    cells = [f"{_pct(summary['metrics'][n]['mean'])} +- {_pct(summary['metrics'][n]['std'])}" for n in names]
    lines = [header, "|" + "---|" * (len(names) + 1), "| " + (title or "model") + " | " + " | ".join(cells) + " |"]
    lines.append("")
    lines.append(f"Mean +- standard deviation (ddof={summary['ddof']}) over {summary['n_folds']} folds, in percent.")
    if "confusion_matrix_mean" in summary:
        lines.append("")
        lines.append("Confusion matrix averaged over folds (rows true, columns predicted): "
                     + json.dumps([[round(v, 2) for v in row] for row in summary["confusion_matrix_mean"]]))
        _plot_confusion(np.asarray(summary["confusion_matrix_mean"]), summary.get("class_names"), out / "cv_confusion.png", title)
    (out / "cv_table.md").write_text("\n".join(lines) + "\n")


def _plot_confusion(matrix: np.ndarray, class_names: Sequence[str] | None, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(class_names) if class_names else [str(i) for i in range(matrix.shape[0])]
    fig = Figure(figsize=(4.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} mean over folds".strip())
    fig.tight_layout()
    fig.savefig(path)


def _override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """``--key value`` arguments as ``python -m monai.bundle run`` (Python Fire) parses them back.

    Fire evaluates an argument as a Python literal, so non-strings are written with ``repr``: ``False`` and
    ``None`` come back as themselves, while JSON's ``false`` / ``null`` would arrive as strings.
    """
    args: list[str] = []
    for key, value in (overrides or {}).items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def fold_commands(
    bundle_root: str | Path,
    fold_datalist: str | Path,
    fold_dir: str | Path,
    train_configs: Sequence[str] = ("configs/train.json",),
    eval_configs: Sequence[str] = ("configs/evaluate.json",),
    overlays: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    python: str = sys.executable,
) -> tuple[list[str], list[str]]:
    """The training and evaluation commands of one fold (configs relative to ``bundle_root`` or absolute)."""
    root = Path(bundle_root).resolve()
    fold_dir = Path(fold_dir).resolve()

    def resolve(names: Sequence[str]) -> str:
        return str([str(Path(n) if Path(n).is_absolute() else root / n) for n in names])

    common = [
        "--bundle_root", str(root),
        "--dataset_dir", str(Path(fold_datalist).resolve()),
        "--ckpt_dir", str(fold_dir / "models"),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--logging_file", str(root / "configs" / "logging.conf"),
        *_override_args(overrides),
    ]  # fmt: skip
    train = [python, "-m", "monai.bundle", "run", "training", "--config_file",
             resolve([*train_configs, *overlays]), *common, "--output_dir", str(fold_dir / "train")]
    evaluate = [python, "-m", "monai.bundle", "run", "--config_file",
                resolve([*train_configs, *eval_configs, *overlays]), *common, "--output_dir", str(fold_dir / "eval")]
    return train, evaluate


_DONE_FILE = "fold_done.json"


def _fold_record(fold_datalist: Path, commands: Sequence[Sequence[str]]) -> dict[str, Any]:
    """What identifies a finished fold: its datalist's content and its commands (without the interpreter path)."""
    return {
        "datalist_sha256": hashlib.sha256(fold_datalist.read_bytes()).hexdigest(),
        "commands": [list(command[1:]) for command in commands],
    }


def fold_is_done(fold_dir: str | Path, commands: Sequence[Sequence[str]]) -> bool:
    """Whether ``fold_dir`` holds a finished run of exactly these commands on its current ``datalist.json``.

    A fold is finished when ``eval/metrics.json`` exists and ``fold_done.json`` (written after its evaluation
    succeeded) records the same fold datalist (SHA-256 of the file) and the same commands, compared without the
    Python interpreter's path. Any other override, overlay, seed or datalist makes the fold run again.
    """
    fold_dir = Path(fold_dir)
    done = fold_dir / _DONE_FILE
    if not (done.is_file() and (fold_dir / "eval" / "metrics.json").is_file()):
        return False
    try:
        recorded = json.loads(done.read_text())
    except json.JSONDecodeError:
        return False
    return recorded == _fold_record(fold_dir / "datalist.json", commands)


def run_cross_validation(
    bundle_root: str | Path,
    datalist: str | Path,
    output_dir: str | Path,
    n_folds: int = 5,
    train_configs: Sequence[str] = ("configs/train.json",),
    eval_configs: Sequence[str] = ("configs/evaluate.json",),
    overlays: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    label_key: str = "label",
    patient_key: str = "patient_id",
    seed: int = 0,
    title: str = "",
    python: str = sys.executable,
    resume: bool = False,
) -> dict[str, Any]:
    """Write fold datalists, train and evaluate the bundle on every fold, and aggregate (Table 2 shape).

    Each fold writes ``<output_dir>/fold_<k>/{datalist.json, models/, train/, eval/metrics.json, log.txt,
    fold_done.json}``; the summary files go to ``output_dir``. A fold whose subprocess fails raises
    :class:`RuntimeError` with the tail of its log; the folds finished before it keep their results. With
    ``resume``, a fold that :func:`fold_is_done` with the same datalist and commands is not run again, so an
    interrupted cross-validation continues where it stopped.
    """
    out = Path(output_dir)
    fold_lists = write_fold_datalists(datalist, out, n_folds, label_key, patient_key, seed)
    metrics_files = []
    for k, fold_list in enumerate(fold_lists):
        fold_dir = fold_list.parent
        commands = fold_commands(
            bundle_root, fold_list, fold_dir, train_configs, eval_configs, overlays, overrides, python
        )
        metrics_files.append(fold_dir / "eval" / "metrics.json")
        if resume and fold_is_done(fold_dir, commands):
            logger.info("fold %d/%d: finished earlier with the same datalist and commands, not run again", k + 1, len(fold_lists))
            continue
        (fold_dir / _DONE_FILE).unlink(missing_ok=True)
        for step, command in zip(("train", "evaluate"), commands):
            logger.info("fold %d/%d %s: %s", k + 1, len(fold_lists), step, " ".join(command))
            result = subprocess.run(command, capture_output=True, text=True)
            log = result.stdout + result.stderr
            with (fold_dir / "log.txt").open("a") as handle:
                handle.write(f"$ {' '.join(command)}\n{log}\n")
            if result.returncode != 0:
                raise RuntimeError(f"fold {k} {step} failed (exit {result.returncode}); log tail:\n{log[-3000:]}")
        (fold_dir / _DONE_FILE).write_text(json.dumps(_fold_record(fold_list, commands), indent=2) + "\n")
    return aggregate_fold_metrics(metrics_files, out, title=title)
