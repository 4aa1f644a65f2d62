"""The five-fold table of docs/experiments/transfer/ (written by transfer_cv_measure.sh), seed 004 Table 2 shape.

Usage: python scripts/experiments/transfer_cv_summary.py docs/experiments/transfer
Prints markdown: one row per run (mean +- sample standard deviation over the folds, in percent, of accuracy,
precision, sensitivity, specificity, F1 and the COVID-19 AUC), then the paired per-fold accuracy and AUC
differences of canvas vs stretch, LAMB vs Adam and LAMB with vs without weight decay (the same folds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc")


def fold_values(run: Path, name: str) -> np.ndarray:
    """One value per fold, from ``fold_<k>_metrics.json`` (NaN where undefined)."""
    files = sorted(run.glob("fold_*_metrics.json"))
    values = [json.loads(f.read_text()).get(name) for f in files]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _mean_std(values: np.ndarray) -> str:
    defined = values[np.isfinite(values)]
    if defined.size == 0:
        return "n/a"
    std = f" +- {100 * defined.std(ddof=1):.1f}" if defined.size > 1 else ""
    return f"{100 * defined.mean():.1f}{std}"


def main(results: Path) -> None:
    runs = sorted(p.parent for p in results.glob("*/cv_summary.json"))
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for run in runs:
        print(f"| {run.name} | " + " | ".join(_mean_std(fold_values(run, c)) for c in COLUMNS) + " |")
    pairs = [("resnet18_canvas", "resnet18_stretch"), ("resnet18_canvas", "resnet18_adam"),
             ("resnet18_canvas", "resnet18_lamb_wd0"), ("resnet18_lamb_wd0", "resnet18_adam")]
    print()
    for first, second in pairs:
        if not ((results / first).is_dir() and (results / second).is_dir()):
            continue
        for name in ("accuracy", "auc"):
            diff = fold_values(results / first, name) - fold_values(results / second, name)
            print(f"{first} - {second}, {name} per fold: " + ", ".join(f"{100 * d:+.1f}" for d in diff)
                  + f"; mean {100 * np.nanmean(diff):+.1f}, folds where {first} is higher: {int((diff > 0).sum())} of {diff.size}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/experiments/transfer"))
