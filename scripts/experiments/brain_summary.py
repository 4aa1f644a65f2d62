"""Table 4 and Table 5 shapes of docs/experiments/brain/ (written by brain_measure.sh), seed 003 sec. 4.2.

Usage: python scripts/experiments/brain_summary.py docs/experiments/brain
Prints markdown per data set ("synthetic", "real"): Table 4 (method vs U-Net vs U-Net++: slice Dice on thick,
thin and mixed test slices, with the number of slices) and Table 5 (L_S only, L_T only, both, and the KL form of
L_T), plus each run's training time and the fit R^2 of its latent-space landscape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TABLE4 = (("unet", "U-Net (MONAI BasicUNet)"), ("unetplusplus", "U-Net++ (MONAI BasicUNetPlusPlus)"),
          ("ours", "Ours (sub-pixel U-Net, L_S + beta L_T)"))  # fmt: skip
TABLE5 = (("ls_only", "1", "yes", ""), ("lt_only", "2", "", "yes"), ("ours", "3", "yes", "yes"),
          ("kl", "3 (KL)", "yes", "KL"))  # fmt: skip


def _load(run: Path) -> tuple[dict, dict, dict] | None:
    if not (run / "metrics.json").is_file():
        return None
    metrics = json.loads((run / "metrics.json").read_text())
    table = json.loads((run / "dice_table.json").read_text())["table"]
    info = json.loads((run / "run.json").read_text())
    return metrics, table, info


def _cells(table: dict) -> str:
    def cell(group: str) -> str:
        entry = table.get(group) or {}
        return "n/a" if entry.get("mean") is None else f"{entry['mean']:.4f} ({entry['n_slices']})"

    return " | ".join(cell(g) for g in ("thick", "thin", "mixed"))


def main(results: Path) -> None:
    for data in sorted(p for p in results.iterdir() if p.is_dir()):
        runs = {p.name: _load(p) for p in data.iterdir() if p.is_dir()}
        print(f"\n### {data.name}: Table 4 shape (slice Dice, number of slices)\n")
        print("| method | thick | thin | mixed | training | landscape R^2 |")
        print("|---|---|---|---|---|---|")
        for name, title in TABLE4:
            if runs.get(name):
                metrics, table, info = runs[name]
                print(f"| {title} | {_cells(table)} | {info['train_s']} s | {metrics.get('latent_fit_r2', 0):.2f} |")
        print(f"\n### {data.name}: Table 5 shape (loss ablation of the sub-pixel U-Net)\n")
        print("| exp. | L_S | L_T | thick | thin | mixed |")
        print("|---|---|---|---|---|---|")
        for name, exp, ls, lt in TABLE5:
            if runs.get(name):
                print(f"| {exp} | {ls} | {lt} | {_cells(runs[name][1])} |")
        first = next((r for r in runs.values() if r), None)
        if first:
            info = first[2]
            print(f"\n{info['iterations']} iterations each; {info['machine']}; {info['date'][:10]}; commit {info['commit']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/experiments/brain"))
