#!/usr/bin/env python
"""Training throughput of each bundle's pipeline against a bare PyTorch loop (issue 11).

For every bundle the pipeline is the bundle's own ``configs/train.json`` merged with its ``configs/demo.json``
(the built-in synthetic demo data and CPU-sized network) and a benchmark overlay, parsed by
``monai.bundle.ConfigParser``: MONAI dataset + transforms + data loader + the bundle's ignite trainer
(``train#trainer``) with its handlers, except the per-epoch validation, the end-of-run checkpoint saving
and snapshot selection (not training throughput). The
reference is a bare PyTorch loop with the same network object, loss, optimiser and batch size over batches
pre-loaded on the device (taken from the same data loader beforehand): ``zero_grad``, forward, loss,
``backward``, ``step`` (for the thick/thin trainer of ``brain_ventricle_segmentation`` the same two steps
per iteration, thick then thin, as :class:`medxai.engines.thick_thin.ThickThinTrainer` takes them).

One round runs ``--iterations`` iterations of each variant of the pipeline and of the bare loop, rounds
interleaved; the first round is a warm-up; the median over ``--repeats`` rounds is reported as iterations
(and samples) per second, with the ratio pipeline / bare (goal >= 0.9). Ignite events split every pipeline
iteration into data loading (``GET_BATCH_STARTED`` .. ``GET_BATCH_COMPLETED``: the data loader, i.e. the
random transforms after the cache, and collation), the model step (``ITERATION_STARTED`` .. MONAI's
``MODEL_COMPLETED``: moving the batch, forward, loss, backward, optimiser step) and the rest (handlers on
``ITERATION_COMPLETED``, e.g. decollation and logging), so the gap to the bare loop is located.

Variants (``--variants``), each an overlay over the bundle's configuration:

- ``config``: as configured (demo: ``UntrackedCacheDataset`` with ``cache_rate`` 1 and no copies, ``DataLoader``
  with 0 workers);
- ``no_cache``: ``cache_rate`` 0, every deterministic transform re-run on each access;
- ``persistent``: ``PersistentDataset`` (deterministic transforms cached on disk, in a temporary folder);
- ``thread_loader``: ``ThreadDataLoader`` (a background thread prefetches batches from the cached dataset);
- ``workers``: the bundle's ``DataLoader`` with ``--workers`` worker processes (persistent across rounds), i.e. the
  random transforms on other cores while the main process trains, as ``train.json``'s ``num_workers`` (default 4)
  does outside the demo. The main process's CPU time no longer contains the data loading, so this variant's ratio
  is always the **wall-clock** one; it is meaningful on a machine with a core free for each worker;
- ``monai_cache``: MONAI's ``CacheDataset`` with its defaults, i.e. the bundles before issue 11: a deep copy of
  the cached record for every access (``copy_cache``) and ``MetaTensor`` tracking in the random transforms. The
  bundles train from :class:`medxai.data.UntrackedCacheDataset` without copies (the same samples, bit for bit:
  ``tests/bundles/test_train_cache_safety.py``), so this variant shows what that saves;
- ``no_decollate``: the trainer's ``decollate`` switched off (no per-iteration split of batch and output
  into per-sample dicts; the bundles' trainers have no ``postprocessing`` that needs it);
- ``set_to_none``: the trainer's ``optim_set_to_none`` on (gradients freed, not zero-filled, before each
  step; MONAI's default is off, PyTorch's ``zero_grad`` default and the bare loop have it on);
- ``tuned``: ``no_decollate`` and ``set_to_none`` together.

Usage::

    python scripts/benchmarks/training_throughput.py                       # full: 6 bundles, demo sizes
    python scripts/benchmarks/training_throughput.py --quick               # CI: tiny sizes, one round
    python scripts/benchmarks/training_throughput.py --paper-size --iterations 5 --bundles ...  # train.json sizes
    python scripts/benchmarks/training_throughput.py --bundles cxr_lung_segmentation --device cuda --amp
"""

from __future__ import annotations

