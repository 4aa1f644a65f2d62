"""Superpixels (2D) and supervoxels (3D), and the superpixel perturbation shared by LIME and Kernel SHAP.

Seed 000 (sec. 3.3-3.4) explains a CT slice through superpixels: an interpretable input ``z`` in {0, 1}^M
switches superpixel ``i`` on (original voxels) or off (replaced by a baseline), the model scores each
perturbed image, and a linear surrogate ``g(z) = sum_i w_i z_i`` is fitted (LIME, eq. 7; Kernel SHAP,
eq. 8). This module holds what both methods share:

- :class:`SlicSuperpixels`: SLIC (Achanta et al., TPAMI 2012) via :func:`skimage.segmentation.slic`,
  per sample, grayscale with ``channel_axis=None``, supervoxels for 3D volumes (with voxel ``spacing``);
- :func:`baseline_image`: what an "off" superpixel shows (its mean as ``lime_image`` does, a blurred image,
  or a constant);
- :func:`compose`: the perturbed images of a chunk of masks, built on the model's device by indexing, so N
  perturbed copies never sit in memory together and nothing goes through numpy per sample;
- :class:`SuperpixelExplanation` and :class:`SuperpixelExplainer`, the common base of
  :class:`medxai.explain.lime.LIME` and :class:`medxai.explain.kernel_shap.KernelSHAP`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from skimage.segmentation import slic

from medxai.errors import InputError
from medxai.explain.base import Explainer, check_batch, check_finite, resolve_targets
from medxai.explain.occlusion import OUTPUT_KINDS, OutputKind, target_scores
from medxai.explain.perturbation import batched_forward, model_device

__all__ = [
    "SlicSuperpixels",
    "slic_superpixels",
    "relabel_segments",
    "baseline_image",
    "compose",
    "paint",
    "SuperpixelExplanation",
    "SuperpixelExplainer",
    "SurrogateFit",
]

Segmenter = Callable[[torch.Tensor], torch.Tensor]


def slic_superpixels(
    image: np.ndarray | torch.Tensor,
    n_segments: int = 50,
    compactness: float = 0.1,
    sigma: float = 1.0,
    spacing: Sequence[float] | None = None,
    max_num_iter: int = 10,
    enforce_connectivity: bool = True,
) -> np.ndarray:
    """SLIC superpixels (2D) or supervoxels (3D) of one channel-first image.

    The image is min-max scaled to [0, 1] (per image, all channels together) before SLIC so that
    ``compactness`` means the same for Hounsfield units and [0, 1] intensities; the scaling only steers the
    segmentation. One channel runs with ``channel_axis=None``; several channels are features of one
    voxel (``channel_axis=0``, no Lab conversion: medical channels are not RGB).

    Parameters
    ----------
    image
        (C, H, W) or (C, D, H, W).
    n_segments, compactness, sigma, max_num_iter, enforce_connectivity
        As in :func:`skimage.segmentation.slic` (``sigma``: Gaussian pre-smoothing in voxels).
    spacing
        Voxel spacing per spatial axis (3D CT with thick slices), passed to SLIC.

    Returns
    -------
    np.ndarray
        Labels (*spatial), int64, consecutive from 0.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim not in (3, 4):
        raise InputError(f"slic_superpixels expects (C, H, W) or (C, D, H, W), got shape {array.shape}.")
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    single = scaled.shape[0] == 1
    labels = slic(
        scaled[0] if single else scaled,
        n_segments=n_segments,
        compactness=compactness,
        sigma=sigma,
        spacing=None if spacing is None else np.asarray(spacing, dtype=np.float64),
        max_num_iter=max_num_iter,
        enforce_connectivity=enforce_connectivity,
        convert2lab=False,
        start_label=0,
        channel_axis=None if single else 0,
    )
    return relabel_segments(torch.from_numpy(np.asarray(labels, dtype=np.int64))).numpy()


def relabel_segments(segments: torch.Tensor) -> torch.Tensor:
    """Map the labels of one segmentation to ``0 .. M-1`` keeping their order (a no-op for such labels)."""
    _, inverse = torch.unique(segments, return_inverse=True)
    return inverse.long()


class SlicSuperpixels:
    """Callable segmenter for a batch: (B, C, *spatial) -> labels (B, *spatial), int64, on x's device.

    Each sample is segmented on its own by :func:`slic_superpixels` (keyword arguments as there); labels
    run from 0 to M_b - 1 for sample b.
    """

    def __init__(
        self,
        n_segments: int = 50,
        compactness: float = 0.1,
        sigma: float = 1.0,
        spacing: Sequence[float] | None = None,
        max_num_iter: int = 10,
        enforce_connectivity: bool = True,
    ) -> None:
        if n_segments < 1:
            raise InputError(f"n_segments must be >= 1, got {n_segments}.")
        self.kwargs = dict(
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            spacing=spacing,
            max_num_iter=max_num_iter,
            enforce_connectivity=enforce_connectivity,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x)
        labels = [slic_superpixels(sample, **self.kwargs) for sample in x.detach().cpu()]
        return torch.from_numpy(np.stack(labels)).to(x.device)


