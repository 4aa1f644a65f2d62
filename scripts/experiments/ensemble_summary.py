"""Tables of docs/experiments/ensemble/<part>/ (written by ensemble_measure.sh) in the shape of seed 002 Tables I-III.

Usage: python scripts/experiments/ensemble_summary.py docs/experiments/ensemble/synthetic
Prints markdown: one row per single network, snapshot ensemble and network ensemble (accuracy, macro precision /
recall / F1, per-class PPV, COVID-19 recall), then the explanation localisation table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_table(results: Path) -> list[str]:
    lines = [
        "| model | accuracy | macro precision | macro recall | macro F1 | PPV normal / pneumonia / COVID-19 | COVID-19 recall |",
        "|---|---|---|---|---|---|---|",
    ]
    found = sorted(results.glob("*/metrics.json"), key=lambda p: (p.parent.name.count("+"), p.parent.name))
    if (results / "metrics.json").is_file():  # the demo: the selected snapshot, models/model.pt
        found.insert(0, results / "metrics.json")
    for metrics in found:
        report = json.loads(metrics.read_text())
        name = "model.pt" if metrics.parent == results else metrics.parent.name
        macro, per_class = report["macro"], report["per_class"]
        ppv = " / ".join(_fmt(per_class[c]["precision"]) for c in report["class_names"])
        lines.append(
            f"| {name} | {_fmt(report['accuracy'])} | {_fmt(macro['precision'])} | "
            f"{_fmt(macro['sensitivity'])} | {_fmt(macro['f1'])} | {ppv} | {_fmt(per_class['covid19']['sensitivity'])} |"
        )
    return lines


def explanation_table(results: Path) -> list[str]:
    path = results / "explanation_comparison.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    explained = results / "explained_network.json"
    network = json.loads(explained.read_text())["explained_network"] if explained.is_file() else "models/model.pt"
    lines = [
        f"explained network: {network}; {result['n_cases']} COVID-19 test images",
        "",
        "| map | pointing game | energy in lesion | chance (lesion share of the image) | energy lift [95 % CI] | AOPPC [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for method, entry in result["methods"].items():
        lift, aoppc = entry["energy_lift"], entry["aoppc"]
        lines.append(
            f"| {method} | {_fmt(entry['pointing_game']['mean'])} | {_fmt(entry['energy_in_lesion']['mean'])} | "
            f"{_fmt(entry['uniform_map_energy_in_lesion']['mean'])} | "
            f"{lift['mean']:+.3f} [{lift['ci95'][0]:+.3f}, {lift['ci95'][1]:+.3f}] | "
            f"{aoppc['mean']:.3f} [{aoppc['ci95'][0]:.3f}, {aoppc['ci95'][1]:.3f}] |"
        )
    return lines


def main(results: str) -> None:
    folder = Path(results)
    print("\n".join(metrics_table(folder) + [""] + explanation_table(folder)))


if __name__ == "__main__":
    main(sys.argv[1])
