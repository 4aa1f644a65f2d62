#!/usr/bin/env python
"""CT MIL volume inference through the bundle's pipeline against the bare backbone (issue 11).

The pipeline is ``bundles/covid19_ct_mil_classification/configs/inference.json`` merged with the bundle's
``demo.json`` (demo NIfTI volumes) and a benchmark overlay, parsed by ``monai.bundle.ConfigParser`` and run
as the bundle runs it (``evaluator.run()``): load the NIfTI volume, lung mask, crop, HU window, resize every
slice, all slices through the backbone in chunks of ``slice_chunk_size``, EDM maps, slice integration
(SIM), then the postprocessing (sigmoid, maps resized and inverted to the input's geometry) and, in the
``outputs`` variant, the bundle's writers (NIfTI map, PNG overlays, JSON boxes and sentence per case).
The checkpoint the pipeline loads is the benchmark network's own random initialisation.

The reference is the bare backbone (``network.trunk``) forward over the same preprocessed slices (the
pipeline's preprocessing run once beforehand, the tensors on the device), in the same chunks, under
``torch.no_grad``. Goal: pipeline / bare <= 1.15 per volume. Because the two are timed in different
runs, which a shared machine's load can move by 10 % or more, the pipeline's time over the time spent
inside its own backbone calls (forward hooks, same runs) is reported beside it. Each variant is also
measured with channels-last weights (``--memory-formats``) and, on a GPU, with AMP (``--amp``); volumes
per second are reported. Every pipeline run is split into data (loading + preprocessing: ignite's
``GET_BATCH`` events), model (``ITERATION_STARTED`` .. ``FORWARD_COMPLETED``; of which the time inside the
backbone is metered by forward hooks) and after (postprocessing and writers on ``ITERATION_COMPLETED``).

Usage::

    python scripts/benchmarks/ct_inference.py                  # full: the bundle's ResNet-50 at 224x224
    python scripts/benchmarks/ct_inference.py --quick          # CI: tiny backbone, 32x32, 2 volumes, 1 round
    python scripts/benchmarks/ct_inference.py --device cuda --amp
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402  (the shared helpers of scripts/benchmarks/)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "covid19_ct_mil_classification"
GOAL = ("<=", 1.15)
VARIANTS = ("predictions", "outputs")
MEMORY_FORMATS = ("contiguous", "channels_last")
WRITER = "medxai.transforms.outputs.WriteCaseOutputsd"


def load_pipeline(variant: str, root: Path, args: argparse.Namespace, amp: bool) -> Any:
    """The bundle's inference config (+ demo.json + overlay) as a ``ConfigParser``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "demo.json")])
    overlay: dict[str, Any] = {
        "bundle_root": str(root),
        "num_workers": 0,
        "device": f"$torch.device('{args.device}')",
        "amp": amp,
        "backbone": args.backbone,
        "image_size": [args.size, args.size],
        "slice_chunk_size": args.chunk,
        "records": f"${parser['records'][1:]}[:{args.volumes}]",
    }
    for key, value in overlay.items():
        parser[key] = value
    if variant == "predictions":  # no files written per case: the pipeline up to the postprocessed maps
        transforms = parser["postprocessing#transforms"]
        parser["postprocessing#transforms"] = [t for t in transforms if t.get("_target_") != WRITER]
    return parser


def phase_timer(evaluator: Any) -> bench_utils.EventTimer:
    """Data / model / after split of an evaluator's iterations, counting volumes and slices."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    def count(engine: Any) -> dict[str, int]:
        image = engine.state.batch["image"]
        return {"volumes": int(image.shape[0]), "slices": int(image.shape[0] * image.shape[-1])}

    spans = {
        "data": (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED),
        "model": (Events.ITERATION_STARTED, IterationEvents.FORWARD_COMPLETED),
        "after": (IterationEvents.FORWARD_COMPLETED, Events.ITERATION_COMPLETED),
    }
    return bench_utils.EventTimer(evaluator, spans, count)


def set_memory_format(network: torch.nn.Module, name: str) -> None:
    """Channels-last (or contiguous) 4D weights, on any device (``network_to`` does it on CUDA only)."""
    fmt = torch.channels_last if name == "channels_last" else torch.contiguous_format
    network.to(memory_format=fmt)


def preprocessed_slices(parser: Any, device: torch.device, memory_format: str) -> list[torch.Tensor]:
    """Every volume of the run preprocessed by the bundle's own transforms, as (D, 1, H, W) slices on the device."""
    preprocessing = parser.get_parsed_content("preprocessing")
    volumes = []
    for record in parser.get_parsed_content("records"):
        image = preprocessing(copy.deepcopy(record))["image"]  # (1, H, W, D)
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        slices = image.permute(3, 0, 1, 2).contiguous().to(device)
        if memory_format == "channels_last":
            slices = slices.contiguous(memory_format=torch.channels_last)
        volumes.append(slices)
    return volumes


