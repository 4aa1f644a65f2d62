#!/usr/bin/env python
"""Explanation gallery: every explainer on one synthetic COVID-19 CT slice with its known lesion mask (issue 3).

The script

1. generates synthetic chest CT volumes (:func:`medxai.data.synthetic.ct.generate_ct_case`), two per
   synthetic patient: the scan with COVID-19 (moderate or severe) and the same scan without disease
   (centres A, B and C dealt to the patients in turn), cuts them into axial slices in a lung window
   (-1000..200 HU -> [0, 1]) and splits the *patients* into training and held-out sets
   (:func:`medxai.data.splits.patient_split`);
2. trains a small 2D slice classifier, ``normal`` (0) vs ``covid19`` (1): a ResNet-like trunk of
   torchvision ``BasicBlock`` s with an explainable diagnosis module head (seed 000 eq. 1-3: a 1x1
   convolution to class maps, the class score their spatial mean), and reports held-out slice AUC and
   accuracy;
3. explains held-out COVID-19 lesion slices for the ``covid19`` class with every method through the one
   interface (:func:`medxai.explain.create_explainer`): CAM, EDM, Grad-CAM, Grad-CAM++, saliency,
   SmoothGrad, LRP, occlusion, LIME and Kernel SHAP, and scores each map against the lesion mask with the
   pointing game and the energy-based pointing game (:mod:`medxai.metrics`), next to the chance level
   (the lesion's share of the slice) and the runtime per slice;
4. draws the gallery figure (the featured slice with its lesion outline, one panel per method), writes a
   JSON of all numbers, prints the markdown table, and writes a plain-language sentence for the featured
   slice (:func:`medxai.explain.text.describe`, zones from the volume's lung mask).

Slice labels: a slice is ``covid19`` when it comes from a COVID-19 volume and at least
``min_lesion_fraction`` of its pixels are lesion; its ``normal`` counterpart is the same slice of the same
patient's disease-free volume (the phantom's anatomy and noise depend on the case seed only), so the
lesions are the only evidence of the class and neither the patient nor the height in the chest gives it
away. Slices of COVID-19 volumes with little or no lesion are left out (their slice label is ambiguous).

Usage::

    python scripts/explanation_gallery.py --output docs/images          # full run (a few minutes on CPU)
    python scripts/explanation_gallery.py --quick --output /tmp/gallery # tiny sizes, for the test

The full run fails (exit status 1) when the held-out slice AUC is not above 0.8; the quick run fails when
training did not reduce the loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import ScaleIntensityRange  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.metrics import pairwise_distances, roc_auc_score  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402

from medxai.data.splits import patient_split  # noqa: E402
from medxai.data.synthetic.ct import CTCase, generate_ct_case  # noqa: E402
from medxai.explain import create_explainer  # noqa: E402
from medxai.explain.lime import lime_kernel, sample_lime_masks  # noqa: E402
from medxai.explain.normalize import normalize  # noqa: E402
from medxai.explain.superpixels import SlicSuperpixels  # noqa: E402
from medxai.explain.text import describe  # noqa: E402
from medxai.explain.writers import render_overlay, save_json  # noqa: E402
from medxai.metrics import energy_pointing_game, pointing_game  # noqa: E402

SLICE_CLASSES: tuple[str, ...] = ("normal", "covid19")
COVID = 1
LUNG_WINDOW_HU: tuple[float, float] = (-1000.0, 200.0)
OUTPUT_NAME = "explanations_gallery"
AUC_GOAL = 0.8
NOISE_AUGMENTATION = 0.03
#: LIME's locality kernel here: seed 000's ``exp(-d^2 / sigma^2)`` with ``lime_image``'s cosine distance and
#: width 0.25 (see :func:`lime_kernel_check` for why not seed 000's sigma = 2 on the Euclidean distance)
LIME_KERNEL: dict[str, Any] = {"distance": "cosine", "kernel_width": 0.25}


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class GallerySettings:
    """Sizes of one run; :data:`FULL` for the documented run, :data:`QUICK` for the test."""

    shape: tuple[int, int, int]
    num_patients: int
    centres: tuple[str, ...]
    min_lesion_fraction: float
    test_fraction: float
    widths: tuple[int, int, int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    num_eval_slices: int
    superpixels: int
    perturbation_samples: int
    smoothgrad_samples: int
    occlusion_patch: int
    occlusion_stride: int
    forward_batch: int


FULL = GallerySettings(
    shape=(128, 128, 32),
    num_patients=24,
    centres=("A", "B", "C"),
    min_lesion_fraction=0.002,
    test_fraction=0.25,
    widths=(8, 16, 32, 64),
    epochs=15,
    batch_size=16,
    learning_rate=2e-3,
    num_eval_slices=16,
    superpixels=200,
    perturbation_samples=1000,
    smoothgrad_samples=25,
    occlusion_patch=16,
    occlusion_stride=8,
    forward_batch=64,
)

QUICK = GallerySettings(
    shape=(64, 64, 16),
    num_patients=4,
    centres=("A", "C"),
    min_lesion_fraction=0.002,
    test_fraction=0.25,
    widths=(4, 8, 8, 16),
    epochs=3,
    batch_size=8,
    learning_rate=3e-3,
    num_eval_slices=3,
    superpixels=30,
    perturbation_samples=48,
    smoothgrad_samples=4,
    occlusion_patch=8,
    occlusion_stride=8,
    forward_batch=64,
)


# ------------------------------------------------------------------------------------------------ network
def _block(in_channels: int, out_channels: int, stride: int) -> BasicBlock:
    """A torchvision ResNet ``BasicBlock`` with a 1x1 projection shortcut when the shape changes."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            torch.nn.BatchNorm2d(out_channels),
        )
    return BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)


