"""Search CPU settings for the CT MIL demo: patient AUC >= 0.9 on the synthetic demo set in under 10 minutes.

Trains :class:`medxai.networks.CTMILNet` (seed 003 sec. 3.2: EDM + SIM + NCM) with
:class:`medxai.losses.MILLoss` (or a baseline of seed 003 Table 2: the slice-level model with
:class:`medxai.losses.SliceLevelLoss`, or COVNet) on the synthetic CT demo set
(:func:`medxai.data.demo.ensure_demo_dataset`), with the MONAI/medxai pipeline the bundle uses:

``LoadImaged -> EnsureChannelFirstd -> LungMaskd (HU threshold) -> CropToLungd -> ScaleIntensityRanged
(lung window -> [0, 1]) -> ResizeSlicesd -> [SampleSlicesd]`` cached by a :class:`monai.data.CacheDataset`,
then, for training only, ``RandResizedCropSlicesd`` (area 90-100 %, aspect 3/4-4/3, seed 003 sec. 4.1.2)
and ``RandFlipd`` (left-right, p = 0.5, the same for every slice). A plain torch loop trains for a fixed
number of epochs (the demo's validation split has 6 patients, too few to pick a checkpoint); the last model
is evaluated on the held-out test split: patient AUC, sensitivity and specificity of COVID-19 against the
rest (:func:`medxai.metrics.classification.classification_report`, threshold 0.5).

The wall time of every phase is printed (demo-set generation, caching/preprocessing, training, validation,
test) and, with ``--results FILE``, one JSON line per trial (settings, times, metrics, per-epoch history,
test scores) is appended to ``FILE``. The results log is ``docs/experiments/ct_mil_demo.md``.

Examples
--------
Run named trials from :data:`PRESETS` (one process, two threads)::

    python scripts/experiments/ct_mil_demo_search.py --preset tiny64 --seeds 0 1 2

or any setting by flags::

    python scripts/experiments/ct_mil_demo_search.py --backbone tiny --size 64 --epochs 20 --lr 1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    ScaleIntensityRanged,
)
from monai.utils import set_determinism

from medxai.data.datalist import load_datalist
from medxai.data.demo import ensure_demo_dataset
from medxai.losses import MILLoss, SliceLevelLoss
from medxai.metrics.classification import classification_report
from medxai.networks import CTMILNet
from medxai.transforms import CropToLungd, LungMaskd, RandResizedCropSlicesd, ResizeSlicesd, SampleSlicesd

__all__ = ["TrialConfig", "PRESETS", "build_transforms", "build_network", "run_trial", "main"]


@dataclass(frozen=True)
class TrialConfig:
    """Every setting of one trial (defaults: the paper's values where they fit a CPU demo).

    Attributes
    ----------
    num_cases, data_seed, class_names, shape, severities
        Demo-set size, seed, comma-separated classes, ``X,Y,Z`` grid and ``name:share,...`` severity mix
        (:func:`ensure_demo_dataset` overrides; empty severities: the generator's default mix; the
        bundle's default demo set is 60 cases, seed 0, all three classes, 128x128x64).
    cross_centre
        ``"A>B"``: train and validate on centre A's patients, test on every centre-B patient; empty: the
        datalist's own patient-level splits (both centres everywhere).
    backbone
        Trunk name for :func:`medxai.networks.backbones.create_backbone` (``"tiny"``, ``"resnet18"``, ...).
    size
        In-plane size (H = W) every slice is resized to after cropping to the lungs.
    num_slices
        Slices per volume after :class:`SampleSlicesd` (``0``: keep all, 64 in the demo set); applied to
        training and evaluation alike, so the number of SIM sections is the same.
    window
        Lung window (HU) mapped to [0, 1] with clipping.
    crop_margin
        Voxels around the lung bounding box (:class:`CropToLungd`).
    rand_crop
        Seed 003's random resized crop (area 90-100 %, aspect 3/4-4/3) in training.
    pooling, loss
        ``"sim"`` + ``"mil"`` (the method), ``"max_features"`` + ``"mil"`` (COVNet), ``"mean_slices"`` +
        ``"slice"`` (slice-level baseline).
    num_classes
        2: independent sigmoid per class (non-COVID, COVID) as eq. 7 sums over c = 0, 1; 1: COVID only.
    section_length, k, integration
        SIM: ``l_s`` (eq. 4), top-k (eq. 6), patient integration (eq. 5 of seed 003 or seed 000).
    dropout, use_ncm, ncm_hidden, lambda_noisy
        EDM dropout, the noise correction module and its loss weight (seed 003 sec. 3.4: 0.7, on, 1e-4).
    epochs, batch_size, lr, weight_decay
        Adam with L2 weight decay (seed 003: lr 1e-3, weight decay 1e-5, batch size 8).
    val_every
        Validate every this many epochs (``0``: never); its time counts in the budget.
    seed
        Training seed (weights, shuffling, augmentation) via :func:`monai.utils.set_determinism`.
    threads
        ``torch.set_num_threads``.
    """

    num_cases: int = 60
    data_seed: int = 0
    class_names: str = "normal,pneumonia,covid19"
    shape: str = "128,128,64"
    severities: str = ""
    cross_centre: str = ""
    backbone: str = "tiny"
    size: int = 64
    num_slices: int = 0
    window: tuple[float, float] = (-1000.0, 200.0)
    crop_margin: int = 2
    rand_crop: bool = True
    pooling: str = "sim"
    loss: str = "mil"
    num_classes: int = 2
    section_length: int = 16
    k: int = 8
    integration: str = "odds_product"
    dropout: float = 0.7
    use_ncm: bool = True
    ncm_hidden: int = 128
    lambda_noisy: float = 1e-4
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    val_every: int = 5
    seed: int = 0
    threads: int = 2


#: Named trials, cheapest first; each is a set of overrides of :class:`TrialConfig`.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny64": {},
    "tiny64_lr3e-4": {"lr": 3e-4},
    "tiny64_ls8k4": {"section_length": 8, "k": 4},
    "tiny64_32slices": {"num_slices": 32, "section_length": 8, "k": 4},
    "tiny96": {"size": 96},
    "tiny128": {"size": 128},
    "tiny64_1class": {"num_classes": 1},
    "tiny64_no_ncm": {"use_ncm": False, "lambda_noisy": 0.0},
    "resnet18_64_32slices": {"backbone": "resnet18", "num_slices": 32, "section_length": 8, "k": 4},
    "slice_level_tiny64": {"pooling": "mean_slices", "loss": "slice", "use_ncm": False, "lambda_noisy": 0.0},
    "covnet_tiny64": {"pooling": "max_features", "use_ncm": False, "lambda_noisy": 0.0},
}


def build_transforms(cfg: TrialConfig, train: bool) -> tuple[Compose, Compose]:
    """(deterministic part, cached by ``CacheDataset``; random part, training only) of the pipeline.

    Images ``(1, H, W, D)`` in HU -> float32 ``(1, size, size, D')`` in [0, 1] (before augmentation).
    """
    low, high = cfg.window
    deterministic = [
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        LungMaskd(keys="image", mask_key="lung_mask"),
        CropToLungd(keys="image", mask_key="lung_mask", margin=cfg.crop_margin),
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ResizeSlicesd(keys="image", size=(cfg.size, cfg.size)),
    ]
    if cfg.num_slices > 0:
        deterministic.append(SampleSlicesd(keys="image", num_slices=cfg.num_slices))
    deterministic.append(EnsureTyped(keys="image", track_meta=False, dtype=torch.float32))
    random: list[Any] = []
    if train:
        if cfg.rand_crop:
            random.append(RandResizedCropSlicesd(keys="image", size=(cfg.size, cfg.size)))
        random.append(RandFlipd(keys="image", prob=0.5, spatial_axis=0))
        random.append(EnsureTyped(keys="image", track_meta=False, dtype=torch.float32))
    return Compose(deterministic), Compose(random)


def build_network(cfg: TrialConfig) -> CTMILNet:
    """The CT MIL network of the trial, returning the details dict in ``forward``."""
    return CTMILNet(
        backbone=cfg.backbone,
        num_classes=cfg.num_classes,
        section_length=cfg.section_length,
        k=cfg.k,
        integration=cfg.integration,
        dropout=cfg.dropout,
        use_ncm=cfg.use_ncm,
        ncm_hidden=cfg.ncm_hidden,
        slice_chunk_size=0,
        pooling=cfg.pooling,
        return_details=True,
    )


def _covid_probability(details: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """Patient probability of COVID-19 (B,): class 1 of two, or the single class."""
    probs = details["patient_probs"]
    return probs[:, 1] if num_classes == 2 else probs[:, 0]


def _targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Patient labels for the losses: class indices (two classes) or 0/1 (one class)."""
    return labels.long() if num_classes == 2 else labels.float().view(-1, 1)


@torch.no_grad()
def predict(net: CTMILNet, loader: DataLoader, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), COVID-19 probabilities (N,)) of every volume in ``loader``, network in eval mode."""
    net.eval()
    labels, scores = [], []
    for batch in loader:
        details = net(batch["image"])
        scores.append(_covid_probability(details, num_classes).numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(labels), np.concatenate(scores)


def _report(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    report = classification_report(labels, scores, threshold=0.5, class_names=("non-covid", "covid"))
    keys = ("auc", "sensitivity", "specificity", "accuracy")
    return {key: (None if report[key] is None else round(float(report[key]), 4)) for key in keys}


def _split_records(cfg: TrialConfig, datalist: Path, split: str) -> list[dict[str, Any]]:
    """Records of ``split``; with ``cross_centre = "A>B"``, training/validation keep centre A's patients and
    the test set is every centre-B patient of the whole set (patient-disjoint: a patient has one centre)."""
    if not cfg.cross_centre:
        return load_datalist(datalist, split, label_key="covid", num_classes=2)
    source, target = cfg.cross_centre.split(">")
    if split != "test":
        return [r for r in load_datalist(datalist, split, label_key="covid", num_classes=2) if r["centre"] == source]
    return [
        r
        for name in ("training", "validation", "test")
        for r in load_datalist(datalist, name, label_key="covid", num_classes=2)
        if r["centre"] == target
    ]


def _dataset(cfg: TrialConfig, datalist: Path, split: str, train: bool) -> CacheDataset:
    records = [{"image": r["image"], "label": r["label"]} for r in _split_records(cfg, datalist, split)]
    deterministic, random = build_transforms(cfg, train)
    transform = Compose([*deterministic.transforms, *random.transforms])
    return CacheDataset(records, transform=transform, cache_rate=1.0, num_workers=0, progress=False)


def run_trial(cfg: TrialConfig, log=print, track_test: bool = False) -> dict[str, Any]:
    """Train and evaluate one setting; return its settings, phase times (s) and metrics.

    The test split is evaluated with the last epoch's weights (``test``) and with those of the first epoch
    reaching the best validation AUC (``test_best_val``, as a MONAI ``CheckpointSaver`` keyed on the
    validation AUC keeps them). ``track_test`` adds the test AUC at every validation to the history, for
    learning-curve diagnostics only (nothing is selected on it).
    """
    torch.set_num_threads(cfg.threads)
    times: dict[str, float] = {}
    start_all, cpu_all = time.perf_counter(), time.process_time()

    start = time.perf_counter()
    data_overrides: dict[str, Any] = {"num_cases": cfg.num_cases, "seed": cfg.data_seed}
    if cfg.class_names != TrialConfig.class_names:
        data_overrides["class_names"] = tuple(cfg.class_names.split(","))
    if cfg.shape != TrialConfig.shape:
        data_overrides["shape"] = tuple(int(v) for v in cfg.shape.split(","))
    if cfg.severities:
        data_overrides["severities"] = {
            name: float(share) for name, share in (item.split(":") for item in cfg.severities.split(","))
        }
    datalist = ensure_demo_dataset("ct", **data_overrides)
    times["demo_set"] = time.perf_counter() - start

    set_determinism(seed=cfg.seed)
    start = time.perf_counter()
    train_ds = _dataset(cfg, datalist, "training", train=True)
    val_ds = _dataset(cfg, datalist, "validation", train=False)
    test_ds = _dataset(cfg, datalist, "test", train=False)
    times["preprocess_cache"] = time.perf_counter() - start
    log(
        f"[data] {datalist.parent.name}: train {len(train_ds)}, val {len(val_ds)}, test {len(test_ds)}; "
        f"image {tuple(train_ds[0]['image'].shape)}; cached in {times['preprocess_cache']:.1f} s"
    )

    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0, generator=generator)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=0)
    test_loader = DataLoader(test_ds, batch_size=1, num_workers=0)

    net = build_network(cfg)
    loss_fn = MILLoss(lambda_noisy=cfg.lambda_noisy) if cfg.loss == "mil" else SliceLevelLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    times["train"] = 0.0
    times["validate"] = 0.0
    history: list[dict[str, Any]] = []
    best_val_auc: float | None = None
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        net.train()
        losses = []
        for batch in train_loader:
            optimizer.zero_grad(set_to_none=True)
            details = net(batch["image"])
            loss = loss_fn(details, _targets(batch["label"], cfg.num_classes))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        epoch_time = time.perf_counter() - start
        times["train"] += epoch_time
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "time": round(epoch_time, 1)}
        if cfg.val_every > 0 and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            start = time.perf_counter()
            entry["val"] = _report(*predict(net, val_loader, cfg.num_classes))
            val_auc = entry["val"]["auc"]
            # as MONAI's CheckpointSaver(key_metric_name=...): keep the first epoch with the best validation AUC
            if val_auc is not None and (best_val_auc is None or val_auc > best_val_auc):
                best_val_auc, best_epoch = val_auc, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            times["validate"] += time.perf_counter() - start
            if track_test:  # diagnostics only: never used to choose anything
                entry["test_peek"] = _report(*predict(net, test_loader, cfg.num_classes))["auc"]
        history.append(entry)
        log(f"[epoch {epoch:3d}] " + json.dumps({k: v for k, v in entry.items() if k != "epoch"}))

    start = time.perf_counter()
    labels, scores = predict(net, test_loader, cfg.num_classes)
    test = _report(labels, scores)
    test_best = None
    if best_state is not None:
        net.load_state_dict(best_state)
        test_best = {"epoch": best_epoch, "val_auc": best_val_auc, **_report(*predict(net, test_loader, cfg.num_classes))}
    times["test"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - start_all
    # CPU seconds of this process (all threads): on a busy shared machine, cpu / threads estimates the
    # wall time the same run takes with the cores to itself
    times["total_cpu"] = time.process_time() - cpu_all
    result = {
        "config": dataclasses.asdict(cfg),
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "test": test,
        "test_best_val": test_best,
        "test_scores": {"labels": labels.tolist(), "covid_prob": [round(float(s), 4) for s in scores]},
        "history": history,
        "torch": torch.__version__,
    }
    log(f"[times s] {json.dumps(result['times_s'])}")
    log(f"[test, last epoch] {json.dumps(test)}")
    log(f"[test, best validation AUC] {json.dumps(test_best)}")
    return result


def summarize(results_path: str | Path) -> str:
    """Markdown table of a results file: one row per trial, then the mean over seeds of every name.

    Columns: test patient AUC, sensitivity and specificity at 0.5 with the last epoch's weights, the test
    AUC of the best-validation checkpoint, and the training wall time (s).
    """
    trials = [json.loads(line) for line in Path(results_path).read_text().splitlines() if line.strip()]
    header = "| trial | seed | test AUC | sensitivity | specificity | test AUC, best-val checkpoint | train s |\n"
    header += "|---|---|---|---|---|---|---|\n"
    rows, by_name = [], {}
    for trial in trials:
        test, best = trial["test"], trial.get("test_best_val") or {}
        values = [test["auc"], test["sensitivity"], test["specificity"], best.get("auc")]
        by_name.setdefault(trial["name"], []).append(values)
        cells = ["-" if v is None else f"{v:.2f}" for v in values]
        rows.append(f"| {trial['name']} | {trial['config']['seed']} | " + " | ".join(cells) + f" | {trial['times_s']['train']:.0f} |")
    for name, values in by_name.items():
        means = [np.mean([v[i] for v in values if v[i] is not None]) if any(v[i] is not None for v in values) else None for i in range(4)]
        cells = ["-" if m is None else f"**{m:.2f}**" for m in means]
        rows.append(f"| **{name}**, mean of {len(values)} | | " + " | ".join(cells) + " | |")
    return header + "\n".join(rows)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named trial (flags below override it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds, one trial each")
    parser.add_argument("--name", default=None, help="label stored with the results")
    parser.add_argument("--track-test", action="store_true", help="log the test AUC at every validation (diagnostics)")
    parser.add_argument("--results", default=None, help="JSON-lines file to append every trial's result to")
    parser.add_argument("--summarize", default=None, help="print the markdown table of a results file and exit")
    for field in dataclasses.fields(TrialConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "seed":
            continue
        if field.type in ("bool",):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        elif field.name == "window":
            parser.add_argument(flag, type=float, nargs=2, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the trials named on the command line; return their results."""
    args = _parse(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return []
    overrides = dict(PRESETS[args.preset]) if args.preset else {}
    for field in dataclasses.fields(TrialConfig):
        value = getattr(args, field.name, None)
        if value is not None and field.name != "seed":
            overrides[field.name] = tuple(value) if field.name == "window" else value
    results = []
    for seed in args.seeds or [TrialConfig.seed]:
        cfg = TrialConfig(**{**overrides, "seed": seed})
        name = args.name or args.preset or "custom"
        print(f"=== trial {name} seed {seed}: {json.dumps(overrides)}", flush=True)
        result = {"name": name, **run_trial(cfg, log=lambda m: print(m, flush=True), track_test=args.track_test)}
        results.append(result)
        if args.results:
            path = Path(args.results)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