import argparse
import copy
import time
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402  (the shared helpers of scripts/benchmarks/)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO_ROOT / "bundles"
BUNDLES = (
    "covid19_ct_mil_classification",
    "covid19_ct_transfer_classification",
    "cxr_lung_segmentation",
    "covid19_cxrnet_classification",
    "covid19_cxr_ensemble_classification",
    "brain_ventricle_segmentation",
)
VARIANTS = (
    "config", "no_cache", "persistent", "thread_loader", "workers", "monai_cache", "no_decollate", "set_to_none",
    "tuned",
)
GOAL = (">=", 0.9)
#: train handlers left out of the benchmark (not per-iteration training work)
SKIPPED_HANDLERS = ("ValidationHandler", "CheckpointSaver", "SnapshotSelector")
#: per-bundle overlays of the quick (CI) mode: tiny networks and inputs, few records
QUICK_OVERLAYS: dict[str, dict[str, Any]] = {
    "covid19_ct_mil_classification": {"backbone": "tiny", "image_size": [32, 32], "train_num_slices": 16,
                                      "batch_size": 2},
    "covid19_ct_transfer_classification": {"backbone": "tiny", "canvas_hw": [32, 40], "batch_size": 4},
    "cxr_lung_segmentation": {"image_size": [32, 32], "batch_size": 4},
    "covid19_cxrnet_classification": {"backbone": "tiny", "image_size": [32, 32], "batch_size": 4},
    "covid19_cxr_ensemble_classification": {"backbone": "tiny", "image_size": [32, 32], "batch_size": 4},
    "brain_ventricle_segmentation": {"backbone": "tiny", "image_size": [32, 32], "field_of_view": [32, 32]},
}
QUICK_RECORDS = 8
#: demo.json keys that size the network and its input: ``--paper-size`` puts back train.json's values for them
#: (the published networks at their input sizes, on the demo data)
PAPER_SIZE_KEYS = (
    "backbone", "image_size", "canvas_hw", "batch_size", "unet_channels", "unet_strides", "unet_num_res_units",
    "unet_features", "decoder_channels", "train_num_slices", "section_length", "top_k", "slice_chunk_size",
    "field_of_view", "pixdim",
)


#: variants whose main-process CPU time misses work done elsewhere: their ratio is judged on wall-clock time
WALL_CLOCK_VARIANTS = ("workers",)


def bundle_overlay(name: str, variant: str, root: Path, quick: bool, amp: bool, channels_last: bool) -> dict[str, Any]:
    """Config overrides (id -> value) for ``variant`` of bundle ``name``; ``root`` is a scratch bundle_root."""
    overlay: dict[str, Any] = {"bundle_root": str(root), "num_workers": 0, "amp": amp, "channels_last": channels_last}
    if quick:
        overlay.update(QUICK_OVERLAYS.get(name, {}))
    if variant == "no_cache":
        overlay["cache_rate"] = 0.0
    return overlay