class EDMSliceNet(torch.nn.Module):
    """Small ResNet-like slice classifier with an explainable diagnosis module head (seed 000 eq. 1-3).

    ``stem`` (3x3 conv, BN, ReLU) and three stride-2 residual stages (torchvision ``BasicBlock``) give
    features ``F`` (B, K, H/8, W/8); the head, a 1x1 convolution, turns them into class maps
    ``A_c = sum_k W_kc F^k + b_c`` (B, C, H/8, W/8), and the class score is their spatial mean (eq. 3).
    Because the mean and the 1x1 convolution commute, this is also a GAP + linear classifier, so CAM
    (``target_layer="layer3"``, ``fc_layer="head"``) and the EDM map differ only by the bias.

    Parameters
    ----------
    widths
        Channels of the stem and of the three stages.
    num_classes
        Number of classes C.
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), num_classes: int = 2) -> None:
        super().__init__()
        stem, w1, w2, w3 = (int(w) for w in widths)
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(1, stem, kernel_size=3, padding=1, bias=False),
            torch.nn.BatchNorm2d(stem),
            torch.nn.ReLU(inplace=True),
        )
        self.layer1 = _block(stem, w1, 2)
        self.layer2 = _block(w1, w2, 2)
        self.layer3 = _block(w2, w3, 2)
        self.head = torch.nn.Conv2d(w3, num_classes, kernel_size=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, K, H/8, W/8)."""
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def activation_map(self, x: torch.Tensor) -> torch.Tensor:
        """The EDM class maps (B, C, H/8, W/8) (seed 000 eq. 3), computed in every forward pass."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> logits (B, C): the spatial mean of the class maps."""
        return torch.flatten(self.pool(self.activation_map(x)), 1)


