"""The ``medxai`` console command (built with fire, like ``python -m monai.bundle``).

Examples::

    medxai demo                            # CT MIL demo: train on CPU, evaluate, explain (monai.bundle)
    medxai demo --steps training --dry_run # print the monai.bundle commands only
    medxai demo-data                       # generate every synthetic demo set and print a summary
    medxai demo-data --sets ct --output_dir /tmp/demo
    medxai datasets                        # the public datasets a datalist can be built for
    medxai datalist covid_ct_ucsd /data/COVID-CT --split kfold --n_folds 5
    medxai report --output_dir bundles/covid19_ct_mil_classification/eval/explain \
        --eval_dir bundles/covid19_ct_mil_classification/eval
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire

from medxai.data.demo import DEMO_SETS, ensure_demo_dataset, summarize_datalist
from medxai.errors import InputError

__all__ = ["demo", "demo_data", "datalist", "datasets", "report", "bundle_command", "headline", "main"]

#: demo step -> (``monai.bundle run`` id, config files merged in order; ``demo.json`` comes last)
DEMO_STEPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "training": ("training", ("train.json", "demo.json")),
    "evaluate": ("run", ("train.json", "evaluate.json", "demo.json")),
    "inference": ("run", ("inference.json", "demo.json")),
    "explain": ("run", ("inference.json", "explain.json", "demo.json")),
}
_REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _as_list(value: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def bundle_command(bundle_root: str | Path, step: str) -> list[str]:
    """The ``python -m monai.bundle run`` command line of one demo step of the bundle at ``bundle_root``.

    ``step`` is a key of :data:`DEMO_STEPS`; the configs are merged in the listed order with ``demo.json``
    last, and ``--bundle_root`` makes the command independent of the working directory.
    """
    if step not in DEMO_STEPS:
        raise InputError(f"unknown demo step '{step}'; expected one of {', '.join(DEMO_STEPS)}.")
    root = Path(bundle_root).resolve()
    run_id, configs = DEMO_STEPS[step]
    files = ",".join(f"'{root / 'configs' / name}'" for name in configs)
    return [
        sys.executable, "-m", "monai.bundle", "run", *([run_id] if run_id != "run" else []),
        "--config_file", f"[{files}]",
        "--bundle_root", str(root),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--logging_file", str(root / "configs" / "logging.conf"),
    ]  # fmt: skip


def _display(command: Sequence[str]) -> str:
    """A shell-pasteable form of ``command`` (the config list in double quotes, as in the bundle docs)."""
    return " ".join(f'"{part}"' if part.startswith("[") else shlex.quote(part) for part in command)


def demo(
    bundle: str = "covid19_ct_mil_classification",
    steps: str | Sequence[str] = "training,evaluate,explain",
    bundles_dir: str | None = None,
    dry_run: bool = False,
) -> None:
    """Run a bundle's CPU demo with ``python -m monai.bundle``: train, evaluate and explain.

    Each step is the bundle's own config with ``configs/demo.json`` merged last (see :func:`bundle_command`);
    the commands are printed before they run, so they can be copied. Outputs go where the bundle puts them:
    ``models/model.pt`` and ``eval/`` (metrics, ROC/PR/confusion plots, ``eval/explain`` with the per-case
    maps, boxes, sentences, LIME/SHAP and embeddings) inside the bundle folder. The demo data are generated
    on first use (cached, ``$MEDXAI_CACHE``).

    Parameters
    ----------
    bundle
        Bundle folder name under ``bundles_dir``.
    steps
        Comma-separated among ``training,evaluate,inference,explain``.
    bundles_dir
        Folder holding the bundles (default: ``bundles/`` of this repository checkout).
    dry_run
        Print the commands without running them.
    """
    root = Path(bundles_dir) if bundles_dir is not None else _REPO_BUNDLES
    bundle_root = root / bundle
    if not (bundle_root / "configs" / "demo.json").is_file():
        raise InputError(f"no bundle with a configs/demo.json at '{bundle_root}'; pass --bundles_dir.")
    for step in _as_list(steps, list(DEMO_STEPS)):
        command = bundle_command(bundle_root, step)
        print(f"== {step}: {_display(command)}", flush=True)
        if dry_run:
            continue
        start = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(f"== {step} took {time.perf_counter() - start:.0f} s", flush=True)
    metrics = bundle_root / "eval" / "metrics.json"
    if not dry_run and metrics.is_file():
        print(headline(json.loads(metrics.read_text())) + f" ({metrics})")


#: metrics.json keys printed after a demo, in this order (classification and segmentation bundles)
HEADLINE_KEYS = ("accuracy", "auc", "sensitivity", "specificity", "mean_dice", "mean_iou")


def headline(report: dict[str, Any]) -> str:
    """One line of a bundle's ``metrics.json``: case count, the :data:`HEADLINE_KEYS` it holds and, for more than
    two classes, the macro-averaged F1."""
    values = {key: report[key] for key in HEADLINE_KEYS if isinstance(report.get(key), (int, float))}
    macro_f1 = (report.get("macro") or {}).get("f1")
    if len(report.get("class_names") or ()) > 2 and isinstance(macro_f1, (int, float)):
        values["macro_f1"] = macro_f1  # multi-class: auc, sensitivity, ... are the positive class's
    figures = ", ".join(f"{key} {float(value):.3f}" for key, value in values.items())
    cases = report.get("n_cases", report.get("n_images", "?"))
    return f"held-out {cases} cases: {figures}"


def demo_data(sets: str | Sequence[str] | None = None, output_dir: str | None = None, **overrides: Any) -> None:
    """Generate the synthetic demo datasets (cached) and print what was written.

    Parameters
    ----------
    sets
        Comma-separated names among ``ct,cxr,brain,ct_slices`` (default: all).
    output_dir
        Cache folder to write into (default ``$MEDXAI_CACHE`` or ``~/.cache/medxai``).
    overrides
        Generator arguments applied to every set named, e.g. ``--seed 1``.
    """
    for name in _as_list(sets, list(DEMO_SETS)):
        start = time.perf_counter()
        path = ensure_demo_dataset(name, cache_dir=output_dir, **overrides)
        summary = summarize_datalist(path)
        print(f"[{name}] {path}  ({summary['size_mb']} MB, {time.perf_counter() - start:.1f} s)")
        for split, info in summary["splits"].items():
            classes = ", ".join(f"{k}: {v}" for k, v in info["by_class"].items())
            print(f"    {split:<10} {info['cases']:>4} cases   {classes}")


def datalist(name: str, root: str, output: str | None = None, **kwargs: Any) -> None:
    """Build a datalist JSON for a public dataset and print its split summary.

    Parameters
    ----------
    name
        A dataset name (``medxai datalist --help`` lists them; layouts in docs/data.md).
    root
        The dataset folder.
    output
        Where to write the JSON (default ``<root>/datalist.json``, where a bundle's ``dataset_dir``
        finds it; paths inside are relative to ``root``).
    kwargs
        Passed to :func:`medxai.data.datasets.build_datalist`, e.g. ``--split kfold --n_folds 5``.
    """
    from medxai.data.datasets import build_datalist

    output = str(Path(root) / "datalist.json") if output is None else output
    content = build_datalist(name, root, output=output, **kwargs)
    print(f"wrote {output}")
    print(json.dumps(summarize_datalist(content)["splits"], indent=2))


def datasets() -> None:
    """List the public datasets ``medxai datalist`` can build."""
    from medxai.data.datasets import get_dataset_spec, list_datasets

    for name in list_datasets():
        spec = get_dataset_spec(name)
        print(f"{name:<34} {spec.task}")


def cv(
    bundle_root: str,
    datalist: str,
    output_dir: str,
    n_folds: int = 5,
    train_configs: str | Sequence[str] | None = None,
    eval_configs: str | Sequence[str] | None = None,
    overlays: str | Sequence[str] | None = None,
    seed: int = 0,
    title: str = "",
    resume: bool = False,
    **overrides: Any,
) -> None:
    """k-fold cross-validation of a classification bundle (seed 004 sec. 5.3, Table 2, Figs. 9-10).

    Writes patient-grouped, stratified fold datalists, runs ``monai.bundle`` training and evaluation per fold,
    and writes ``cv_summary.json``, ``cv_table.csv``, ``cv_table.md`` and ``cv_confusion.png`` into
    ``output_dir`` (:func:`medxai.crossval.run_cross_validation`). Other ``--key value`` options are passed to
    every ``monai.bundle`` run as config overrides (e.g. ``--num_epochs 5``). ``--resume`` skips the folds that
    finished earlier in ``output_dir`` with the same datalist and options.
    """
    from medxai.crossval import run_cross_validation

    summary = run_cross_validation(
        bundle_root, datalist, output_dir, n_folds=int(n_folds),
        train_configs=_as_list(train_configs, ["configs/train.json"]),
        eval_configs=_as_list(eval_configs, ["configs/evaluate.json"]),
        overlays=_as_list(overlays, []), overrides=overrides, seed=int(seed), title=title,
        resume=bool(resume),
    )  # fmt: skip
    print((Path(output_dir) / "cv_table.md").read_text())
    print(json.dumps({k: v["mean"] for k, v in summary["metrics"].items()}))


def report(
    output_dir: str,
    eval_dir: str | None = None,
    report_dir: str | None = None,
    title: str = "Explanation report",
) -> None:
    """Write a self-contained HTML report of a bundle run: ``index.html`` (cohort) and one page per case.

    Built from the files the run wrote (:func:`medxai.reports.write_report`): per case the PNG overlays of
    every explainer (embedded), the probabilities, the boxes and the sentence; for the cohort the metrics and
    curves of ``eval_dir`` and a table of the cases linking to their pages.

    Parameters
    ----------
    output_dir
        The explain (or inference) output folder, e.g. ``<bundle>/eval/explain``.
    eval_dir
        The evaluation output folder (``metrics.json``, ROC/PR/confusion or Dice plots), e.g. ``<bundle>/eval``.
    report_dir
        Where the pages go (default ``<output_dir>/report``).
    title
        Page title.
    """
    from medxai.reports import write_report

    index = write_report(output_dir, eval_dir=eval_dir, report_dir=report_dir, title=str(title))
    print(f"wrote {index} and {len(list(index.parent.glob('*.html'))) - 1} case pages")


def main() -> None:
    """Entry point of the ``medxai`` console script."""
    fire.Fire({"demo": demo, "demo-data": demo_data, "datalist": datalist, "datasets": datasets, "cv": cv,
               "report": report})


if __name__ == "__main__":
    main()