def load_pipeline(name: str, variant: str, root: Path, args: argparse.Namespace) -> Any:
    """Parse the bundle's train.json + demo.json + the overlay; returns the ``ConfigParser``."""
    from monai.bundle import ConfigParser

    configs = BUNDLES_DIR / name / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "demo.json")])
    for key, value in bundle_overlay(name, variant, root, args.quick, args.amp, args.channels_last).items():
        parser[key] = value
    if getattr(args, "paper_size", False):
        train, demo = (ConfigParser.load_config_file(str(configs / f)) for f in ("train.json", "demo.json"))
        for key in PAPER_SIZE_KEYS:
            if key in demo and key in train:
                parser[key] = train[key]
        if "pretrained" in train:
            parser["pretrained"] = False  # random weights: no download, the same FLOPs
    # training throughput only: no per-epoch validation (it would parse and run the evaluator), no end-of-run
    # checkpoint saving or snapshot selection; the per-iteration handlers (logging, LR schedules) stay
    handlers = parser["train#handlers"]
    parser["train#handlers"] = [
        h for h in handlers if not any(skip in str(h.get("_target_", "")) for skip in SKIPPED_HANDLERS)
    ]
    if args.quick:
        for key in ("train#records", "train#unlabeled_records"):
            if key.split("#")[1] in parser["train"]:
                parser[key] = f"${parser[key][1:]}[:{QUICK_RECORDS}]"
    dataset = parser["train#dataset"]
    if variant == "persistent":
        parser["train#dataset"] = {
            "_target_": "PersistentDataset",
            "data": dataset["data"],
            "transform": dataset["transform"],
            "cache_dir": str(root / "persistent_cache"),
        }
    if variant == "monai_cache":
        for dataset_id in ("train#dataset", "train#unlabeled_dataset"):
            if dataset_id.split("#")[1] in parser["train"]:
                parser[f"{dataset_id}#_target_"] = "CacheDataset"
                parser[f"{dataset_id}#copy_cache"] = True
    if variant == "thread_loader":
        loader = dict(parser["train#dataloader"])
        loader["_target_"] = "ThreadDataLoader"
        parser["train#dataloader"] = loader
    if variant == "workers":
        loader = dict(parser["train#dataloader"])
        loader.update(num_workers=args.workers, persistent_workers=True)
        parser["train#dataloader"] = loader
    if variant in ("no_decollate", "tuned"):
        parser["train#trainer#decollate"] = False
    if variant in ("set_to_none", "tuned"):
        parser["train#trainer#optim_set_to_none"] = True
    return parser


def iteration_timer(trainer: Any) -> bench_utils.EventTimer:
    """Data / model / after split of a trainer's iterations, counting the samples of each batch."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    def count(engine: Any) -> dict[str, int]:
        batch = engine.state.batch
        return {"samples": int((batch["image"] if isinstance(batch, dict) else batch[0]).shape[0])}

    spans = {
        "data": (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED),
        "model": (Events.ITERATION_STARTED, IterationEvents.MODEL_COMPLETED),
        "after": (IterationEvents.MODEL_COMPLETED, Events.ITERATION_COMPLETED),
    }
    return bench_utils.EventTimer(trainer, spans, count)


def plain(tensor: Any) -> Any:
    """A MetaTensor's plain tensor (what a notebook loop would hold)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def preload_batches(trainer: Any, count: int, channels_last: bool) -> list[tuple[Any, ...]]:
    """``count`` (inputs, targets[, thin inputs]) batches from the trainer's own loader, on its device."""
    device = trainer.state.device
    batches: list[tuple[Any, ...]] = []
    while len(batches) < count:
        for batchdata in trainer.data_loader:
            inputs, targets = trainer.prepare_batch(batchdata, device, trainer.non_blocking)[:2]
            inputs, targets = plain(inputs), plain(targets)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            batch: tuple[Any, ...] = (inputs, targets)
            if getattr(trainer, "unlabeled_loss_function", None) is not None and trainer.unlabeled_weight > 0:
                thin = plain(trainer._next_unlabeled())
                if channels_last and thin.dim() == 4:
                    thin = thin.contiguous(memory_format=torch.channels_last)
                batch = (*batch, thin)
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def bare_loop(trainer: Any, batches: Sequence[tuple[Any, ...]], amp: bool) -> Callable[[], int]:
    """A plain PyTorch training loop over ``batches`` with the trainer's network, loss and optimiser.

    Returns a function that runs one pass and returns the number of samples it trained on.
    """
    from medxai.engines.inferers import accepts_return_details

    network, optimizer, loss_fn = trainer.network, trainer.optimizer, trainer.loss_function
    device = trainer.state.device
    details = accepts_return_details(network)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    thick_thin = getattr(trainer, "unlabeled_loss_function", None) is not None

    def forward(x: torch.Tensor) -> Any:
        with torch.autocast(device.type, enabled=use_amp):
            return network(x, return_details=True) if details else network(x)

    def step(loss: torch.Tensor) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def run() -> int:
        network.train()
        samples = 0
        for batch in batches:
            x, y = batch[0], batch[1]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), y).mean()
            if thick_thin:
                step(trainer.supervised_weight * loss)
                if len(batch) > 2:
                    optimizer.zero_grad(set_to_none=True)
                    step(trainer.unlabeled_weight * trainer.unlabeled_loss_function(forward(batch[2])).mean())
            else:
                step(loss)
            samples += int(x.shape[0])
        bench_utils.synchronize(device)
        return samples

    return run