def baseline_image(
    image: torch.Tensor, segments: torch.Tensor, kind: float | str = "mean", blur_sigma: float = 5.0
) -> torch.Tensor:
    """What an "off" superpixel shows.

    Parameters
    ----------
    image
        (C, *spatial).
    segments
        Labels (*spatial), 0 .. M-1.
    kind
        ``"mean"``: each superpixel filled with its own per-channel mean (``lime_image``'s
        ``hide_color=None``); ``"blur"``: the image smoothed by a Gaussian of ``blur_sigma`` voxels
        (replicate padding, MONAI's separable filter); a number: that constant (0 in ``"zero"``).

    Returns
    -------
    torch.Tensor
        (C, *spatial), like ``image``.
    """
    if kind == "mean":
        num = int(segments.max()) + 1
        flat = segments.reshape(-1)
        sums = torch.zeros(image.shape[0], num, dtype=torch.float64, device=image.device)
        sums.index_add_(1, flat, image.reshape(image.shape[0], -1).double())
        counts = torch.bincount(flat, minlength=num).clamp(min=1)
        return (sums / counts)[:, flat].reshape(image.shape).to(image.dtype)
    if kind == "blur":
        if blur_sigma <= 0:
            raise InputError(f"blur_sigma must be > 0, got {blur_sigma}.")
        kernel = gaussian_1d(torch.tensor(float(blur_sigma)), truncated=4.0, normalize=True)
        kernel = kernel.to(image.device, image.dtype)
        spatial_dims = image.ndim - 1
        return separable_filtering(image[None], [kernel] * spatial_dims, mode="replicate")[0]
    if kind == "zero":
        return torch.zeros_like(image)
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return torch.full_like(image, float(kind))
    raise InputError(f"baseline must be 'mean', 'blur', 'zero' or a number, got {kind!r}.")