# ------------------------------------------------------------------------------------------------ dataset
@dataclass
class SliceSet:
    """Axial slices (in the stored (X, Y) orientation) and where they come from.

    Attributes
    ----------
    images
        (N, 1, X, Y) float32 in the lung window, [0, 1].
    labels
        (N,) int64, index into :data:`SLICE_CLASSES`.
    lesion_masks
        (N, 1, X, Y) bool.
    case_index, z
        (N,) the source volume (index into ``cases``) and the slice index.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lesion_masks: torch.Tensor
    case_index: np.ndarray
    z: np.ndarray

    def subset(self, keep: np.ndarray) -> SliceSet:
        index = torch.as_tensor(np.nonzero(keep)[0] if keep.dtype == bool else keep, dtype=torch.long)
        return SliceSet(
            self.images[index], self.labels[index], self.lesion_masks[index],
            self.case_index[index.numpy()], self.z[index.numpy()],
        )

    def __len__(self) -> int:
        return int(self.labels.numel())


def lung_window(hu: np.ndarray) -> np.ndarray:
    """Lung window: -1000..200 HU linearly to [0, 1], clipped (MONAI ``ScaleIntensityRange``)."""
    scale = ScaleIntensityRange(a_min=LUNG_WINDOW_HU[0], a_max=LUNG_WINDOW_HU[1], b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(hu), dtype=np.float32)


def generate_cases(settings: GallerySettings, seed: int) -> tuple[list[CTCase], list[dict[str, Any]]]:
    """Two volumes per synthetic patient: with COVID-19 (moderate and severe alternating) and without.

    The phantom's anatomy and image noise depend on the case seed only, so both volumes of a patient are the
    same scan except for the lesions: the lesions are the only evidence of the class. Centres are dealt to
    the patients in turn. Returns the volumes (COVID-19 at even, normal at odd indices) and one record per
    volume (``patient_id``, ``label``, ``case_index``, ``seed``, ``centre``, ``severity``) for the split.
    """
    seeds = np.random.SeedSequence([int(seed), 5]).generate_state(settings.num_patients, dtype=np.uint32)
    cases, records = [], []
    for k, case_seed in enumerate(int(s) for s in seeds):
        centre = settings.centres[k % len(settings.centres)]
        severity = ("moderate", "severe")[k % 2]
        for label, class_name in ((COVID, "covid19"), (0, "normal")):
            case = generate_ct_case(case_seed, class_name, severity, centre, settings.shape)
            records.append(
                {"patient_id": f"synthetic-ct-{k:04d}", "label": label, "case_index": len(cases), "seed": case_seed,
                 "centre": case.centre, "severity": case.severity}
            )
            cases.append(case)
    return cases, records


def slice_dataset(cases: Sequence[CTCase], settings: GallerySettings) -> SliceSet:
    """The lesion slices of each COVID-19 volume and the same slices of its patient's normal volume.

    A COVID-19 slice needs at least ``min_lesion_fraction`` of its pixels in the lesion mask; lesion-free
    slices of COVID-19 volumes are left out (their slice label is ambiguous). Both classes thus come from the
    same patients and the same heights in the chest.
    """
    plane = settings.shape[0] * settings.shape[1]
    chosen: list[tuple[int, int, int]] = []  # (case, z, label)
    for covid_index in range(0, len(cases), 2):
        area = (cases[covid_index].lesion_mask > 0).reshape(plane, -1).sum(0)
        lesion_z = [int(z) for z in np.nonzero(area >= settings.min_lesion_fraction * plane)[0]]
        chosen += [(covid_index, z, COVID) for z in lesion_z]
        chosen += [(covid_index + 1, z, 0) for z in lesion_z]
    images = np.stack([lung_window(cases[c].image[:, :, z]) for c, z, _ in chosen])[:, None]
    masks = np.stack([cases[c].lesion_mask[:, :, z] > 0 for c, z, _ in chosen])[:, None]
    return SliceSet(
        images=torch.from_numpy(images),
        labels=torch.tensor([lab for _, _, lab in chosen], dtype=torch.long),
        lesion_masks=torch.from_numpy(masks),
        case_index=np.array([c for c, _, _ in chosen]),
        z=np.array([z for _, z, _ in chosen]),
    )


# --------------------------------------------------------------------------------------------- training
def train(
    model: torch.nn.Module, data: SliceSet, settings: GallerySettings, seed: int, log: Callable[[str], None]
) -> list[float]:
    """Adam on cross-entropy, cosine learning-rate decay; returns the mean loss of each epoch.

    Augmentation per batch: random flips of both in-plane axes, a random multiple of 90 degrees in-plane
    rotation, and Gaussian noise of standard deviation :data:`NOISE_AUGMENTATION` (about 36 HU in the lung
    window), so the small network cannot memorise the few training patients' anatomy and noise.
    """
    generator = torch.Generator().manual_seed(int(seed))
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    losses = []
    model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(data), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            x, y = data.images[index], data.labels[index]
            flips = torch.rand(2, generator=generator) < 0.5
            dims = [d for d, f in zip((2, 3), flips.tolist()) if f]
            if dims:
                x = torch.flip(x, dims)
            x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=generator)), dims=(2, 3))
            x = x + NOISE_AUGMENTATION * torch.randn(x.shape, generator=generator)
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        schedule.step()
        losses.append(total / count)
        log(f"epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def covid_probability(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Softmax probability of ``covid19`` (N,) in eval mode."""
    model.eval()
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return torch.cat([model(chunk).softmax(1)[:, COVID] for chunk in chunks])