def measure_bundle(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Interleaved rounds of every variant's pipeline and of the bare loop for one bundle."""
    from ignite.engine import Engine
    from monai.utils import set_determinism

    set_determinism(seed=args.seed)
    device = torch.device(args.device)
    pipelines: dict[str, Any] = {}
    timers: dict[str, bench_utils.EventTimer] = {}
    for variant in args.variants:
        root = scratch / name / variant
        root.mkdir(parents=True, exist_ok=True)
        parser = load_pipeline(name, variant, root, args)
        parser["device"] = f"$torch.device('{args.device}')"
        trainer = parser.get_parsed_content("train#trainer")
        pipelines[variant] = trainer
        timers[variant] = iteration_timer(trainer)
    reference = pipelines[args.variants[0]]
    batches = preload_batches(reference, args.iterations, args.channels_last)
    bare = bare_loop(reference, batches, args.amp)
    batch_size = int(batches[0][0].shape[0])
    network = reference.network
    transform_profile = profile_transforms(reference, args.profile_items)

    samples: dict[str, int] = {}
    iterations: dict[str, int] = {}
    parts: dict[str, list[dict[str, dict[str, float]]]] = {v: [] for v in args.variants}

    def pipeline_fn(variant: str) -> Callable[[], None]:
        def run() -> None:
            timers[variant].reset()
            pipelines[variant].state.max_epochs = None  # a fresh run (ignite then takes the epoch length given)
            # ignite's run with an explicit epoch: the bundle's trainer, its loader and handlers, K iterations
            # (MONAI's Workflow.run would restart a finished engine with a whole pass over the loader)
            Engine.run(pipelines[variant], pipelines[variant].data_loader, max_epochs=1, epoch_length=args.iterations)

        return run

    measurements: dict[str, Callable[[], Any]] = {f"pipeline_{v}": pipeline_fn(v) for v in args.variants}
    bare_samples: list[int] = []
    measurements["bare"] = lambda: bare_samples.append(bare())

    def after_each(label: str, wall: float, cpu: float) -> None:
        if label == "bare":
            samples["bare"], iterations["bare"] = bare_samples[-1], len(batches)
            return
        variant = label[len("pipeline_"):]
        timer = timers[variant]
        samples[label], iterations[label] = timer.counts.get("samples", 0), timer.iterations
        parts[variant].append(copy.deepcopy(timer.parts))

    bench_utils.log(args.verbose, f"{name}: batch {batch_size}, {args.iterations} iterations per round")
    times = bench_utils.interleaved(measurements, device, args.repeats, warmup=1, after_each=after_each)
    clock = bench_utils.choose_clock(args.clock, device)
    summary = {label: bench_utils.summarize(t) for label, t in times.items()}
    rates = {
        label: {f"iterations_per_s_{c}": iterations[label] / s[f"median_{c}"] for c in bench_utils.CLOCKS}
        | {f"samples_per_s_{c}": samples[label] / s[f"median_{c}"] for c in bench_utils.CLOCKS}
        for label, s in summary.items()
    }
    ratios = {
        variant: {c: rates[f"pipeline_{variant}"][f"iterations_per_s_{c}"] / rates["bare"][f"iterations_per_s_{c}"]
                  for c in bench_utils.CLOCKS}
        for variant in args.variants
    }
    breakdown = {
        variant: bench_utils.median_parts(parts[variant], max(iterations[f"pipeline_{variant}"], 1))
        for variant in args.variants
    }
    example = batches[0][0]
    flops = bench_utils.model_flops(lambda: bare_step_flops(reference, batches[0]))
    judged = {v: ratios[v]["wall" if v in WALL_CLOCK_VARIANTS else clock] for v in args.variants}
    best = max(args.variants, key=judged.get)
    return {
        "batch_size": batch_size,
        "input_shape": list(example.shape),
        "iterations_per_round": args.iterations,
        "parameters": sum(p.numel() for p in network.parameters()),
        "train_step_flops": flops,
        "random_transforms": transform_profile,
        "times_s": summary,
        "rates": rates,
        "counts": {"samples": samples, "iterations": iterations},
        "ratios": judged,
        "ratio_clocks": {v: "wall" if v in WALL_CLOCK_VARIANTS else clock for v in args.variants},
        "ratios_wall": {v: r["wall"] for v, r in ratios.items()},
        "ratios_cpu": {v: r["cpu"] for v, r in ratios.items()},
        "per_iteration_s": breakdown,
        "best_variant": best,
        "goal": bench_utils.goal(judged[args.variants[0]], *GOAL),
        "goal_best_variant": bench_utils.goal(judged[best], *GOAL),
    }


def profile_transforms(trainer: Any, items: int) -> dict[str, Any]:
    """Process CPU seconds per training batch of each transform the loader runs on every access.

    The transforms after the first random one (what a ``CacheDataset`` cannot cache) are applied one by one
    to deep copies of up to ``items`` cached records (the deterministic prefix is run first where the
    record is not cached); each transform's mean time per record is scaled by the batch size. The deep copy
    is counted only where the dataset makes one (``copy_cache``, MONAI's default); it is made here either way,
    so that profiling leaves the cache as it was. The random transforms run with ``MetaTensor`` tracking off
    where the dataset runs them so (:class:`medxai.data.UntrackedCacheDataset`).
    """
    from monai.transforms import Randomizable, apply_transform

    from medxai.data import UntrackedCacheDataset, meta_tracking

    dataset = trainer.data_loader.dataset
    transforms = list(dataset.transform.transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    cache = getattr(dataset, "_cache", None) or []
    seconds = [0.0] * (len(transforms) - first_random)
    copy_s = collate_s = 0.0
    count = min(items, len(dataset))
    outputs = []
    for index in range(count):
        start = time.process_time()
        if index < len(cache) and cache[index] is not None:
            data = copy.deepcopy(cache[index])  # what CacheDataset does with copy_cache=True (its default)
            copy_s += time.process_time() - start
        else:
            data = copy.deepcopy(dataset.data[index])
            for transform in transforms[:first_random]:
                data = apply_transform(transform, data)
        with meta_tracking(not isinstance(dataset, UntrackedCacheDataset)):
            for k, transform in enumerate(transforms[first_random:]):
                start = time.process_time()
                data = apply_transform(transform, data)
                seconds[k] += time.process_time() - start
        outputs.append(data)
    batch_size = int(trainer.data_loader.batch_size or 1)
    collate = trainer.data_loader.collate_fn
    batches = [outputs[i : i + batch_size] for i in range(0, count, batch_size)]
    for batch in batches:
        start = time.process_time()
        collate(batch)
        collate_s += time.process_time() - start
    names = [type(t).__name__ for t in transforms[first_random:]]
    per_batch = {}
    if getattr(dataset, "copy_cache", True):
        per_batch["deepcopy of the cached record"] = batch_size * copy_s / max(count, 1)
    per_batch |= {f"{i}:{name}": batch_size * s / max(count, 1) for i, (name, s) in enumerate(zip(names, seconds))}
    per_batch["collate"] = collate_s / max(len(batches), 1)
    return {"records": count, "per_batch_cpu_s": per_batch}


def bare_step_flops(trainer: Any, batch: tuple[Any, ...]) -> None:
    """One forward + backward of the first batch (for the FLOP count; gradients discarded)."""
    from medxai.engines.inferers import accepts_return_details

    network = trainer.network
    network.train()
    out = network(batch[0], return_details=True) if accepts_return_details(network) else network(batch[0])
    trainer.loss_function(out, batch[1]).mean().backward()
    network.zero_grad(set_to_none=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = bench_utils.setup_torch(args.device, args.threads, args.seed)
    results = bench_utils.run_header(device, args.argv, "scripts/benchmarks/training_throughput.py")
    clock = bench_utils.choose_clock(args.clock, device)
    peak = bench_utils.matmul_peak_flops(device, clock=clock)
    bundles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medxai_bench_train_") as scratch:
        for name in args.bundles:
            bundles[name] = measure_bundle(name, args, Path(scratch))
            bare = bundles[name]["times_s"]["bare"][f"median_{clock}"]
            bound = args.iterations * bundles[name]["train_step_flops"] / peak
            bundles[name]["bare_s_at_matmul_peak"] = bound
            bundles[name]["bare_fraction_of_matmul_peak"] = bound / bare
    results["load_average"]["after"] = bench_utils.load_average()
    results.update(
        {
            "clock": clock,
            "settings": {
                "iterations": args.iterations,
                "repeats": args.repeats,
                "variants": list(args.variants),
                "amp": args.amp,
                "channels_last": args.channels_last,
                "quick": args.quick,
                "paper_size": args.paper_size,
            },
            "matmul_peak_flops_per_s": peak,
            "bundles": bundles,
        }
    )
    return results


def format_table(results: dict[str, Any]) -> str:
    clock = results["clock"]
    lines = [
        f"training throughput, {results['settings']['iterations']} iterations per round, median of "
        f"{results['settings']['repeats']}, device {results['machine']['device']}, {clock} time",
        f"{'bundle':36s} {'variant':14s} {'it/s':>8s} {'ratio':>6s} {'data s/it':>10s} {'model s/it':>10s} "
        f"{'after s/it':>10s}",
    ]
    for name, b in results["bundles"].items():
        bare = b["rates"]["bare"][f"iterations_per_s_{clock}"]
        lines.append(f"{name:36s} {'bare loop':14s} {bare:8.2f}")
        for variant, ratio in b["ratios"].items():
            judged = b.get("ratio_clocks", {}).get(variant, clock)
            rate = b["rates"][f"pipeline_{variant}"][f"iterations_per_s_{judged}"]
            part = b["per_iteration_s"][variant]
            wall = f" (it/s and ratio on wall-clock time; bare loop {b['rates']['bare']['iterations_per_s_wall']:.2f})" \
                if judged != clock else ""
            lines.append(
                f"{'':36s} {variant:14s} {rate:8.2f} {ratio:6.3f} {part['data'][clock]:10.4f} "
                f"{part['model'][clock]:10.4f} {part['after'][clock]:10.4f}{wall}"
            )
        profile = ", ".join(f"{k.split(':')[-1]} {v:.4f}" for k, v in b["random_transforms"]["per_batch_cpu_s"].items())
        lines.append(f"{'':36s} per-batch CPU s of the uncached work: {profile}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_arguments(parser, "CI mode: tiny networks and inputs, 8 records, 2 iterations, 1 round")
    parser.add_argument("--bundles", nargs="+", choices=BUNDLES, default=list(BUNDLES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="pipeline variants; the first is the one the goal is judged on")
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per round")
    parser.add_argument("--paper-size", action="store_true",
                        help="the networks and input sizes of train.json (not demo.json's CPU-sized ones), demo data")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the 'workers' variant")
    parser.add_argument("--profile-items", type=int, default=16, help="records for the per-transform profile")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on a CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs (CUDA)")
    return parser


def _quick(args: argparse.Namespace) -> None:
    args.iterations, args.repeats, args.profile_items = 2, 1, 2
    if args.variants == list(VARIANTS):
        args.variants = ["config"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    def check(args: argparse.Namespace) -> str | None:
        if args.iterations < 1 or args.repeats < 1:
            return f"--iterations and --repeats must be >= 1, got {args.iterations}, {args.repeats}"
        if args.workers < 1:
            return f"--workers must be >= 1, got {args.workers}"
        if args.quick and args.paper_size:
            return "--quick and --paper-size exclude each other (tiny sizes against published sizes)"
        return None

    return bench_utils.run_cli(build_parser(), argv, run, format_table, quick=_quick, check=check)


if __name__ == "__main__":
    main()