def compose(image: torch.Tensor, baseline: torch.Tensor, segments: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Perturbed images: superpixel i shows ``image`` where ``masks[n, i]`` is on, else ``baseline``.

    Parameters
    ----------
    image, baseline
        (C, *spatial), on one device.
    segments
        Labels (*spatial), 0 .. M-1, same device.
    masks
        (n, M) bool, same device.

    Returns
    -------
    torch.Tensor
        (n, C, *spatial).
    """
    keep = masks[:, segments]  # (n, *spatial)
    return torch.where(keep.unsqueeze(1), image.unsqueeze(0), baseline.unsqueeze(0))


def paint(weights: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """A map (*spatial) holding each superpixel's weight (not divided by its size)."""
    return weights.to(segments.device)[segments]


@dataclass
class SuperpixelExplanation:
    """A superpixel explanation of a batch.

    Attributes
    ----------
    maps
        (B, 1, *spatial): each voxel carries its superpixel's weight; on the input's device, its dtype.
    segments
        (B, *spatial) int64 labels, 0 .. M_b - 1 for sample b.
    weights
        Per sample, the weights (M_b,) float64 on the CPU: weight i belongs to label i.
    intercepts
        (B,) float64: LIME's surrogate intercept; for Kernel SHAP the base value f(all superpixels off).
    model_outputs
        (B,) float64: the explained score f(x) of the target class.
    targets
        (B,) int64: the explained classes.
    fit_scores
        (B,) float64 weighted R^2 of LIME's surrogate on its samples; ``None`` for Kernel SHAP.
    """

    maps: torch.Tensor
    segments: torch.Tensor
    weights: list[torch.Tensor]
    intercepts: torch.Tensor
    model_outputs: torch.Tensor
    targets: torch.Tensor
    fit_scores: torch.Tensor | None = None

    def ranking(self, index: int = 0) -> torch.Tensor:
        """Superpixel labels of sample ``index``, most positive weight first."""
        return torch.argsort(self.weights[index], descending=True, stable=True)


@dataclass
class SurrogateFit:
    """One sample's surrogate: weights (M,), intercept (LIME) or base value (SHAP), weighted R^2 (LIME)."""

    weights: np.ndarray
    intercept: float
    fit_score: float | None = None


class SuperpixelExplainer(Explainer):
    """Base of the superpixel surrogate explainers (LIME, Kernel SHAP).

    ``explainer(x, target)`` returns the maps (B, 1, *spatial) and keeps the full result in
    ``explainer.last_explanation``; ``explainer.explain_superpixels(x, target, segments=None)`` returns the
    :class:`SuperpixelExplanation` directly. Each sample's perturbations are drawn from ``seed`` alone, so a
    sample's explanation is the same alone or in a batch, and the same seed gives identical results.

    Parameters
    ----------
    model
        Maps (N, C, *spatial) to logits (N, K).
    segmenter
        Callable (B, C, *spatial) -> labels (B, *spatial); default :class:`SlicSuperpixels` ().
    baseline
        What an off superpixel shows: ``"mean"`` (default, as ``lime_image``), ``"blur"``, ``"zero"`` or a
        number; see :func:`baseline_image`.
    blur_sigma
        Gaussian sigma in voxels for ``baseline="blur"``.
    num_samples
        Perturbations per explanation.
    output
        ``"probability"`` (softmax; sigmoid for one logit) or ``"logit"``: the score that is explained.
    batch_size
        Perturbed images per forward pass on the model's device.
    seed
        Seed of the perturbation sampling.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        segmenter: Segmenter | None = None,
        baseline: float | str = "mean",
        blur_sigma: float = 5.0,
        num_samples: int = 1000,
        output: OutputKind = "probability",
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        if output not in OUTPUT_KINDS:
            raise InputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}.")
        if num_samples < 2:
            raise InputError(f"num_samples must be >= 2, got {num_samples}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        if isinstance(baseline, str) and baseline not in ("mean", "blur", "zero"):
            raise InputError(f"baseline must be 'mean', 'blur', 'zero' or a number, got {baseline!r}.")
        self.segmenter = segmenter if segmenter is not None else SlicSuperpixels()
        self.baseline = baseline
        self.blur_sigma = blur_sigma
        self.num_samples = num_samples
        self.output = output
        self.batch_size = batch_size
        self.seed = seed
        self.last_explanation: SuperpixelExplanation | None = None

    def attribute(
        self,
        x: torch.Tensor,
        target: int | torch.Tensor | list[int] | None,
        segments: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Maps (B, 1, *spatial); the full result goes to ``self.last_explanation``."""
        self.last_explanation = self.explain_superpixels(x, target, segments=segments)
        return self.last_explanation.maps

    def explain_superpixels(
        self,
        x: torch.Tensor,
        target: int | torch.Tensor | list[int] | None = None,
        segments: torch.Tensor | None = None,
    ) -> SuperpixelExplanation:
        """Explain ``x`` (B, C, *spatial) for ``target`` over superpixels.

        Parameters
        ----------
        segments
            Optional labels (B, *spatial) to use instead of the segmenter's; relabelled to 0 .. M_b - 1 in
            the order of their values.
        """
        check_batch(x)
        device = model_device(self.model, x.device)
        xd = x.detach().to(device)
        batch, spatial = xd.shape[0], tuple(xd.shape[2:])
        if segments is None:
            segments = self.segmenter(x)
        if tuple(segments.shape) != (batch, *spatial):
            raise InputError(
                f"segments must have shape {(batch, *spatial)} for x {tuple(x.shape)}, got {tuple(segments.shape)}."
            )
        segments = torch.stack([relabel_segments(s) for s in segments.to(device)])

        with torch.no_grad():
            logits = self.model(xd)
        check_finite(logits, xd, f"{type(self).__name__}: the model's outputs")
        targets = resolve_targets(target, batch, logits)
        outputs = target_scores(logits, targets, self.output).double().cpu()

        fits: list[SurrogateFit] = []
        for b in range(batch):
            image, labels = xd[b], segments[b]
            filled = baseline_image(image, labels, self.baseline, self.blur_sigma)
            t = targets[b].to(device)

            def score(masks: torch.Tensor, image=image, filled=filled, labels=labels, t=t) -> torch.Tensor:
                """Target scores (n,) of the perturbed images of masks (n, M) bool on the model's device."""
                scores = batched_forward(
                    self.model,
                    lambda chunk: compose(image, filled, labels, masks[chunk]),
                    n=masks.shape[0],
                    batch_size=self.batch_size,
                    postprocess=lambda out: target_scores(out, t.expand(out.shape[0]), self.output),
                )
                return check_finite(scores, image, f"{type(self).__name__}: the scores of the perturbed images")

            fits.append(self.fit_surrogate(score, int(labels.max()) + 1, device))

        weights = [torch.from_numpy(np.asarray(f.weights, dtype=np.float64)) for f in fits]
        maps = torch.stack([paint(w.to(device, x.dtype), s) for w, s in zip(weights, segments)]).unsqueeze(1)
        scores = [f.fit_score for f in fits]
        return SuperpixelExplanation(
            maps=maps.to(x.device),
            segments=segments.to(x.device),
            weights=weights,
            intercepts=torch.tensor([f.intercept for f in fits], dtype=torch.float64),
            model_outputs=outputs,
            targets=targets.cpu(),
            fit_scores=None if any(s is None for s in scores) else torch.tensor(scores, dtype=torch.float64),
        )

    @abstractmethod
    def fit_surrogate(
        self,
        score: Callable[[torch.Tensor], torch.Tensor],
        num_superpixels: int,
        device: torch.device,
    ) -> SurrogateFit:
        """Sample masks, score them with ``score`` ((n, M) bool -> (n,)), and fit the surrogate of one sample."""
