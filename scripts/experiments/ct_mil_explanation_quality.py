#!/usr/bin/env python
"""Explanation quality of a trained CT MIL bundle: EDM map vs Grad-CAM, LIME and Kernel SHAP (issue 4).

Scores where each explanation of the COVID-19 slice score lands relative to known lesions, next to the
scores of maps that know nothing:

1. **Network and explainers from the bundle's own configs.** ``configs/inference.json`` and
   ``configs/explain.json`` (plus ``--overlay`` files, e.g. ``configs/demo.json``) are merged by
   :class:`monai.bundle.ConfigParser`; the network is ``network`` (``network_def``: backbone, image size, ...)
   with the checkpoint loaded as a plain state dict (``weights_only=True``); LIME and Kernel SHAP are the
   explainers, SLIC segmenter and settings (``explain_num_samples``, ``explain_superpixels``, baseline,
   seed, explained score ``sigmoid(s_c)``) of the :class:`~medxai.engines.explain_handlers.SuperpixelExplanationHandler`
   that ``explain.json`` wires, instantiated from that config entry. Nothing is trained (``--quick`` without
   ``--checkpoint`` uses the randomly initialised network of a tiny config, for the test).
2. **Maps of class COVID-19** (``positive_class``) on single slices (N, 1, H, W), all explaining the slice
   score ``s_c`` that feeds the slice integration module (:class:`~medxai.networks.slice_scorer.SliceScorer`):

   - ``edm``: the network's own activation map ``A_c`` (seed 000 / 003 eq. 3; ``create_explainer("edm")``
     on the scorer's ``activation_maps``), ReLU, bilinear upsampling;
   - ``gradcam``: Grad-CAM (``create_explainer("gradcam")``) of the logit ``s_c`` at the trunk's output,
     the last convolutional feature map (what ``layer4`` is for a torchvision ResNet). On an EDM network
     this is ``ReLU(A_c - b_c) / (h w)``: Grad-CAM reduces to CAM on a GAP-linear head (Selvaraju et al.
     2017, sec. 3.1), so it differs from the EDM map by the EDM bias inside the ReLU only;
   - ``lime`` and ``kernel_shap``: superpixel weights painted on their superpixels (seed 000 eq. 7-8),
     both on the same SLIC segmentation of the slice, as ``explain.json`` runs them.

3. **References** through the same scoring code: ``uniform_lung`` (1 inside the lung mask, 0 outside: a
   map that knows where the lungs are and nothing else), ``uniform_slice`` (constant), ``random`` (i.i.d.
   uniform noise, seeded) and ``oracle`` (the lesion mask itself, the ceiling). Their expected scores are
   also given in closed form: a point drawn uniformly in the lungs hits the lesion with probability
   ``|lesion & lung| / |lung|``, which is also the energy share of ``uniform_lung``.
4. **Scores** (:mod:`medxai.metrics.localization`): the pointing game (Zhang et al. 2018: the map's maximum
   inside the lesion; a flat map is a miss unless *all* its maxima are inside), the same within Zhang et
   al.'s 15 px at 224 px scaled to the image size, and the energy-based pointing game (Wang et al. 2020:
   the share of the map's positive mass inside the lesion; a map with no positive mass scores 0 and is
   counted in ``energy_undefined``). A LIME or Kernel SHAP map is constant on each superpixel, so its
   maximum is a whole superpixel and it hits only when that entire superpixel lies in the lesion (the
   tolerant variant asks every pixel of it to be within the tolerance): a strict reading of the pointing
   game for superpixel maps, against pixel maps (EDM, Grad-CAM) with a single maximum. Means with
   bootstrap 95 % percentile intervals, resampling volumes
   (phantoms: the slices of one patient are not independent) or slices (MedSeg: no patient ids), and
   paired differences against the uniform-lung chance level with the same resamples. Runtime per slice.

Data:

- **Phantoms**: the COVID-19 volumes of ``--split`` of the bundle's ``datalist`` (with ``demo.json``, the
  synthetic demo set of :func:`medxai.data.demo.resolve_datalist`, whose entries carry ``lesion_mask``).
  The lesion mask goes through the bundle's ``preprocessing`` with the image: it is added to every
  transform that moves the lung mask (crop to the lungs, in-plane resize) with the lung mask's
  interpolation (nearest). Per volume, among the slices whose preprocessed lesion covers at least
  ``--min-lesion-fraction`` of the slice, the ``--slices-per-volume`` slices (default: ``top_slices`` of
  ``inference.json``, the number of most suspicious slices its montage shows) with the highest COVID-19
  slice score are explained: the slices the bundle itself shows a reader (``inference.json`` and
  ``explain.json`` show the top-scoring slices), restricted to slices where a lesion is known to be.
- **MedSeg** (``--medseg-root``, default ``../shared/data/covid_ct_infection_seg_medseg100``): 50 real
  axial slices with radiologist infection masks (:func:`medxai.data.datasets.medseg100_manifest`). The
  PNGs are already lung-windowed 8-bit images cropped to the lungs and transposed relative to the
  radiological view, so each is rotated by 180 degrees into the (X: towards the patient's right, Y:
  anterior) layout of the bundle's RAS volumes (:func:`png_to_ras`), mapped 0..255 -> [0, 1] (standing in
  for the bundle's HU window, which cannot be applied to 8-bit images) and resized in-plane with the
  bundle's own ``ResizeSlicesd`` settings (image: its mode; mask: the lung mask's nearest mode). Each is fed
  as a single-slice volume (1, 1, H, W, 1). There is no lung mask, so the chance map is uniform over the
  (lung-cropped) slice.

Outputs in ``--output``: ``explanation_quality.json`` (every number, per-slice scores, settings, the
checkpoint's SHA-256, the command, the machine, the date), ``explanation_quality.png`` (a phantom slice
and a MedSeg slice, each with the four maps and the mask outline, radiological view), the markdown table
on stdout, and with ``--save-maps`` the maps and masks (``explanation_quality_maps.npz``).

Usage::

    python scripts/experiments/ct_mil_explanation_quality.py \\
        --bundle bundles/covid19_ct_mil_classification \\
        --overlay bundles/covid19_ct_mil_classification/configs/demo.json \\
        --checkpoint bundles/covid19_ct_mil_classification/models/model.pt --split test --output eval/xq

    python scripts/experiments/ct_mil_explanation_quality.py --quick --output /tmp/xq   # the test's mode

The run fails (exit status 1) when a reference map breaks the metric's own facts (oracle: hit 1 and energy
1; uniform slice: energy = lesion share of the slice), i.e. when the scoring is wrong, never because of
the explanations' scores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.utils import set_determinism  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from medxai.data.datasets import medseg100_manifest  # noqa: E402
from medxai.engines.explain_handlers import (  # noqa: E402
    SuperpixelExplanationHandler,
    evaluation_mode,
    top_scoring_slices,
)
from medxai.errors import DatasetError, InputError  # noqa: E402
from medxai.explain import create_explainer  # noqa: E402
from medxai.explain.normalize import relu_max  # noqa: E402
from medxai.explain.writers import render_overlay, save_json  # noqa: E402
from medxai.metrics import energy_pointing_game, pointing_game  # noqa: E402
from medxai.networks.slice_scorer import SliceScorer  # noqa: E402
from medxai.transforms import ResizeSlicesd  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "covid19_ct_mil_classification"
DEFAULT_MEDSEG = REPO_ROOT.parent / "shared" / "data" / "covid_ct_infection_seg_medseg100"
BASE_CONFIGS = ("inference.json", "explain.json")
OUTPUT_NAME = "explanation_quality"
LESION_KEY = "lesion_mask"
LUNG_KEY = "lung_mask"

#: the explanation methods compared, in table order: key -> title
METHODS: dict[str, str] = {
    "edm": "EDM activation map",
    "gradcam": "Grad-CAM (trunk output)",
    "lime": "LIME (superpixels)",
    "kernel_shap": "Kernel SHAP (superpixels)",
}
#: maps that know nothing (or everything), scored the same way: key -> title
REFERENCES: dict[str, str] = {
    "uniform_lung": "reference: uniform in the lungs",
    "uniform_slice": "reference: uniform over the slice",
    "random": "reference: random noise",
    "oracle": "reference: the mask itself",
}
METRICS = ("hit", "hit_tolerant", "energy")

#: bundle overrides of ``--quick``: a tiny demo set and network, few perturbation samples (the test's mode)
QUICK_OVERRIDES: dict[str, Any] = {
    "demo_args": {"num_cases": 16, "shape": [48, 48, 16], "class_names": ["normal", "covid19"]},
    "backbone": "tiny",
    "image_size": [32, 32],
    "section_length": 4,
    "top_k": 2,
    "slice_chunk_size": 64,
    "explain_num_samples": 32,
    "explain_superpixels": 12,
    "explain_top_k": 2,
    "top_slices": 2,
}


# ------------------------------------------------------------------------------------------------ bundle
def load_bundle_config(
    bundle: Path, overlays: Sequence[Path] = (), overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """The bundle's ``inference.json`` + ``explain.json`` with ``overlays`` merged over them, then ``overrides``.

    ``bundle_root`` is set to ``bundle`` (so relative paths in the configs resolve as
    ``python -m monai.bundle run --bundle_root`` would resolve them).
    """
    bundle = Path(bundle)
    files = [bundle / "configs" / name for name in BASE_CONFIGS] + [Path(o) for o in overlays]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"config file(s) not found: {missing} (bundle {bundle}).")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _keys(entry: Mapping[str, Any]) -> list[str] | None:
    keys = entry.get("keys")
    if isinstance(keys, str) and not keys.startswith(("@", "$", "%")):
        return [keys]
    return list(keys) if isinstance(keys, (list, tuple)) else None


def add_mask_to_preprocessing(
    parser: ConfigParser, mask_key: str = LESION_KEY, follow_key: str = LUNG_KEY, load_like: str = "image"
) -> list[str]:
    """Let ``mask_key`` travel through the bundle's ``preprocessing`` exactly as ``follow_key`` does.

    Edits the parsed config (not the files): the mask is loaded by every loader that loads ``load_like``
    (``LoadMedicalImaged``, same orientation), and added to every transform whose keys hold ``follow_key``
    (``CropToLungd``, ``ResizeSlicesd``, ...), with ``follow_key``'s per-key settings (e.g. the
    ``nearest-exact`` resize mode) where a setting is a per-key list; ``case_keys`` (``SelectItemsd``) keeps it.

    Returns
    -------
    list of str
        ``_target_`` of every transform the mask was added to, in pipeline order.
    """
    transforms = parser["preprocessing"]["transforms"]
    if not isinstance(transforms, list):
        raise InputError(
            f"preprocessing#transforms must be a list of transform configs, got {type(transforms).__name__}."
        )
    touched = []
    for index, entry in enumerate(transforms):
        keys = _keys(entry) if isinstance(entry, Mapping) else None
        if keys is None or mask_key in keys:
            continue
        target = str(entry.get("_target_", ""))
        if target.endswith("LoadMedicalImaged") and load_like in keys:
            parser[f"preprocessing#transforms#{index}#keys"] = [*keys, mask_key]
        elif follow_key in keys:
            position = keys.index(follow_key)
            parser[f"preprocessing#transforms#{index}#keys"] = [*keys, mask_key]
            for name, value in entry.items():
                if name != "keys" and isinstance(value, list) and len(value) == len(keys):
                    parser[f"preprocessing#transforms#{index}#{name}"] = [*value, value[position]]
        else:
            continue
        touched.append(target)
    if "case_keys" in parser and mask_key not in parser["case_keys"]:
        parser["case_keys"] = [*parser["case_keys"], mask_key]
    if not any(t.endswith("LoadMedicalImaged") for t in touched) or len(touched) < 2:
        raise InputError(
            f"could not route '{mask_key}' through the bundle's preprocessing (transforms touched: {touched}); "
            f"it needs a LoadMedicalImaged of '{load_like}' and transforms that move '{follow_key}'."
        )
    return touched


def _resize_entry(parser: ConfigParser) -> dict[str, Any]:
    """The bundle's in-plane resize transform config (``ResizeSlicesd`` over the image and the lung mask)."""
    for entry in parser["preprocessing"]["transforms"]:
        if isinstance(entry, Mapping) and str(entry.get("_target_", "")).endswith("ResizeSlicesd"):
            return dict(entry)
    raise InputError("the bundle's preprocessing has no ResizeSlicesd transform to take the in-plane size from.")