# ------------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """One explainer of the gallery: registry name, display name, constructor arguments, how it is shown.

    ``display`` names the normalisation of :mod:`medxai.explain.normalize` used for the figure only (the
    scores use the raw maps): ``"relu_max"`` for the CAM family, ``"percentile_clip"`` (99th percentile of
    |value|, SmoothGrad's display rule) for gradient and signed maps; ``signed`` maps are drawn in a
    diverging colour map (red positive, blue negative).
    """

    key: str
    title: str
    registry_name: str
    kwargs: dict[str, Any]
    signed: bool
    display: str


def gallery_methods(model: EDMSliceNet, settings: GallerySettings, seed: int) -> list[Method]:
    """The ten methods, in the order of the figure, with the settings used here."""
    superpixels = SlicSuperpixels(n_segments=settings.superpixels)
    perturbation = dict(
        segmenter=superpixels, baseline=0.0, num_samples=settings.perturbation_samples,
        batch_size=settings.forward_batch, seed=seed,
    )
    return [
        Method("cam", "CAM", "cam", dict(target_layer="layer3", fc_layer="head"), False, "relu_max"),
        Method("edm", "EDM", "edm", dict(activation_map_fn=model.activation_map), False, "relu_max"),
        Method("gradcam", "Grad-CAM", "gradcam", dict(target_layer="layer3"), False, "relu_max"),
        Method("gradcam++", "Grad-CAM++", "gradcam++", dict(target_layer="layer3"), False, "relu_max"),
        Method("saliency", "Saliency", "saliency", {}, False, "percentile_clip"),
        Method(
            "smoothgrad", "SmoothGrad", "smoothgrad",
            dict(n_samples=settings.smoothgrad_samples, noise_level=0.15, batch_size=settings.forward_batch, seed=seed),
            False, "percentile_clip",
        ),
        Method("lrp", "LRP (epsilon-plus-flat)", "lrp", dict(composite="epsilon_plus_flat"), True, "percentile_clip"),
        Method(
            "occlusion", "Occlusion", "occlusion",
            dict(patch_size=settings.occlusion_patch, stride=settings.occlusion_stride, baseline=0.0,
                 batch_size=settings.forward_batch),
            True, "percentile_clip",
        ),
        Method("lime", "LIME", "lime", dict(perturbation, **LIME_KERNEL), True, "percentile_clip"),
        Method("kernel_shap", "Kernel SHAP", "kernel_shap", dict(perturbation), True, "percentile_clip"),
    ]


def explain_all(
    model: torch.nn.Module, methods: Sequence[Method], x: torch.Tensor, target: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Run every method on the batch ``x`` (N, 1, H, W) for ``target``; maps (N, 1, H, W) and seconds per slice."""
    results = {}
    for method in methods:
        explainer = create_explainer(method.registry_name, model, **method.kwargs)
        wall, cpu = time.perf_counter(), time.process_time()
        maps = explainer(x, target)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[method.key] = {
            "maps": maps.detach(), "seconds_per_slice": wall / len(x), "cpu_seconds_per_slice": cpu / len(x)
        }
        log(f"{method.title}: {wall / len(x):.3f} s per slice")
    return results


def lime_kernel_check(
    model: torch.nn.Module, x: torch.Tensor, settings: GallerySettings, seed: int
) -> dict[str, Any]:
    """Why the gallery's LIME does not use seed 000's kernel width literally, measured on one slice ``x``.

    With sigma = 2 on the Euclidean distance between a sample's superpixel mask and the all-on mask (``d^2``
    = number of superpixels switched off), a typical sample with half of M superpixels off weighs
    ``exp(-M / 8)``, about 1e-8 for M = 150, against 1 for the unperturbed image: the weighted Lasso then sees
    one sample and returns all-zero weights. Returns the median kernel weight of the perturbed samples under
    both kernels and the number of non-zero weights of LIME fitted with seed 000's kernel (sigma = 2,
    Euclidean) and with :data:`LIME_KERNEL`.
    """
    segmenter = SlicSuperpixels(n_segments=settings.superpixels)
    common = dict(
        segmenter=segmenter, baseline=0.0, num_samples=settings.perturbation_samples,
        batch_size=settings.forward_batch, seed=seed,
    )
    result: dict[str, Any] = {}
    kernels = {"seed000_sigma2_euclidean": {"distance": "euclidean", "kernel_width": 2.0}, "used": LIME_KERNEL}
    for name, kernel in kernels.items():
        explainer = create_explainer("lime", model, **common, **kernel)
        explainer(x, COVID)
        weights = explainer.last_explanation.weights[0]
        masks = sample_lime_masks(settings.perturbation_samples, int(weights.numel()), seed)
        distances = pairwise_distances(masks, np.ones((1, masks.shape[1])), metric=kernel["distance"]).ravel()
        result[name] = {
            "num_superpixels": int(weights.numel()),
            "nonzero_weights": int((weights != 0).sum()),
            "median_sample_weight": float(np.median(lime_kernel(distances[1:], kernel["kernel_width"]))),
            **kernel,
        }
    return result


def pointing_tolerance(size: int) -> float:
    """Zhang et al.'s pointing-game tolerance, 15 pixels on 224-pixel images, scaled to ``size`` pixels."""
    return 15.0 * size / 224.0


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> dict[str, np.ndarray]:
    """Pointing game hits (strict: the maximum inside the lesion; tolerant: within ``tolerance`` pixels of
    it) and energy share per slice.

    A map without positive mass (energy undefined, NaN in :func:`energy_pointing_game`) puts no energy in
    the lesion: it scores 0 and is flagged in ``energy_defined``.
    """
    energy = energy_pointing_game(maps, masks).double().numpy()
    return {
        "hit": pointing_game(maps, masks, tolerance=0.0).double().numpy(),
        "hit_tolerant": pointing_game(maps, masks, tolerance=tolerance).double().numpy(),
        "energy": np.nan_to_num(energy, nan=0.0),
        "energy_defined": ~np.isnan(energy),
    }


def chance_levels(lesions: np.ndarray, lungs: np.ndarray, tolerance: float) -> dict[str, np.ndarray]:
    """Scores of maps that know nothing, per slice, for lesion masks and lung masks (N, H, W) bool.

    A map uniform over the slice has energy share = the lesion's share of the slice, and its maximum (a
    random pixel) hits with that probability; within ``tolerance`` it hits with the share of pixels that
    close to the lesion. The same for a map uniform over the lungs, with shares of the lung area.
    """
    near = np.stack([ndimage.distance_transform_edt(~lesion) <= tolerance + 1e-9 for lesion in lesions])
    per_slice = lambda a: a.reshape(len(a), -1).sum(1).astype(np.float64)  # noqa: E731
    pixels, lung_pixels = lesions[0].size, per_slice(lungs)
    return {
        "slice": per_slice(lesions) / pixels,
        "slice_tolerant": per_slice(near) / pixels,
        "lung": per_slice(lesions & lungs) / lung_pixels,
        "lung_tolerant": per_slice(near & lungs) / lung_pixels,
    }


# ------------------------------------------------------------------------------------------------ figure
def radiological(array: np.ndarray) -> np.ndarray:
    """An axial (X, Y) RAS slice in radiological display: anterior up, the patient's right on the left."""
    return np.ascontiguousarray(np.asarray(array).T[::-1, ::-1])


def display_map(values: np.ndarray, method: Method) -> np.ndarray:
    """The map as drawn, normalised by the method's named function: in [-1, 1] (signed) or [0, 1]."""
    shown = normalize(values[None, None], method.display)[0, 0]
    return shown if method.signed else np.clip(shown, 0.0, 1.0)


def peak_marker(values: np.ndarray) -> tuple[float, float]:
    """(row, column) of the map's maximum; the centre of the maximal pixels when several share it."""
    rows, columns = np.nonzero(values == values.max())
    return float(rows.mean()), float(columns.mean())


def _signed_overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Grayscale image with a diverging (blue negative, red positive) map blended where |map| is large."""
    base = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    colour = matplotlib.colormaps["bwr"]((values + 1.0) / 2.0)[..., :3]
    weight = alpha * np.abs(values)[..., None]
    return np.clip((1.0 - weight) * base + weight * colour, 0.0, 1.0)


def draw_gallery(
    path: Path,
    image: np.ndarray,
    lesion: np.ndarray,
    maps: dict[str, np.ndarray],
    methods: Sequence[Method],
    scores: dict[str, dict[str, float]],
    caption: dict[str, Any],
) -> Path:
    """The featured slice with its lesion outline, then one overlay per method; scores in the titles."""
    shown_image, shown_lesion = radiological(image), radiological(lesion)
    columns = 4
    rows = int(np.ceil((len(methods) + 1) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.25 * rows))
    axes = axes.ravel()
    axes[0].imshow(shown_image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0].contour(shown_lesion.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(
        f"input, lesion outlined\nP(COVID-19) = {caption['probability']:.2f}, "
        f"lesion {100 * caption['lesion_fraction']:.1f} % of slice",
        fontsize=8,
    )
    for ax, method in zip(axes[1:], methods):
        values = radiological(maps[method.key])
        shown = display_map(values, method)
        if method.signed:
            rgb = _signed_overlay(shown_image, shown)
        else:
            rgb = render_overlay(
                shown_image, shown, cmap="jet", alpha=0.6, map_range=(0.0, 1.0), image_range=(0.0, 1.0)
            )
        ax.imshow(rgb, interpolation="nearest")
        ax.contour(shown_lesion.astype(float), levels=[0.5], colors="lime", linewidths=0.6)
        row, column = peak_marker(values)
        ax.plot(column, row, marker="x", color="white", markersize=7, markeredgewidth=2)
        ax.plot(column, row, marker="x", color="black", markersize=5, markeredgewidth=1)
        score = scores[method.key]
        verdict = _verdict(score)
        ax.set_title(f"{method.title}\npointing game {verdict}, energy {score['energy']:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    for ax in axes[len(methods) + 1 :]:
        ax.text(
            0.0, 0.5,
            "green: lesion mask\nx: map maximum (pointing game)\nred/blue: positive/negative\n"
            f"hit: maximum in the lesion\nnear: within {caption['tolerance']:.1f} px of it\n"
            f"chance level: {caption['lesion_fraction']:.3f}\n(lesion share of the slice)",
            fontsize=8, va="center",
        )
    fig.suptitle(caption["title"], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _verdict(score: dict[str, float]) -> str:
    """'hit' (maximum in the lesion), 'near' (within the tolerance only) or 'miss'."""
    if score["hit"] == 1.0:
        return "hit"
    return "near" if score["hit_tolerant"] == 1.0 else "miss"


# ------------------------------------------------------------------------------------------------- report
def markdown_table(summary: dict[str, Any]) -> str:
    """The gallery table: featured slice and held-out mean per method, chance levels, runtime."""
    n = summary["evaluation"]["num_slices"]
    tolerance = summary["evaluation"]["pointing_tolerance_px"]
    lines = [
        f"| method | featured slice: pointing game | featured slice: energy share | {n} slices: hit rate "
        f"| {n} slices: hit rate within {tolerance:.1f} px | {n} slices: mean energy share | seconds per slice |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["methods"]:
        lines.append(
            f"| {row['title']} | {_verdict(row['featured'])} | {row['featured']['energy']:.3f} | {row['hit_rate']:.2f} "
            f"| {row['hit_rate_tolerant']:.2f} | {row['mean_energy']:.3f} | {row['seconds_per_slice']:.3f} |"
        )
    for where in ("slice", "lung"):
        chance = summary["chance"][where]
        lines.append(
            f"| chance: map uniform over the {where} | - | {chance['featured']:.3f} | {chance['hit_rate']:.3f} "
            f"| {chance['hit_rate_tolerant']:.3f} | {chance['mean_energy']:.3f} | - |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": False,
        "device": "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def select_evaluation(held_out: SliceSet, count: int) -> tuple[np.ndarray, int]:
    """Held-out COVID-19 lesion slices to explain: ``count`` of them evenly spaced in (volume, slice)
    order, and the featured one (largest lesion area among them; the first on ties).

    Returns indices into ``held_out`` and the featured slice's position among them.
    """
    covid = np.nonzero(held_out.labels.numpy() == COVID)[0]
    if covid.size == 0:
        raise RuntimeError("the held-out patients have no COVID-19 lesion slice to explain; use more cases.")
    order = covid[np.lexsort((held_out.z[covid], held_out.case_index[covid]))]
    picks = order[np.unique(np.round(np.linspace(0, len(order) - 1, min(count, len(order)))).astype(int))]
    areas = held_out.lesion_masks[torch.as_tensor(picks)].flatten(1).sum(1).numpy()
    return picks, int(np.argmax(areas))


def sentence_for(case: CTCase, z: int, slice_map: np.ndarray, probability: float, method: str) -> str:
    """:func:`describe` of a slice map placed into its volume, so lung zones come from the whole lung mask."""
    volume = np.zeros(case.lung_mask.shape, dtype=np.float64)
    volume[:, :, z] = slice_map
    explanation = describe(volume, case.lung_mask, "COVID-19", probability, method, mask_kwargs={"affine": case.affine})
    return explanation.sentence


@dataclass
class TrainedModel:
    """The trained classifier, its data and its held-out results."""

    model: EDMSliceNet
    cases: list[CTCase]
    records: list[dict[str, Any]]
    training: SliceSet
    held_out: SliceSet
    volumes: dict[str, int]
    losses: list[float]
    train_seconds: float
    probabilities: np.ndarray
    auc: float
    accuracy: float


def prepare_and_train(settings: GallerySettings, seed: int, log: Callable[[str], None]) -> TrainedModel:
    """Generate the volumes, split the patients, cut the slices, train, and score the held-out slices."""
    cases, records = generate_cases(settings, seed)
    splits = patient_split(
        records, {"training": 1.0 - settings.test_fraction, "test": settings.test_fraction}, seed=seed
    )
    data = slice_dataset(cases, settings)
    is_test = np.isin(data.case_index, sorted(r["case_index"] for r in splits["test"]))
    training, held_out = data.subset(~is_test), data.subset(is_test)
    log(f"{len(training)} training slices, {len(held_out)} held-out slices")

    torch.manual_seed(seed)
    model = EDMSliceNet(settings.widths, num_classes=len(SLICE_CLASSES))
    started = time.perf_counter()
    losses = train(model, training, settings, seed, log)
    train_seconds = time.perf_counter() - started

    probabilities = covid_probability(model, held_out.images).numpy()
    truth = held_out.labels.numpy() == COVID
    auc = float(roc_auc_score(truth, probabilities))
    accuracy = float(np.mean((probabilities >= 0.5) == truth))
    log(f"held-out slice AUC {auc:.3f}, accuracy {accuracy:.3f}")
    volumes = {name: len(members) for name, members in splits.items()}
    return TrainedModel(
        model, cases, records, training, held_out, volumes, losses, train_seconds, probabilities, auc, accuracy
    )


def _slice_record(trained: TrainedModel, i: int) -> dict[str, Any]:
    """Where held-out slice ``i`` comes from: enough to regenerate it with ``generate_ct_case``."""
    record = trained.records[trained.held_out.case_index[i]]
    return {
        "patient": record["patient_id"],
        "case_seed": record["seed"],
        "class_name": SLICE_CLASSES[int(trained.held_out.labels[i])],
        "severity": record["severity"],
        "centre": record["centre"],
        "slice_z": int(trained.held_out.z[i]),
        "covid_probability": float(trained.probabilities[i]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole gallery; returns the summary that is saved as JSON."""
    settings = QUICK if args.quick else FULL
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if args.verbose else (lambda message: None)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    trained = prepare_and_train(settings, args.seed, log)
    held_out = trained.held_out

    picks, featured = select_evaluation(held_out, settings.num_eval_slices)
    x = held_out.images[torch.as_tensor(picks)]
    masks = held_out.lesion_masks[torch.as_tensor(picks)]
    methods = gallery_methods(trained.model, settings, args.seed)
    explained = explain_all(trained.model, methods, x, COVID, log)

    tolerance = pointing_tolerance(settings.shape[0])
    lesions = masks[:, 0].numpy()
    lungs = np.stack([trained.cases[held_out.case_index[i]].lung_mask[:, :, held_out.z[i]] > 0 for i in picks])
    chance = chance_levels(lesions, lungs, tolerance)

    rows, featured_scores = [], {}
    for method in methods:
        scores = localisation_scores(explained[method.key]["maps"], masks, tolerance)
        featured_scores[method.key] = {
            name: float(scores[name][featured]) for name in ("hit", "hit_tolerant", "energy")
        }
        rows.append(
            {
                "key": method.key,
                "title": method.title,
                "registry_name": method.registry_name,
                "featured": featured_scores[method.key] | {"energy_defined": bool(scores["energy_defined"][featured])},
                "hits": scores["hit"].tolist(),
                "hits_tolerant": scores["hit_tolerant"].tolist(),
                "energies": scores["energy"].tolist(),
                "undefined_energy": int((~scores["energy_defined"]).sum()),
                "hit_rate": float(scores["hit"].mean()),
                "hit_rate_tolerant": float(scores["hit_tolerant"].mean()),
                "mean_energy": float(scores["energy"].mean()),
                "seconds_per_slice": explained[method.key]["seconds_per_slice"],
                "cpu_seconds_per_slice": explained[method.key]["cpu_seconds_per_slice"],
            }
        )

    index = int(picks[featured])
    case = trained.cases[held_out.case_index[index]]
    z = int(held_out.z[index])
    probability = float(trained.probabilities[index])
    featured_maps = {m.key: explained[m.key]["maps"][featured, 0].numpy() for m in methods}
    sentences = {key: sentence_for(case, z, featured_maps[key], probability, key) for key in ("edm", "gradcam")}
    lesion_map = lesions[featured].astype(np.float64)
    sentences["lesion_mask"] = sentence_for(case, z, lesion_map, probability, "the lesion mask")
    lime_check = lime_kernel_check(trained.model, x[featured : featured + 1], settings, args.seed)
    log(f"LIME kernel check: {lime_check}")

    summary: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python scripts/explanation_gallery.py", *args.argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "seed": args.seed,
        "settings": dataclasses.asdict(settings),
        "classes": list(SLICE_CLASSES),
        "target_class": SLICE_CLASSES[COVID],
        "data": {
            "volumes": trained.volumes,
            "training_slices": {c: int((trained.training.labels == k).sum()) for k, c in enumerate(SLICE_CLASSES)},
            "held_out_slices": {c: int((held_out.labels == k).sum()) for k, c in enumerate(SLICE_CLASSES)},
        },
        "training": {"loss_per_epoch": trained.losses, "seconds": trained.train_seconds},
        "held_out": {"auc": trained.auc, "accuracy": trained.accuracy, "num_slices": len(held_out)},
        "evaluation": {
            "num_slices": len(picks),
            "pointing_tolerance_px": tolerance,
            "slices": [
                _slice_record(trained, int(i)) | {"lesion_fraction": float(f)} for i, f in zip(picks, chance["slice"])
            ],
            "featured_index": featured,
        },
        "featured": _slice_record(trained, index)
        | {
            "shape": list(settings.shape),
            "lesion_pixels": int(lesions[featured].sum()),
            "lesion_fraction": float(chance["slice"][featured]),
            "lesion_fraction_of_lung": float(chance["lung"][featured]),
            "scores": featured_scores,
        },
        "chance": {
            where: {
                "featured": float(chance[where][featured]),
                "mean_energy": float(chance[where].mean()),
                "hit_rate": float(chance[where].mean()),
                "hit_rate_tolerant": float(chance[f"{where}_tolerant"].mean()),
                "per_slice": chance[where].tolist(),
            }
            for where in ("slice", "lung")
        },
        "methods": rows,
        "sentences": sentences,
        "lime_kernel_check": lime_check,
    }

    output = Path(args.output)
    caption = {
        "probability": probability,
        "lesion_fraction": float(chance["slice"][featured]),
        "tolerance": tolerance,
        "title": (
            f"Held-out synthetic COVID-19 CT slice ({case.severity}, centre {case.centre}, slice {z}), target class "
            f"covid19; slice classifier AUC {trained.auc:.2f} on {len(held_out)} held-out slices"
        ),
    }
    image = held_out.images[index, 0].numpy()
    draw_gallery(
        output / f"{OUTPUT_NAME}.png", image, lesions[featured], featured_maps, methods, featured_scores, caption
    )
    if args.save_maps:
        np.savez_compressed(
            output / f"{OUTPUT_NAME}_maps.npz", image=image, lesion_mask=lesions[featured], **featured_maps
        )
    summary["total_seconds"] = time.perf_counter() - started
    summary["table"] = markdown_table(summary)
    save_json(summary, output, OUTPUT_NAME, suffix="")
    print(summary["table"])
    print()
    print(f"held-out slice AUC {trained.auc:.3f}, accuracy {trained.accuracy:.3f} ({len(held_out)} slices)")
    for key, sentence in sentences.items():
        print(f"{key}: {sentence}")
    return summary


def check_goals(summary: dict[str, Any]) -> list[str]:
    """Failures of the run's own checks: AUC above 0.8 (full run), loss reduced by training (quick run)."""
    failures = []
    losses = summary["training"]["loss_per_epoch"]
    if not losses[-1] < losses[0]:
        failures.append(f"training did not reduce the loss: {losses[0]:.4f} -> {losses[-1]:.4f}.")
    if summary["mode"] == "full" and not summary["held_out"]["auc"] > AUC_GOAL:
        failures.append(f"held-out slice AUC {summary['held_out']['auc']:.3f} is not above {AUC_GOAL}.")
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test's mode)")
    parser.add_argument("--output", type=Path, default=Path("docs/images"), help="folder for the PNG and the JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, split, training and explainers")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--save-maps", action="store_true", help="also save the featured slice's maps (.npz)")
    parser.add_argument("--verbose", action="store_true", help="log progress to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    summary = run(args)
    failures = check_goals(summary)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
