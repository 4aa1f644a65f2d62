#!/usr/bin/env python
"""Time and peak memory of CT MIL inference against volume length and image size (issue 11).

:class:`medxai.networks.ct_mil.CTMILNet` (the bundle's network: backbone, EDM, SIM, NCM) in eval mode under
``torch.no_grad`` on one volume (1, 1, S, S, D) for D in ``--slices`` (at S = ``--base-size``) and S in
``--sizes`` (at D = ``--base-slices``), with the slices processed in chunks of ``--chunk`` (the bundle's
``slice_chunk_size``) and, for comparison, all at once (``--unchunked-slices``). Peak memory is what the
forward pass adds on top of the memory in use before it: on a CPU the resident set's high-water mark
(Linux ``VmHWM``, reset before each run through ``/proc/self/clear_refs``; ``tracemalloc`` does not see
torch's allocator), on a GPU ``torch.cuda.max_memory_allocated``. Times are medians over ``--repeats``
interleaved rounds. The growth check fits time = a + b D by least squares: linear when the fit explains
the times (R^2) and the time per slice at the longest volume is within ``--linear-tolerance`` of the
fitted slope; chunked memory should stay flat in D apart from the input and the per-slice outputs.

Usage::

    python scripts/benchmarks/scaling.py                   # full: ResNet-50, D 32..512, S 128..512
    python scripts/benchmarks/scaling.py --quick           # CI: tiny backbone, small sizes, one round
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402  (the shared helpers of scripts/benchmarks/)

from medxai.networks.ct_mil import CTMILNet  # noqa: E402


def build_network(backbone: str, chunk: int, device: torch.device, channels_last: bool) -> CTMILNet:
    """The bundle's CT MIL network (default hyper-parameters of ``configs/inference.json``), eval mode."""
    net = CTMILNet(backbone=backbone, num_classes=2, in_channels=1, section_length=16, k=8, slice_chunk_size=chunk)
    net = net.to(device).eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def measure_point(net: CTMILNet, size: int, slices: int, device: torch.device, amp: bool) -> dict[str, Any]:
    """One forward pass on a (1, 1, size, size, slices) volume: wall/CPU seconds and peak extra memory."""
    x = torch.rand(1, 1, size, size, slices, generator=torch.Generator().manual_seed(slices + size)).to(device)
    gc.collect()
    bench_utils.synchronize(device)
    before = bench_utils.current_memory_bytes(device)
    bench_utils.reset_peak_memory(device)
    outputs: dict[str, torch.Tensor] = {}

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            outputs.update(net.forward_details(x))

    wall, cpu = bench_utils.timed(forward, device)
    peak = bench_utils.peak_memory_bytes(device)
    extra = None if peak is None or before is None else max(peak - before, 0)
    assert outputs["slice_scores"].shape == (1, slices, 2)
    return {"wall": wall, "cpu": cpu, "peak_extra_bytes": extra, "input_bytes": x.numel() * x.element_size()}


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares y = a + b x with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": a, "slope": b, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = bench_utils.setup_torch(args.device, args.threads, args.seed)
    results = bench_utils.run_header(device, args.argv, "scripts/benchmarks/scaling.py")
    clock = bench_utils.choose_clock(args.clock, device)
    chunked = build_network(args.backbone, args.chunk, device, args.channels_last)
    unchunked = build_network(args.backbone, 0, device, args.channels_last)
    unchunked.load_state_dict(chunked.state_dict())
    points: list[tuple[str, CTMILNet, int, int]] = []
    for d in args.slices:
        points.append((f"chunked_D{d}_S{args.base_size}", chunked, args.base_size, d))
    for s in args.sizes:
        if s != args.base_size or args.base_slices not in args.slices:
            points.append((f"chunked_D{args.base_slices}_S{s}", chunked, s, args.base_slices))
    for d in args.unchunked_slices:
        points.append((f"unchunked_D{d}_S{args.base_size}", unchunked, args.base_size, d))
    measure_point(chunked, args.base_size, min(args.slices), device, args.amp)  # warm-up
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in points}
    for round_index in range(args.repeats):
        for name, net, size, slices in points:
            raw[name].append(measure_point(net, size, slices, device, args.amp))
            bench_utils.log(args.verbose, f"round {round_index}: {name} {raw[name][-1]}")
    rows = {}
    for name, net, size, slices in points:
        runs = raw[name]
        peaks = [r["peak_extra_bytes"] for r in runs if r["peak_extra_bytes"] is not None]
        rows[name] = {
            "chunk": net.slice_chunk_size,
            "size": size,
            "slices": slices,
            "median_wall": statistics.median(r["wall"] for r in runs),
            "median_cpu": statistics.median(r["cpu"] for r in runs),
            "wall": [r["wall"] for r in runs],
            "cpu": [r["cpu"] for r in runs],
            "peak_extra_mib": max(peaks) / 2**20 if peaks else None,
            "input_mib": runs[0]["input_bytes"] / 2**20,
        }
        rows[name]["ms_per_slice"] = 1000 * rows[name][f"median_{clock}"] / slices
    series = [rows[f"chunked_D{d}_S{args.base_size}"] for d in args.slices]
    fit = linear_fit([r["slices"] for r in series], [r[f"median_{clock}"] for r in series])
    longest = series[-1]
    per_slice_longest = longest[f"median_{clock}"] / longest["slices"]
    deviation = abs(per_slice_longest - fit["slope"]) / fit["slope"] if fit["slope"] > 0 else float("inf")
    memory = [r["peak_extra_mib"] for r in series if r["peak_extra_mib"] is not None]
    memory_fit = linear_fit([r["slices"] for r in series], [r["peak_extra_mib"] for r in series]) if memory else None
    unchunked_series = [rows[f"unchunked_D{d}_S{args.base_size}"] for d in args.unchunked_slices]
    unchunked_fit = (
        linear_fit([r["slices"] for r in unchunked_series], [r["peak_extra_mib"] for r in unchunked_series])
        if len(unchunked_series) >= 2 and all(r["peak_extra_mib"] is not None for r in unchunked_series)
        else None
    )
    size_rows = [rows[f"chunked_D{args.base_slices}_S{s}"] for s in args.sizes]
    flops = {}
    with torch.no_grad():
        for size in args.sizes:
            x = torch.rand(1, 1, size, size, 1, device=device)
            flops[str(size)] = bench_utils.model_flops(lambda: chunked.forward_details(x))
    peak = bench_utils.matmul_peak_flops(device, clock=clock)
    results["load_average"]["after"] = bench_utils.load_average()
    results.update(
        {
            "clock": clock,
            "settings": {
                "backbone": args.backbone,
                "chunk": args.chunk,
                "slices": list(args.slices),
                "sizes": list(args.sizes),
                "base_size": args.base_size,
                "base_slices": args.base_slices,
                "unchunked_slices": list(args.unchunked_slices),
                "repeats": args.repeats,
                "amp": args.amp,
                "channels_last": args.channels_last,
                "quick": args.quick,
            },
            "rows": rows,
            "time_vs_slices_fit": fit,
            "per_slice_at_longest_vs_slope": deviation,
            "linear_in_slices": bool(fit["r2"] >= 0.98 and deviation <= args.linear_tolerance),
            "memory_vs_slices_fit_mib": memory_fit,
            "unchunked_memory_vs_slices_fit_mib": unchunked_fit,
            "time_vs_pixels": [
                {"size": r["size"], "s_per_megapixel": r[f"median_{clock}"] / (r["slices"] * r["size"] ** 2 / 1e6)}
                for r in size_rows
            ],
            "flops_per_slice": flops,
            "matmul_peak_flops_per_s": peak,
            "ms_per_slice_at_matmul_peak": {s: 1000 * f / peak for s, f in flops.items()},
        }
    )
    return results