def slice_resizer(parser: ConfigParser, image_key: str = "image", mask_key: str = LESION_KEY) -> ResizeSlicesd:
    """The bundle's in-plane resize for a 2D slice and its mask: its size, the image's mode for the image and
    the lung mask's (nearest) mode for the mask."""
    entry = _resize_entry(parser)
    keys = _keys(entry) or []
    modes = entry.get("mode", "area")
    modes = list(modes) if isinstance(modes, list) else [modes] * max(1, len(keys))
    mode_of = dict(zip(keys, modes))
    if image_key not in mode_of or LUNG_KEY not in mode_of:
        raise InputError(f"the bundle's ResizeSlicesd must resize '{image_key}' and '{LUNG_KEY}', it has keys {keys}.")
    size = [int(s) for s in parser.get_parsed_content("image_size")]
    return ResizeSlicesd(keys=[image_key, mask_key], size=size, mode=[mode_of[image_key], mode_of[LUNG_KEY]])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_network(parser: ConfigParser, checkpoint: Path | None) -> torch.nn.Module:
    """The bundle's ``network`` (on the config's ``device``), in eval mode, with the checkpoint's state dict.

    ``checkpoint=None`` keeps the random initialisation (``--quick`` only).
    """
    network = parser.get_parsed_content("network")
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise InputError(f"checkpoint {checkpoint} is not a plain state dict (got {type(state).__name__}).")
        if "model" in state and isinstance(state["model"], Mapping):  # CheckpointSaver with a save_dict
            state = state["model"]
        network.load_state_dict(state)
    return network.eval()