def bare_backbone(trunk: torch.nn.Module, volumes: Sequence[torch.Tensor], chunk: int, amp: bool,
                  device: torch.device) -> Callable[[], int]:
    """The bare reference: the backbone over every volume's slices in chunks; returns slices processed."""

    def run() -> int:
        count = 0
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            for slices in volumes:
                for piece in slices.split(chunk) if chunk > 0 else [slices]:
                    trunk(piece)
                    count += int(piece.shape[0])
        bench_utils.synchronize(device)
        return count

    return run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from monai.utils import set_determinism

    device = bench_utils.setup_torch(args.device, args.threads, args.seed)
    results = bench_utils.run_header(device, args.argv, "scripts/benchmarks/ct_inference.py")
    clock = bench_utils.choose_clock(args.clock, device)
    amp_modes = [False, True] if args.amp and device.type == "cuda" else [False]
    set_determinism(seed=args.seed)
    measurements: dict[str, Callable[[], Any]] = {}
    timers: dict[str, bench_utils.EventTimer] = {}
    meters: dict[str, bench_utils.ForwardMeter] = {}
    bare_counts: dict[str, list[int]] = {}
    configs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="medxai_bench_ct_") as scratch:
        state = None
        slices_per_volume: list[int] = []
        flops = 0
        for amp in amp_modes:
            for memory_format in args.memory_formats:
                setting = f"{memory_format}{'_amp' if amp else ''}"
                volumes: list[torch.Tensor] = []
                for variant in args.variants:
                    label = f"{variant}_{setting}"
                    root = Path(scratch) / label
                    (root / "models").mkdir(parents=True)
                    parser = load_pipeline(variant, root, args, amp)
                    network = parser.get_parsed_content("network")
                    if state is None:
                        state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                    torch.save(state, root / "models" / "model.pt")  # the pipeline's CheckpointLoader loads it
                    set_memory_format(network, memory_format)
                    evaluator = parser.get_parsed_content("evaluator")
                    timers[label] = phase_timer(evaluator)
                    meters[label] = bench_utils.ForwardMeter(device, network.trunk)
                    measurements[f"pipeline_{label}"] = evaluator.run
                    configs[label] = {"variant": variant, "memory_format": memory_format, "amp": amp}
                    if not volumes:
                        volumes = preprocessed_slices(parser, device, memory_format)
                        slices_per_volume = [int(v.shape[0]) for v in volumes]
                        network.load_state_dict(state)
                        network.eval()
                        bare = bare_backbone(network.trunk, volumes, args.chunk, amp, device)
                        counts: list[int] = []
                        bare_counts[setting] = counts
                        measurements[f"bare_{setting}"] = lambda bare=bare, counts=counts: counts.append(bare())
                        if not flops:
                            x = volumes[0].permute(1, 2, 3, 0).unsqueeze(0)  # (1, 1, H, W, D)
                            with torch.no_grad():
                                flops = bench_utils.model_flops(lambda: network(x))
                                trunk_flops = bench_utils.model_flops(lambda: network.trunk(volumes[0]))

        parts: dict[str, list[dict[str, Any]]] = {label: [] for label in timers}
        counts_out: dict[str, dict[str, int]] = {}

        def reset_all() -> None:
            for label in timers:
                timers[label].reset()
                meters[label].reset()

        def after_each(name: str, wall: float, cpu: float) -> None:
            if name.startswith("pipeline_"):
                label = name[len("pipeline_"):]
                timer, meter = timers[label], meters[label]
                record = copy.deepcopy(timer.parts)
                record["backbone"] = {"wall": meter.wall, "cpu": meter.cpu}
                parts[label].append(record)
                counts_out[name] = {"volumes": timer.counts.get("volumes", 0), "slices": meter.images}
            else:
                counts_out[name] = {"volumes": len(slices_per_volume), "slices": bare_counts[name[len("bare_"):]][-1]}
            reset_all()

        wrapped = {name: (lambda fn=fn: (reset_all(), fn())) for name, fn in measurements.items()}
        times = bench_utils.interleaved(wrapped, device, args.repeats, warmup=1, after_each=after_each)
    peak = bench_utils.matmul_peak_flops(device, clock=clock)
    summary = {name: bench_utils.summarize(t) for name, t in times.items()}
    volumes_count = len(slices_per_volume)
    rows = {}
    for label, config in configs.items():
        setting = f"{config['memory_format']}{'_amp' if config['amp'] else ''}"
        pipe, bare = summary[f"pipeline_{label}"], summary[f"bare_{setting}"]
        ratio = {c: pipe[f"median_{c}"] / bare[f"median_{c}"] for c in bench_utils.CLOCKS}
        rows[label] = {
            **config,
            "ratio": ratio[clock],
            "ratio_wall": ratio["wall"],
            "ratio_cpu": ratio["cpu"],
            "volumes_per_s": {c: volumes_count / pipe[f"median_{c}"] for c in bench_utils.CLOCKS},
            "bare_volumes_per_s": {c: volumes_count / bare[f"median_{c}"] for c in bench_utils.CLOCKS},
            "per_volume_s": bench_utils.median_parts(parts[label], volumes_count),
            # measured inside the same runs, so a load change between rounds does not move it: the pipeline's
            # time over the time its own backbone calls took
            "ratio_to_own_backbone": {
                c: pipe[f"median_{c}"] / statistics.median(p["backbone"][c] for p in parts[label])
                for c in bench_utils.CLOCKS
            },
            "goal": bench_utils.goal(ratio[clock], *GOAL),
        }
    bare_contiguous = summary[f"bare_{args.memory_formats[0]}"][f"median_{clock}"]
    results["load_average"]["after"] = bench_utils.load_average()
    results.update(
        {
            "clock": clock,
            "settings": {
                "backbone": args.backbone,
                "image_size": [args.size, args.size],
                "volumes": volumes_count,
                "slices_per_volume": slices_per_volume,
                "slice_chunk_size": args.chunk,
                "repeats": args.repeats,
                "variants": list(args.variants),
                "memory_formats": list(args.memory_formats),
                "amp_modes": amp_modes,
                "quick": args.quick,
            },
            "times_s": summary,
            "counts": counts_out,
            "rows": rows,
            "network_flops_first_volume": flops,
            "backbone_flops_first_volume": trunk_flops,
            "matmul_peak_flops_per_s": peak,
            "bare_s_at_matmul_peak": sum(slices_per_volume) * trunk_flops / slices_per_volume[0] / peak,
            "bare_fraction_of_matmul_peak": (sum(slices_per_volume) * trunk_flops / slices_per_volume[0] / peak)
            / bare_contiguous,
        }
    )
    return results