def format_table(results: dict[str, Any]) -> str:
    clock, s = results["clock"], results["settings"]
    lines = [
        f"CT MIL scaling, {s['backbone']}, chunks of {s['chunk']}, median of {s['repeats']}, "
        f"device {results['machine']['device']}, {clock} time",
        f"{'point':28s} {'s':>8s} {'ms/slice':>9s} {'peak MiB':>9s} {'input MiB':>9s}",
    ]
    for name, row in results["rows"].items():
        peak = "-" if row["peak_extra_mib"] is None else f"{row['peak_extra_mib']:.1f}"
        lines.append(f"{name:28s} {row[f'median_{clock}']:8.3f} {row['ms_per_slice']:9.2f} {peak:>9s} "
                     f"{row['input_mib']:9.1f}")
    fit = results["time_vs_slices_fit"]
    lines.append(f"time = {fit['intercept']:.4f} s + {1000 * fit['slope']:.3f} ms x slices (R^2 {fit['r2']:.4f}); "
                 f"linear in slices: {results['linear_in_slices']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_arguments(parser, "CI mode: tiny backbone, D 8..32, S 16..32, one round")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--chunk", type=int, default=32, help="slice_chunk_size of the chunked network")
    parser.add_argument("--slices", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--base-size", type=int, default=128, help="image size of the slice series")
    parser.add_argument("--base-slices", type=int, default=32, help="slices of the image size series")
    parser.add_argument("--unchunked-slices", type=int, nargs="*", default=[32, 64, 128, 256],
                        help="volume lengths also run without chunks (memory comparison)")
    parser.add_argument("--linear-tolerance", type=float, default=0.1)
    parser.add_argument("--amp", action="store_true", help="AMP (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights")
    return parser


def _quick(args: argparse.Namespace) -> None:
    args.backbone, args.chunk, args.repeats = "tiny", 8, 1
    args.slices, args.sizes, args.base_size, args.base_slices = [8, 16, 32], [16, 32], 16, 8
    args.unchunked_slices = [8, 32]


def _check(args: argparse.Namespace) -> str | None:
    args.slices, args.sizes = sorted(set(args.slices)), sorted(set(args.sizes))
    if len(args.slices) < 2 or min(args.slices + args.sizes) < 1 or args.repeats < 1 or args.chunk < 0:
        return "--slices needs at least two lengths >= 1, --sizes >= 1, --repeats >= 1, --chunk >= 0"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_utils.run_cli(build_parser(), argv, run, format_table, quick=_quick, check=_check)


if __name__ == "__main__":
    main()
