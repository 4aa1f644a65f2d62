#!/usr/bin/env python
"""Run every benchmark of issue 11 in one process and collect their results and goals.

Benchmarks (each also runs on its own, see its docstring):

- ``training``: :mod:`training_throughput`, each bundle's training pipeline against a bare PyTorch loop;
- ``ct_inference``: :mod:`ct_inference`, CT MIL volume inference through the bundle against the bare backbone;
- ``scaling``: :mod:`scaling`, CT MIL inference time and peak memory against volume length and image size;
- ``explain``: :mod:`benchmark_explain`, explanation cost against the bare model (issue 3).

Usage::

    python scripts/benchmarks/run_all.py --quick                                 # CI: tiny sizes, one round
    OMP_NUM_THREADS=1 python scripts/benchmarks/run_all.py --threads 1 --json results.json
    python scripts/benchmarks/run_all.py --device cuda --amp --channels-last --json gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402
import benchmark_explain  # noqa: E402
import ct_inference  # noqa: E402
import scaling  # noqa: E402
import training_throughput  # noqa: E402

BENCHMARKS = ("training", "ct_inference", "scaling", "explain")


def benchmark_argv(name: str, args: argparse.Namespace) -> list[str]:
    """The command line each benchmark gets from the common options."""
    argv = ["--device", args.device, "--threads", str(args.threads), "--clock", args.clock, "--seed", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    if args.verbose:
        argv.append("--verbose")
    if args.repeats is not None and name != "explain":
        argv += ["--repeats", str(args.repeats)]
    if args.amp and name in ("training", "ct_inference", "scaling"):
        argv.append("--amp")
    if args.channels_last and name in ("training", "scaling"):
        argv.append("--channels-last")
    if args.channels_last and name == "explain":
        argv += ["--memory-format", "channels_last"]
    return argv


def goals_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of the run: benchmark, what, ratio, bound, met."""
    rows = []
    for name, bundle in results.get("training", {}).get("bundles", {}).items():
        rows.append({"benchmark": "training", "case": name, **bundle["goal"]})
        if bundle["best_variant"] != next(iter(bundle["ratios"])):
            rows.append(
                {"benchmark": "training", "case": f"{name} ({bundle['best_variant']})", **bundle["goal_best_variant"]}
            )
    for label, row in results.get("ct_inference", {}).get("rows", {}).items():
        rows.append({"benchmark": "ct_inference", "case": label, **row["goal"]})
    if "scaling" in results:
        linear = results["scaling"]["linear_in_slices"]
        rows.append({"benchmark": "scaling", "case": "time linear in slices", "value": linear, "met": linear})
    explain = results.get("explain", {})
    for name, g in explain.get("goals", {}).items():
        rows.append({"benchmark": "explain", "case": name, "value": explain["ratios"][name], "op": g["op"],
                     "bound": g["value"], "met": g["met"]})
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode of every benchmark: tiny sizes, one round")
    parser.add_argument("--json", type=Path, default=None, help="save all results to this JSON file")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--device", default=bench_utils.default_device())
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default: each benchmark's own)")
    parser.add_argument("--amp", action="store_true", help="also/with AMP where the benchmark supports it (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights where supported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    modules = {
        "training": training_throughput,
        "ct_inference": ct_inference,
        "scaling": scaling,
        "explain": benchmark_explain,
    }
    command = ["scripts/benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)]
    results: dict[str, Any] = {"command": " ".join(command)}
    for name in args.only:
        print(f"== {name}", flush=True)
        stderr = io.StringIO()
        redirect = contextlib.redirect_stderr(stderr) if not args.verbose else contextlib.nullcontext()
        with redirect:  # progress bars and MONAI's config warnings
            results[name] = modules[name].main(benchmark_argv(name, args))
    results["goals"] = goals_summary(results)
    print("== goals")
    for row in results["goals"]:
        bound = f"{row.get('op', '')} {row.get('bound', '')}".strip()
        value = str(row["value"]) if isinstance(row["value"], bool) else f"{row['value']:.3f}"
        print(f"{row['benchmark']:13s} {row['case']:58s} {value:>8s} {bound:>8s} {'met' if row['met'] else 'NOT met'}")
    bench_utils.write_json(results, args.json)
    return results


if __name__ == "__main__":
    main()