def format_table(results: dict[str, Any]) -> str:
    clock, s = results["clock"], results["settings"]
    lines = [
        f"CT MIL inference, {s['backbone']} at {s['image_size']}, {s['volumes']} volumes of {s['slices_per_volume']} "
        f"slices, chunks of {s['slice_chunk_size']}, median of {s['repeats']}, device {results['machine']['device']}, "
        f"{clock} time",
        f"{'variant':34s} {'vol/s':>7s} {'bare vol/s':>10s} {'ratio':>6s} {'data':>7s} {'model':>7s} "
        f"{'backbone':>8s} {'after':>7s} (s per volume) {'/own bb':>7s}  goal",
    ]
    for label, row in results["rows"].items():
        p = row["per_volume_s"]
        g = row["goal"]
        lines.append(
            f"{label:34s} {row['volumes_per_s'][clock]:7.3f} {row['bare_volumes_per_s'][clock]:10.3f} "
            f"{row['ratio']:6.3f} {p['data'][clock]:7.3f} {p['model'][clock]:7.3f} {p['backbone'][clock]:8.3f} "
            f"{p['after'][clock]:7.3f} {'':14s} {row['ratio_to_own_backbone'][clock]:7.3f}  "
            f"{g['op']} {g['bound']} ({'met' if g['met'] else 'not met'})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_arguments(parser, "CI mode: tiny backbone, 32x32 slices, 2 volumes, one round")
    parser.add_argument("--backbone", default="resnet50", help="the bundle's backbone (default: its resnet50)")
    parser.add_argument("--size", type=int, default=224, help="slice edge after preprocessing (bundle: 224)")
    parser.add_argument("--volumes", type=int, default=3, help="demo test volumes per round")
    parser.add_argument("--chunk", type=int, default=32, help="slice_chunk_size (bundle: 32; 0: all at once)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="predictions: pipeline without the per-case writers; outputs: the whole pipeline")
    parser.add_argument("--memory-formats", nargs="+", choices=MEMORY_FORMATS, default=list(MEMORY_FORMATS))
    parser.add_argument("--amp", action="store_true", help="also measure with AMP (CUDA only)")
    return parser


def _quick(args: argparse.Namespace) -> None:
    args.backbone, args.size, args.volumes, args.repeats = "tiny", 32, 2, 1


def _check(args: argparse.Namespace) -> str | None:
    if args.volumes < 1 or args.repeats < 1 or args.size < 8 or args.chunk < 0:
        return "--volumes and --repeats must be >= 1, --size >= 8, --chunk >= 0"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bench_utils.run_cli(build_parser(), argv, run, format_table, quick=_quick, check=_check)


if __name__ == "__main__":
    main()