def superpixel_handler(parser: ConfigParser) -> SuperpixelExplanationHandler:
    """The ``SuperpixelExplanationHandler`` that ``explain.json`` wires, instantiated from its config entry
    (it shares the parsed ``network``): its LIME/Kernel SHAP explainers, segmenter and settings are used."""
    handlers = parser["handlers"]
    for index, entry in enumerate(handlers if isinstance(handlers, list) else []):
        if isinstance(entry, Mapping) and str(entry.get("_target_", "")).endswith("SuperpixelExplanationHandler"):
            return parser.get_parsed_content(f"handlers#{index}")
    raise InputError(
        "explain.json has no SuperpixelExplanationHandler in 'handlers': it is where the LIME and Kernel SHAP "
        "settings come from."
    )


# ----------------------------------------------------------------------------------------------- explain
@dataclass
class Explainers:
    """The four explainers of class ``class_index`` on single slices (N, C_in, H, W)."""

    class_index: int
    edm: Any
    gradcam: Any
    handler: SuperpixelExplanationHandler
    network: torch.nn.Module

    def explain(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Maps (1, 1, H, W) per method of one slice ``image`` (1, C_in, H, W), and seconds per method.

        LIME and Kernel SHAP share one SLIC segmentation (timed as ``slic``); LIME/SHAP runtimes exclude it.
        """
        maps: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        with evaluation_mode(self.network):
            for key, explainer in (("edm", self.edm), ("gradcam", self.gradcam)):
                started = time.perf_counter()
                maps[key] = explainer(image, self.class_index).detach().float().cpu()
                seconds[key] = time.perf_counter() - started
            started = time.perf_counter()
            segments = self.handler.segmenter(image)
            seconds["slic"] = time.perf_counter() - started
            for key in ("lime", "kernel_shap"):
                started = time.perf_counter()
                # the handler's scorer has class_index set: its single output (index 0) is s_c
                maps[key] = self.handler.explainers[key](image, 0, segments=segments).detach().float().cpu()
                seconds[key] = time.perf_counter() - started
        return maps, seconds


def build_explainers(network: torch.nn.Module, handler: SuperpixelExplanationHandler, class_index: int) -> Explainers:
    """EDM and Grad-CAM on the slice scorer (all classes), LIME and Kernel SHAP from the bundle's handler."""
    missing = {"lime", "kernel_shap"} - set(handler.explainers)
    if missing:
        raise InputError(f"explain.json's explain_methods lack {sorted(missing)}; it has {sorted(handler.explainers)}.")
    if handler.network is not network:  # a re-parsed network would be a fresh, untrained copy
        raise InputError("explain.json's SuperpixelExplanationHandler must share the evaluated network (@network).")
    if handler.class_index != class_index:
        raise InputError(f"explain.json explains class {handler.class_index}, the positive class is {class_index}.")
    scorer = SliceScorer(network)
    edm = create_explainer("edm", scorer, activation_map_fn=scorer.activation_maps)
    gradcam = create_explainer("gradcam", scorer, target_layer="network.trunk")
    return Explainers(class_index, edm, gradcam, handler, network)


def reference_maps(lesion: torch.Tensor, region: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Reference maps (1, 1, H, W) for one slice: uniform in ``region`` (the lungs), uniform, random, oracle."""
    return {
        "uniform_lung": region.float(),
        "uniform_slice": torch.ones_like(lesion, dtype=torch.float32),
        "random": torch.rand(lesion.shape, generator=generator),
        "oracle": lesion.float(),
    }


# ------------------------------------------------------------------------------------------------ scores
def pointing_tolerance(size: int) -> float:
    """Zhang et al.'s pointing-game tolerance, 15 pixels on 224-pixel images, scaled to ``size`` pixels."""
    return 15.0 * size / 224.0


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> dict[str, np.ndarray]:
    """Per slice: pointing game hit (maximum in the mask), hit within ``tolerance`` px, energy share.

    ``maps`` (N, 1, H, W), ``masks`` (N, 1, H, W) bool. A map with no positive mass puts no energy in the
    mask: its energy (NaN in :func:`energy_pointing_game`) is scored 0 and flagged in ``energy_defined``.
    """
    energy = energy_pointing_game(maps, masks).double().cpu().numpy()
    return {
        "hit": pointing_game(maps, masks, tolerance=0.0).double().cpu().numpy(),
        "hit_tolerant": pointing_game(maps, masks, tolerance=tolerance).double().cpu().numpy(),
        "energy": np.nan_to_num(energy, nan=0.0),
        "energy_defined": ~np.isnan(energy),
    }


def chance_levels(lesions: np.ndarray, regions: np.ndarray, tolerance: float) -> dict[str, np.ndarray]:
    """Scores of a map that knows only the region, per slice, for masks (N, H, W) bool.

    ``"strict"``: ``|lesion & region| / |region|``, the probability that a point drawn uniformly in the region
    is in the lesion (the pointing game of such a map's maximum) and the energy share of a map uniform over
    the region. ``"tolerant"``: the probability that the point is within ``tolerance`` pixels of the lesion
    (Euclidean distance transform, as :func:`medxai.metrics.pointing_game` measures it).
    """
    flat = lambda a: a.reshape(len(a), -1).sum(1).astype(np.float64)  # noqa: E731
    area = flat(regions)
    if (area == 0).any():
        raise InputError(f"chance_levels: {int((area == 0).sum())} slice(s) have an empty reference region.")
    near = np.stack([ndimage.distance_transform_edt(~lesion) <= tolerance + 1e-9 for lesion in lesions])
    return {"strict": flat(lesions & regions) / area, "tolerant": flat(near & regions) / area}


def bootstrap_interval(
    values: np.ndarray,
    groups: np.ndarray | None = None,
    num_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,) (Efron & Tibshirani 1993, ch. 13).

    With ``groups`` (N,) whole groups are resampled (cluster bootstrap: the mean over all values of the
    drawn groups, for values that are not independent within a group, e.g. the slices of one patient);
    without, single values are. Deterministic for a seed; a constant sample gives a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise InputError("bootstrap_interval got no values.")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level}.")
    if groups is None:
        groups = np.arange(values.size)
    groups = np.asarray(groups).ravel()
    if groups.size != values.size:
        raise InputError(f"bootstrap_interval: {groups.size} groups for {values.size} values.")
    _, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, sums.size, size=(int(num_resamples), sums.size))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarise(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    chance: Mapping[str, np.ndarray],
    groups: np.ndarray | None,
    seconds: Mapping[str, np.ndarray],
    num_resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Mean and 95 % interval of every metric per map, and paired differences to the chance level.

    ``chance`` holds the per-slice closed-form chance levels (N,) (:func:`chance_levels`); each metric's
    ``minus_chance`` is the mean of ``score - chance`` over slices with its interval (same resamples),
    against the tolerant chance level for ``hit_tolerant`` and the strict one otherwise.
    """
    rows: dict[str, dict[str, Any]] = {}
    for key, per_slice in scores.items():
        row: dict[str, Any] = {}
        for metric in METRICS:
            values = per_slice[metric]
            difference = values - chance["tolerant" if metric == "hit_tolerant" else "strict"]
            row[metric] = {
                "mean": float(values.mean()),
                "ci95": list(bootstrap_interval(values, groups, num_resamples, seed)),
                "minus_chance": float(difference.mean()),
                "minus_chance_ci95": list(bootstrap_interval(difference, groups, num_resamples, seed)),
            }
        row["energy_undefined"] = int((~per_slice["energy_defined"]).sum())
        if key in seconds:
            row["seconds_per_slice"] = float(np.mean(seconds[key]))
        rows[key] = row
    return rows


# ------------------------------------------------------------------------------------------------ data
@dataclass
class SliceSet:
    """Explained slices of one data set, stacked: images, masks, maps (N, 1, H, W) and per-slice info."""

    images: list[torch.Tensor] = field(default_factory=list)
    lesions: list[torch.Tensor] = field(default_factory=list)
    regions: list[torch.Tensor] = field(default_factory=list)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    info: list[dict[str, Any]] = field(default_factory=list)

    def add(self, image: torch.Tensor, lesion: torch.Tensor, region: torch.Tensor, maps: Mapping[str, torch.Tensor],
            seconds: Mapping[str, float], info: dict[str, Any]) -> None:
        self.images.append(image.float().cpu())
        self.lesions.append(lesion.bool().cpu())
        self.regions.append(region.bool().cpu())
        for key, value in maps.items():
            self.maps.setdefault(key, []).append(value)
        for key, value in seconds.items():
            self.seconds.setdefault(key, []).append(value)
        self.info.append(info)

    def __len__(self) -> int:
        return len(self.info)

    def stacked(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values) if values[0].ndim == 4 else torch.stack(values)


def _plain(value: Any) -> torch.Tensor:
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def is_positive(record: Mapping[str, Any], positive_class: int) -> bool:
    """Whether a datalist record is a case of the positive class (``covid`` of the demo set, else ``label``)."""
    value = record.get("covid", record.get("label"))
    return value is not None and not isinstance(value, (list, str)) and int(value) == int(positive_class)


def phantom_slices(
    parser: ConfigParser,
    network: torch.nn.Module,
    explainers: Explainers,
    split: str,
    slices_per_volume: int,
    min_lesion_fraction: float,
    seed: int,
    log: Callable[[str], None],
    max_volumes: int | None = None,
) -> tuple[SliceSet, dict[str, Any]]:
    """Explain the top-scoring lesion slices of every positive volume of ``split`` (see the module docstring)."""
    add_mask_to_preprocessing(parser)
    parser["infer_split"] = split
    records = parser.get_parsed_content("records")
    preprocessing = parser.get_parsed_content("preprocessing")
    positive_class = int(parser.get_parsed_content("positive_class"))
    device = next(network.parameters()).device
    selected = [r for r in records if is_positive(r, positive_class)]
    without_mask = [r for r in selected if LESION_KEY not in r]
    if without_mask:
        raise DatasetError(
            f"{len(without_mask)} positive case(s) of split '{split}' have no '{LESION_KEY}' in the datalist "
            f"{parser.get_parsed_content('datalist')}: explanation quality needs lesion masks (the demo set has them)."
        )
    if max_volumes is not None:
        selected = selected[: int(max_volumes)]
    if not selected:
        raise DatasetError(
            f"split '{split}' of {parser.get_parsed_content('datalist')} has no case of class {positive_class}."
        )
    out = SliceSet()
    volumes: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(seed)
    for volume_index, record in enumerate(selected):
        data = preprocessing(dict(record))
        image = _plain(data["image"]).float()  # (C, H, W, D)
        lesion = _plain(data[LESION_KEY]) > 0.5
        lung = _plain(data[LUNG_KEY]) > 0
        if lesion.shape != image.shape or lung.shape != image.shape:
            raise InputError(
                f"case {volume_index}: preprocessed image {tuple(image.shape)}, lesion {tuple(lesion.shape)} and lung "
                f"{tuple(lung.shape)} masks differ in shape."
            )
        with torch.no_grad():
            details = network.forward_details(image[None].to(device))
        scores = details["slice_scores"][0, :, positive_class].float().cpu()
        fractions = lesion[0].flatten(0, 1).double().mean(0)  # (D,) lesion share of each slice
        candidates = [int(z) for z in torch.nonzero(fractions >= min_lesion_fraction).flatten()]
        name = Path(str(record["image"])).name.split(".")[0]
        entry = {
            "case": name,
            "patient_probability": float(details["patient_probs"][0, positive_class]),
            "num_slices": int(image.shape[-1]),
            "lesion_slices": candidates,
            "slice_scores": [round(float(s), 6) for s in scores],
            "explained_slices": [],
        }
        if candidates:
            order = top_scoring_slices(scores[candidates], slices_per_volume)
            for rank, position in enumerate(order):
                z = candidates[position]
                x = image[..., z][None].to(device)  # (1, C, H, W): slice z as the trunk sees it
                maps, seconds = explainers.explain(x)
                lesion_z, lung_z = lesion[..., z][None], lung[..., z][None]
                maps.update(reference_maps(lesion_z, lung_z, generator))
                out.add(x, lesion_z, lung_z, maps, seconds, {
                    "dataset": "phantom", "case": name, "group": volume_index, "slice": z, "rank": rank,
                    "slice_score": float(scores[z]), "lesion_fraction": float(fractions[z]),
                })
                entry["explained_slices"].append(z)
        volumes.append(entry)
        log(f"phantom {name}: {len(candidates)} lesion slices, explained {entry['explained_slices']}")
    return out, {"volumes": volumes, "num_positive_volumes": len(selected)}


def png_to_ras(png: np.ndarray) -> np.ndarray:
    """A MedSeg PNG slice (the radiological view transposed) in the RAS array layout of the bundle's volumes.

    The radiological view of an RAS slice ``a`` (X: towards the patient's right, Y: anterior) is
    ``a.T[::-1, ::-1]`` (anterior up, the patient's right on the left). The PNG is its transpose,
    ``png = a[::-1, ::-1]``, so ``a = png[::-1, ::-1]``: a rotation by 180 degrees.
    """
    png = np.asarray(png)
    if png.ndim != 2:
        raise InputError(f"png_to_ras expects a 2D grayscale slice, got shape {png.shape}.")
    return np.ascontiguousarray(png[::-1, ::-1])


def radiological(array: np.ndarray) -> np.ndarray:
    """An axial (X, Y) RAS slice in radiological display: anterior up, the patient's right on the left."""
    return np.ascontiguousarray(np.asarray(array).T[::-1, ::-1])


def load_medseg_slice(record: Mapping[str, Any], resizer: ResizeSlicesd) -> tuple[torch.Tensor, torch.Tensor]:
    """One MedSeg slice as the bundle's network input (1, 1, H, W) in [0, 1] and its infection mask (1, 1, H, W).

    8-bit grayscale ``v`` -> ``v / 255``; RAS layout (:func:`png_to_ras`); the bundle's in-plane resize.
    """
    with Image.open(record["image"]) as picture:
        image = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    with Image.open(record["infection_mask"]) as picture:
        mask = np.asarray(picture.convert("L")) > 0
    if image.shape != mask.shape:
        raise DatasetError(f"MedSeg {Path(record['image']).name}: image {image.shape} and mask {mask.shape} differ.")
    data = {
        "image": torch.from_numpy(png_to_ras(image))[None, ..., None],  # (1, H, W, 1): a one-slice volume
        LESION_KEY: torch.from_numpy(png_to_ras(mask).astype(np.float32))[None, ..., None],
    }
    data = resizer(data)
    return _plain(data["image"])[..., 0][None].float(), (_plain(data[LESION_KEY])[..., 0][None] > 0.5)


def medseg_slices(
    parser: ConfigParser,
    network: torch.nn.Module,
    explainers: Explainers,
    root: Path,
    limit: int | None,
    seed: int,
    log: Callable[[str], None],
) -> SliceSet:
    """Explain every MedSeg slice (up to ``limit``) fed to the network as a single-slice volume."""
    records = medseg100_manifest(root)
    if limit is not None:
        records = records[: int(limit)]
    resizer = slice_resizer(parser)
    positive_class = int(parser.get_parsed_content("positive_class"))
    device = next(network.parameters()).device
    generator = torch.Generator().manual_seed(seed + 1)
    out = SliceSet()
    for index, record in enumerate(records):
        image, lesion = load_medseg_slice(record, resizer)
        if not lesion.any():
            continue
        x = image.to(device)
        with torch.no_grad():
            details = network.forward_details(x[..., None])  # (1, 1, H, W, 1): a one-slice volume
        maps, seconds = explainers.explain(x)
        region = torch.ones_like(lesion)  # no lung mask: the slice is already cropped to the lungs
        maps.update(reference_maps(lesion, region, generator))
        name = Path(record["image"]).stem
        out.add(x, lesion, region, maps, seconds, {
            "dataset": "medseg", "case": name, "group": index, "slice": 0, "rank": 0,
            "slice_score": float(details["slice_scores"][0, 0, positive_class]),
            "patient_probability": float(details["patient_probs"][0, positive_class]),
            "lesion_fraction": float(lesion.double().mean()),
        })
    log(f"medseg: {len(out)} slices explained")
    return out


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(slices: SliceSet, tolerance: float, grouped: bool, num_resamples: int, seed: int) -> dict[str, Any]:
    """Scores of every map of a slice set, per slice and summarised, and the chance levels."""
    lesions = slices.stacked(slices.lesions)
    regions = slices.stacked(slices.regions)
    chance = chance_levels(lesions[:, 0].numpy(), regions[:, 0].numpy(), tolerance)
    groups = np.asarray([i["group"] for i in slices.info]) if grouped else None
    scores = {key: localisation_scores(slices.stacked(slices.maps[key]), lesions, tolerance)
              for key in (*METHODS, *REFERENCES)}
    seconds = {key: np.asarray(slices.seconds[key]) for key in (*METHODS, "slic")}
    summary = summarise(scores, chance, groups, seconds, num_resamples, seed)
    summary["chance"] = {
        kind: {"mean": float(values.mean()), "ci95": list(bootstrap_interval(values, groups, num_resamples, seed))}
        for kind, values in chance.items()
    }
    summary["slic_seconds_per_slice"] = float(seconds["slic"].mean())
    probabilities = 1.0 / (1.0 + np.exp(-np.asarray([i["slice_score"] for i in slices.info])))
    summary["slice_probability"] = {"mean": float(probabilities.mean()), "min": float(probabilities.min()),
                                    "max": float(probabilities.max())}
    per_slice = []
    for i, info in enumerate(slices.info):
        entry = dict(info)
        entry["chance"] = float(chance["strict"][i])
        entry["chance_tolerant"] = float(chance["tolerant"][i])
        entry["scores"] = {key: {m: float(scores[key][m][i]) for m in METRICS} for key in scores}
        entry["seconds"] = {key: float(seconds[key][i]) for key in seconds}
        per_slice.append(entry)
    return {
        "num_slices": len(slices),
        "num_groups": int(len(set(groups.tolist()))) if groups is not None else len(slices),
        "bootstrap_unit": "volume" if grouped else "slice",
        "pointing_tolerance_px": tolerance,
        "summary": summary,
        "slices": per_slice,
    }


def check_references(result: Mapping[str, Any], dataset: str) -> list[str]:
    """Facts the metrics must reproduce on the reference maps; a failure means the scoring is wrong."""
    failures = []
    for entry in result["slices"]:
        scores = entry["scores"]
        where = f"{dataset} {entry['case']} slice {entry['slice']}"
        if scores["oracle"]["hit"] != 1.0 or abs(scores["oracle"]["energy"] - 1.0) > 1e-6:
            failures.append(
                f"{where}: the oracle map scores hit {scores['oracle']['hit']}, energy {scores['oracle']['energy']}."
            )
        if abs(scores["uniform_slice"]["energy"] - entry["lesion_fraction"]) > 1e-6:
            failures.append(
                f"{where}: a uniform map puts {scores['uniform_slice']['energy']:.6f} of its energy in the mask, "
                f"the mask covers {entry['lesion_fraction']:.6f} of the slice."
            )
        if abs(scores["uniform_lung"]["energy"] - entry["chance"]) > 1e-6:
            failures.append(
                f"{where}: uniform-lung energy {scores['uniform_lung']['energy']:.6f} != chance {entry['chance']:.6f}."
            )
    return failures


# ------------------------------------------------------------------------------------------------ report
def _cell(stats: Mapping[str, Any], digits: int = 2) -> str:
    low, high = stats["ci95"]
    return f"{stats['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(result: Mapping[str, Any], title: str, chance_name: str) -> str:
    """One data set's table: per map, hit rate (strict, tolerant), energy share, each with its 95 % interval,
    energy share minus the chance level, and seconds per slice."""
    summary = result["summary"]
    tolerance = result["pointing_tolerance_px"]
    lines = [
        f"**{title}**: {result['num_slices']} slices ({result['num_groups']} {result['bootstrap_unit']}s; 95 % "
        f"bootstrap intervals over {result['bootstrap_unit']}s)",
        "",
        f"| map | pointing game | pointing game within {tolerance:.1f} px | energy share | energy share minus "
        f"chance | seconds per slice |",
        "|---|---|---|---|---|---|",
    ]
    for key, title_ in {**METHODS, **REFERENCES}.items():
        row = summary[key]
        seconds = f"{row['seconds_per_slice']:.3f}" if "seconds_per_slice" in row else "-"
        count = row["energy_undefined"]
        undefined = f" ({count} map{'s' if count > 1 else ''} without positive mass scored 0)" if count else ""
        difference = {"mean": row["energy"]["minus_chance"], "ci95": row["energy"]["minus_chance_ci95"]}
        lines.append(
            f"| {title_} | {_cell(row['hit'])} | {_cell(row['hit_tolerant'])} | {_cell(row['energy'], 3)}{undefined} "
            f"| {_cell(difference, 3)} | {seconds} |"
        )
    chance = summary["chance"]
    lines.append(
        f"| chance: {chance_name} (closed form) | {_cell(chance['strict'])} | {_cell(chance['tolerant'])} "
        f"| {_cell(chance['strict'], 3)} | 0 | - |"
    )
    probability = summary["slice_probability"]
    lines += [
        "",
        f"Explained slices: P(COVID-19 slice) = sigmoid(s_c) mean {probability['mean']:.3f} (min "
        f"{probability['min']:.3f}, max {probability['max']:.3f}). LIME and Kernel SHAP share one SLIC "
        f"segmentation per slice ({summary['slic_seconds_per_slice']:.3f} s, not included above).",
    ]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _script_path() -> str:
    path = Path(__file__).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


# ------------------------------------------------------------------------------------------------ figure
def _featured(slices: SliceSet) -> int:
    """The slice to show: the largest lesion among the explained slices (the first on ties)."""
    return int(np.argmax([info["lesion_fraction"] for info in slices.info]))


def draw_figure(path: Path, rows: Sequence[tuple[str, SliceSet, Mapping[str, Any]]]) -> Path:
    """One row per data set: the featured slice with the mask outlined, then the four maps (radiological view)."""
    columns = 1 + len(METHODS)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.9 * len(rows)), squeeze=False)
    for r, (label, slices, result) in enumerate(rows):
        i = _featured(slices)
        info = result["slices"][i]
        image = radiological(slices.images[i][0, 0].numpy())
        lesion = radiological(slices.lesions[i][0, 0].numpy()).astype(float)
        axes[r, 0].imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[r, 0].contour(lesion, levels=[0.5], colors="lime", linewidths=0.7)
        axes[r, 0].set_title(
            f"{label} {info['case']}" + (f" z={info['slice']}" if info["dataset"] == "phantom" else "")
            + f"\nlesion {100 * info['lesion_fraction']:.1f} % of slice, s_c = {info['slice_score']:.2f}",
            fontsize=7,
        )
        for c, (key, title) in enumerate(METHODS.items(), start=1):
            values = radiological(relu_max(slices.maps[key][i])[0, 0].numpy())
            rgb = render_overlay(image, values, cmap="jet", alpha=0.6, map_range=(0.0, 1.0), image_range=(0.0, 1.0))
            axes[r, c].imshow(rgb, interpolation="nearest")
            axes[r, c].contour(lesion, levels=[0.5], colors="lime", linewidths=0.6)
            rows_, cols_ = np.nonzero(values == values.max())
            axes[r, c].plot(cols_.mean(), rows_.mean(), marker="x", color="white", markersize=6, markeredgewidth=2)
            score = info["scores"][key]
            verdict = "hit" if score["hit"] == 1.0 else ("near" if score["hit_tolerant"] == 1.0 else "miss")
            axes[r, c].set_title(f"{title}\npointing {verdict}, energy {score['energy']:.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("COVID-19 explanations vs known lesions (green outline; x: map maximum); positive part, max-scaled",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------- run
@contextmanager
def _timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - started:.1f} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the checkpoint's explanations on the phantoms and MedSeg; write the JSON and the figure."""
    started = time.perf_counter()
    log = (lambda message: print(message, file=sys.stderr)) if args.verbose else (lambda message: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is None and not args.quick:
        raise InputError(
            "--checkpoint is required: this script evaluates a trained bundle (only --quick runs untrained)."
        )
    overrides: dict[str, Any] = dict(QUICK_OVERRIDES) if args.quick else {}
    if args.num_samples is not None:
        overrides["explain_num_samples"] = int(args.num_samples)
    if args.device is not None:
        overrides["device"] = f"$torch.device('{args.device}')"
    parser = load_bundle_config(args.bundle, args.overlay, overrides)
    set_determinism(seed=args.seed)  # the random initialisation of --quick; evaluation itself is deterministic
    network = build_network(parser, args.checkpoint)
    handler = superpixel_handler(parser)
    positive_class = int(parser.get_parsed_content("positive_class"))
    explainers = build_explainers(network, handler, positive_class)
    image_size = [int(s) for s in parser.get_parsed_content("image_size")]
    tolerance = pointing_tolerance(image_size[0])
    slices_per_volume = int(args.slices_per_volume or parser.get_parsed_content("top_slices"))
    quick_limit = 2 if args.quick else None

    with _timed(log, "phantoms"):
        phantoms, phantom_volumes = phantom_slices(
            parser, network, explainers, args.split, slices_per_volume, args.min_lesion_fraction, args.seed, log,
            max_volumes=quick_limit,
        )
    if len(phantoms) == 0:
        raise DatasetError(f"no slice of split '{args.split}' has a lesion covering {args.min_lesion_fraction} of it.")
    datasets: dict[str, Any] = {
        "phantom": {**evaluate(phantoms, tolerance, True, args.bootstrap, args.seed), **phantom_volumes}
    }
    medseg_root = Path(args.medseg_root)
    medseg: SliceSet | None = None
    if medseg_root.is_dir():
        with _timed(log, "medseg"):
            medseg = medseg_slices(parser, network, explainers, medseg_root, args.medseg_limit, args.seed, log)
        datasets["medseg"] = evaluate(medseg, tolerance, False, args.bootstrap, args.seed)
    elif args.medseg_root != str(DEFAULT_MEDSEG):
        raise DatasetError(f"--medseg-root {medseg_root} does not exist.")

    failures = [f for name, result in datasets.items() for f in check_references(result, name)]
    tables = [markdown_table(datasets["phantom"], f"Synthetic phantoms, split '{args.split}'", "a point in the lungs")]
    if "medseg" in datasets:
        tables.append(markdown_table(datasets["medseg"], "MedSeg real CT slices (single-slice volumes)",
                                     "a point in the lung-cropped slice"))
    output = Path(args.output)
    rows = [("phantom", phantoms, datasets["phantom"])]
    if medseg is not None and len(medseg):
        rows.append(("MedSeg", medseg, datasets["medseg"]))
    figure = draw_figure(output / f"{OUTPUT_NAME}.png", rows)
    if args.save_maps:
        _save_maps(output / f"{OUTPUT_NAME}_maps.npz", {"phantom": phantoms, **({"medseg": medseg} if medseg else {})})
    explain_settings = {
        "num_samples": handler.num_samples, "n_segments": handler.n_segments, "baseline": handler.baseline,
        "output": handler.output, "seed": handler.seed, "batch_size": handler.batch_size,
        "lime": {k: getattr(handler.explainers["lime"], k) for k in ("kernel_width", "distance", "alpha")},
        "kernel_shap": {"l1_reg": handler.explainers["kernel_shap"].l1_reg},
        "segmenter": {k: v for k, v in handler.segmenter.kwargs.items() if v is not None},
        "gradcam_layer": "trunk output (SliceScorer: network.trunk)",
    }
    summary: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(shlex.quote(a) for a in ["python", _script_path(), *args.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": machine_info(),
        "checkpoint": None
        if args.checkpoint is None
        else {"path": str(args.checkpoint), "sha256": sha256_of(args.checkpoint)},
        "bundle": {
            "path": str(args.bundle),
            "configs": [*BASE_CONFIGS, *(str(o) for o in args.overlay)],
            "overrides": overrides,
            "backbone": parser["backbone"],
            "image_size": image_size,
            "hu_window": parser.get_parsed_content("hu_window"),
            "lung_crop_margin": parser.get_parsed_content("lung_crop_margin"),
            "datalist": parser.get_parsed_content("datalist"),
        },
        "target_class": {"index": positive_class, "name": parser.get_parsed_content("class_names")[positive_class]},
        "settings": {
            "split": args.split,
            "slices_per_volume": slices_per_volume,
            "slice_selection": "top slice scores of the target class among slices with a lesion share >= "
            "min_lesion_fraction",
            "min_lesion_fraction": args.min_lesion_fraction,
            "pointing_tolerance_px": tolerance,
            "bootstrap_resamples": args.bootstrap,
            "seed": args.seed,
            "explainers": explain_settings,
            "medseg_root": str(medseg_root) if medseg is not None else None,
            "medseg_preprocessing": "PNG rotated 180 degrees to the RAS layout, 0..255 -> [0, 1], bundle ResizeSlicesd "
            "(image mode of the bundle; mask nearest); fed as a (1, 1, H, W, 1) volume; chance region: the whole slice",
        },
        "methods": METHODS,
        "references": REFERENCES,
        "datasets": datasets,
        "reference_check_failures": failures,
        "figure": figure.name,
        "tables": tables,
        "table": "\n\n".join(tables),
    }
    summary["runtime_s"] = time.perf_counter() - started
    save_json(summary, output, OUTPUT_NAME, suffix="")
    print(summary["table"])
    return summary


def _save_maps(path: Path, sets: Mapping[str, SliceSet]) -> Path:
    """Images, masks and every map of every slice set, (N, H, W) float32 / bool, for checks by hand."""
    arrays: dict[str, np.ndarray] = {}
    for name, slices in sets.items():
        arrays[f"{name}/image"] = slices.stacked(slices.images)[:, 0].numpy()
        arrays[f"{name}/lesion"] = slices.stacked(slices.lesions)[:, 0].numpy()
        arrays[f"{name}/region"] = slices.stacked(slices.regions)[:, 0].numpy()
        for key, values in slices.maps.items():
            arrays[f"{name}/{key}"] = slices.stacked(values)[:, 0].numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (configs/ inside)")
    add = parser.add_argument
    add("--overlay", type=Path, nargs="*", default=[], help="config files merged over inference.json + explain.json")
    add("--checkpoint", type=Path, default=None, help="trained state dict (model.pt)")
    add("--split", default="test", help="datalist split of the phantoms")
    add("--output", type=Path, required=True, help="folder for the JSON and the figure")
    add("--slices-per-volume", type=int, default=None, help="explained slices per volume (default: top_slices)")
    add("--min-lesion-fraction", type=float, default=0.01, help="lesion share a slice needs to be explained")
    add("--num-samples", type=int, default=None, help="LIME samples / SHAP coalitions (default: explain_num_samples)")
    add("--medseg-root", default=str(DEFAULT_MEDSEG), help="MedSeg folder (skipped when the default is absent)")
    add("--medseg-limit", type=int, default=None, help="use the first N MedSeg slices only")
    add("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    add("--seed", type=int, default=0, help="seed of the random map, the bootstrap and --quick's network")
    parser.add_argument("--device", default=None, help="torch device (default: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny config, untrained network allowed (the test's mode)")
    parser.add_argument("--save-maps", action="store_true", help="also save images, masks and maps (.npz)")
    parser.add_argument("--verbose", action="store_true", help="log progress to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.quick:
        args.bootstrap = min(args.bootstrap, 200)
        args.medseg_limit = 4 if args.medseg_limit is None else args.medseg_limit
    summary = run(args)
    for failure in summary["reference_check_failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    if summary["reference_check_failures"]:
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
