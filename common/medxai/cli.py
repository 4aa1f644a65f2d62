"""The ``medxai`` console command (built with fire, like ``python -m monai.bundle``).

Examples::

    medxai demo-data                       # generate every synthetic demo set and print a summary
    medxai demo-data --sets ct --output_dir /tmp/demo
    medxai datasets                        # the public datasets a datalist can be built for
    medxai datalist covid_ct_ucsd /data/COVID-CT --split kfold --n_folds 5
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire

from medxai.data.demo import DEMO_SETS, ensure_demo_dataset, summarize_datalist

__all__ = ["demo_data", "datalist", "datasets", "main"]


def _as_list(value: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def demo_data(sets: str | Sequence[str] | None = None, output_dir: str | None = None, **overrides: Any) -> None:
    """Generate the synthetic demo datasets (cached) and print what was written.

    Parameters
    ----------
    sets
        Comma-separated names among ``ct,cxr,brain`` (default: all).
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


def main() -> None:
    """Entry point of the ``medxai`` console script."""
    fire.Fire({"demo-data": demo_data, "datalist": datalist, "datasets": datasets})


if __name__ == "__main__":
    main()
