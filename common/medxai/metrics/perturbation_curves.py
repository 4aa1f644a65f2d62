"""Perturbation metrics of explanation maps: remove (or insert) what the map calls important, watch the
class probability.

Every metric here follows one pattern: rank the pixels (voxels) of each sample by its map, build a
schedule of nested perturbations, score all perturbed copies of every sample with
:func:`medxai.explain.perturbation.batched_forward` (large batches on the model's device, copies built
chunk by chunk so they never sit in memory at once), and summarise the probability curve:

- :func:`aoppc` -- area over the probability perturbation curve, CXRNet (seed 001, eq. 12, Fig. 13);
- :func:`deletion` and :func:`insertion` -- Petsiuk, Das, Saenko, "RISE: randomized input sampling for
  explanation of black-box models", BMVC 2018, Sec. 4.1;
- :func:`aopc_morf` -- Samek, Binder, Montavon, Lapuschkin, Mueller, "Evaluating the visualization of what
  a deep neural network has learned", IEEE TNNLS 28(11), 2017, eq. 12 (most relevant first);
- :func:`average_drop_increase` -- Chattopadhay, Sarkar, Howlader, Balasubramanian, "Grad-CAM++",
  WACV 2018, Sec. 6.1.1 (average drop %, increase in confidence).

Inputs are a batch ``x`` (B, C, H, W) or (B, C, D, H, W), maps (B, 1, *spatial) (torch or numpy) and a
target class per sample (``None``: the predicted class of the unperturbed input). A pixel is removed in
all channels at once. ``activation`` turns model outputs (B, K) into the score that is tracked:
``"softmax"`` (probability, default), ``"sigmoid"`` (multi-label) or ``"none"`` (the outputs as given,
e.g. a model that already returns probabilities, or logits as Samek et al. use).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d

from medxai.errors import InputError
from medxai.explain.base import check_batch, resolve_targets
from medxai.explain.normalize import minmax
from medxai.explain.perturbation import batched_forward, model_device
from medxai.metrics.localization import as_tensor, check_maps

__all__ = [
    "Activation",
    "PAPER_AOPPC_THRESHOLDS",
    "PerturbationCurve",
    "ConfidenceChange",
    "class_scores",
    "aoppc",
    "deletion",
    "insertion",
    "aopc_morf",
    "average_drop_increase",
    "gaussian_blur",
]

Activation = Literal["softmax", "sigmoid", "none"]
Model = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]

#: x = 0.1, 0.2, ..., 1.0 of seed 001, eq. 12
PAPER_AOPPC_THRESHOLDS: tuple[float, ...] = tuple(k / 10 for k in range(1, 11))


class PerturbationCurve(NamedTuple):
    """A probability curve per sample and the metric that summarises it.

    Attributes
    ----------
    x
        (S,) abscissa: the map threshold (AOPPC, with 0 = unperturbed), the fraction of pixels removed or
        inserted (deletion / insertion), or the number of regions removed (AOPC).
    probabilities
        (B, S) the target-class score of every perturbed copy.
    score
        (B,) the metric per sample (AOPPC, AUC or AOPC).
    """

    x: torch.Tensor
    probabilities: torch.Tensor
    score: torch.Tensor

    def mean_curve(self) -> torch.Tensor:
        """(S,) the curve averaged over samples, as plotted in seed 001 Fig. 13."""
        return self.probabilities.mean(0)

    def mean_score(self) -> float:
        """The metric averaged over samples (seed 001 eq. 12 averages AOPPC over the n images)."""
        return float(self.score.double().mean())


class ConfidenceChange(NamedTuple):
    """Grad-CAM++ confidence metrics per sample.

    Attributes
    ----------
    drop
        (B,) ``max(0, Y - O) / Y * 100``; its mean is the paper's "Average Drop %".
    increase
        (B,) 1.0 where ``O > Y`` else 0.0; its mean is the share of samples whose confidence increased
        (times 100: the paper's "% Increase in Confidence").
    original, masked
        (B,) the scores ``Y`` of the input and ``O`` of the input masked by the map.
    """

    drop: torch.Tensor
    increase: torch.Tensor
    original: torch.Tensor
    masked: torch.Tensor

    def average_drop(self) -> float:
        """Average drop in percent over the batch."""
        return float(self.drop.double().mean())

    def increase_in_confidence(self) -> float:
        """Share (0..1) of samples whose confidence increased."""
        return float(self.increase.double().mean())


def class_scores(outputs: torch.Tensor, targets: torch.Tensor, activation: Activation = "softmax") -> torch.Tensor:
    """Score of each row's target class: ``outputs`` (N, K), ``targets`` (N,) -> (N,)."""
    if outputs.ndim != 2:
        raise InputError(f"the model must return scores of shape (N, K), got {tuple(outputs.shape)}.")
    targets = targets.to(outputs.device).long()
    outside = (targets < 0) | (targets >= outputs.shape[1])
    if bool(outside.any()):
        row = int(outside.nonzero()[0])
        raise InputError(f"target class {int(targets[row])} (row {row}) is outside [0, {outputs.shape[1]}).")
    if activation == "softmax":
        outputs = outputs.softmax(dim=1)
    elif activation == "sigmoid":
        outputs = outputs.sigmoid()
    elif activation != "none":
        raise InputError(f"activation must be 'softmax', 'sigmoid' or 'none', got '{activation}'.")
    return outputs.gather(1, targets.view(-1, 1))[:, 0]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every channel over the spatial axes of (B, C, *spatial), edges replicated
    (MONAI's separable filter; RISE blurs the insertion start with sigma 5 px)."""
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0)
    return separable_filtering(x, [kernel] * (x.ndim - 2), mode="replicate")


def _prepare(
    model: Model, x: torch.Tensor | np.ndarray, maps: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Validate ``x`` and ``maps``; return both on the model's device, and x's original device."""
    x = check_batch(as_tensor(x, "x"))
    maps = check_maps(maps)
    expected = (x.shape[0], 1, *x.shape[2:])
    if tuple(maps.shape) != expected:
        raise InputError(f"maps must have shape {expected} to match x {tuple(x.shape)}, got {tuple(maps.shape)}.")
    out_device = x.device
    device = model_device(model, default=x.device) if isinstance(model, torch.nn.Module) else x.device
    return x.detach().to(device), maps.detach().to(device=device, dtype=x.dtype), out_device


def _fill(value: float | torch.Tensor | np.ndarray, x: torch.Tensor, name: str) -> torch.Tensor:
    """A replacement image broadcast to ``x``'s shape: a number, or an array broadcastable to x."""
    if isinstance(value, (int, float)):
        return torch.full_like(x, float(value))
    value = as_tensor(value, name).to(device=x.device, dtype=x.dtype)
    try:
        return value.expand(x.shape)
    except RuntimeError as err:
        raise InputError(f"{name} of shape {tuple(value.shape)} does not broadcast to x {tuple(x.shape)}.") from err


def _targets(
    model: Model, x: torch.Tensor, target: int | torch.Tensor | list[int] | None, batch_size: int
) -> torch.Tensor:
    """Resolve targets (B,) on x's device; ``None`` takes the predicted class of the unperturbed input."""
    logits = batched_forward(model, x, batch_size=batch_size) if target is None else None
    return resolve_targets(target, x.shape[0], logits).to(x.device)


def _scores_along_schedule(
    model: Model,
    x: torch.Tensor,
    targets: torch.Tensor,
    removal_step: torch.Tensor,
    num_steps: int,
    fill: torch.Tensor,
    insert: bool,
    activation: Activation,
    batch_size: int,
) -> torch.Tensor:
    """Target scores (B, S) of the perturbation schedule, S = ``num_steps``.

    At step ``k`` (0-based) the pixels with ``removal_step <= k`` are *changed*: replaced by ``fill``
    (deletion) or, with ``insert=True``, revealed from ``x`` on a canvas that is otherwise ``fill``. All
    B * S copies are built chunk by chunk inside :func:`batched_forward`.
    """
    batch = x.shape[0]
    steps = torch.arange(num_steps, device=x.device)

    def make(chunk: slice) -> torch.Tensor:
        rows = torch.arange(chunk.start, chunk.stop, device=x.device)
        sample, step = rows // num_steps, steps[rows % num_steps]
        changed = removal_step[sample] <= step.view(-1, *([1] * (x.ndim - 1)))
        if insert:
            return torch.where(changed, x[sample], fill[sample])
        return torch.where(changed, fill[sample], x[sample])

    outputs = batched_forward(model, make, n=batch * num_steps, batch_size=batch_size)
    scores = class_scores(outputs, targets.repeat_interleave(num_steps), activation)
    return scores.view(batch, num_steps).to(x.dtype)


def aoppc(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    thresholds: Sequence[float] = PAPER_AOPPC_THRESHOLDS,
    baseline: float | torch.Tensor = 0.0,
    normalize: bool = True,
    activation: Activation = "softmax",
    batch_size: int = 64,
    atol: float = 1e-6,
) -> PerturbationCurve:
    """Area over the probability perturbation curve (CXRNet, seed 001, eq. 12 and Fig. 13).

    Seed 001 defines the perturbation ``f(x)`` as replacing with zeros the pixels whose (normalised) map
    value is ``x``, starting from the most important (``x = 1``) and going down, with ``f(0)`` the
    unchanged image, and::

        AOPPC = 1/n sum_{i=1}^{n} 1/10 sum_{x=0.1}^{1} ( p(f(0)) - p(f(x)) )

    We follow it as follows (the paper gives no formula for these details):

    - the map of each sample is min-max normalised to [0, 1] (``normalize=True``; the paper's maps have
      "value 1" for the most important regions), a constant map becoming all zeros (nothing important);
    - removal is cumulative, as the paper's procedure removes pixels from high values downwards:
      ``f(x)`` sets to ``baseline`` (zeros in the paper) every pixel whose normalised value is *at least*
      ``x`` (within ``atol``, so that 0.3 counts as at least 0.3 despite float rounding);
    - ``f(0)`` is the unchanged image, as the paper states (``>= 0`` would remove every pixel);
    - the drops are not clipped at zero, as in eq. 12; the per-image mean over ``x`` is returned per
      sample and :meth:`PerturbationCurve.mean_score` is the outer mean over images.

    Parameters
    ----------
    x
        Input batch (B, C, *spatial).
    maps
        Explanation maps (B, 1, *spatial).
    thresholds
        The values ``x`` of eq. 12 (default 0.1, ..., 1.0).
    baseline
        Value, or image broadcastable to ``x``, that removed pixels take.

    Returns
    -------
    PerturbationCurve
        ``x``: (T + 1,) ``[0, *sorted(thresholds)]``; ``probabilities``: (B, T + 1) with column 0 the
        unperturbed ``p(f(0))``; ``score``: (B,) the AOPPC of each sample.
    """
    xs = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if xs.numel() == 0 or bool(((xs <= 0) | (xs > 1)).any()):
        raise InputError(f"AOPPC thresholds must lie in (0, 1], got {xs.tolist()}.")
    x, maps, out_device = _prepare(model, x, maps)
    targets = _targets(model, x, target, batch_size)
    values = minmax(maps) if normalize else maps
    ascending = torch.sort(xs).values.to(device=x.device, dtype=values.dtype)
    # step k (1-based) removes the values >= the k-th largest threshold; a pixel first goes at step
    # T - c + 1, where c is the number of thresholds it reaches (step T + 1 = never within the schedule)
    reached = torch.searchsorted(ascending, (values + atol).contiguous(), right=True)
    removal_step = ascending.numel() - reached + 1
    num_steps = ascending.numel() + 1
    fill = _fill(baseline, x, "baseline")
    probs = _scores_along_schedule(model, x, targets, removal_step, num_steps, fill, False, activation, batch_size)
    # reorder columns from the removal order (x = 1.0 first) to ascending x, with x = 0 first
    curve = torch.cat([probs[:, :1], probs[:, 1:].flip(1)], dim=1)
    score = (probs[:, :1] - probs[:, 1:]).mean(1)
    abscissa = torch.cat([torch.zeros(1, dtype=torch.float64), torch.sort(xs).values]).to(probs.dtype)
    return PerturbationCurve(abscissa.to(out_device), curve.to(out_device), score.to(out_device))


def _pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank (0 = largest value) of every pixel within its sample, ties broken by position: (B, 1, *spatial)."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(maps)


def _rank_curve(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None,
    n_steps: int,
    fill_of: Callable[[torch.Tensor], torch.Tensor],
    insert: bool,
    activation: Activation,
    batch_size: int,
) -> PerturbationCurve:
    """Shared body of deletion and insertion: pixels change in order of decreasing map value."""
    if n_steps < 1:
        raise InputError(f"n_steps must be >= 1, got {n_steps}.")
    x, maps, out_device = _prepare(model, x, maps)
    targets = _targets(model, x, target, batch_size)
    num_pixels = maps[0].numel()
    n_steps = min(n_steps, num_pixels)
    # after step k, the first floor(k * N / n) pixels of the ranking have changed
    counts = torch.div(torch.arange(n_steps + 1) * num_pixels, n_steps, rounding_mode="floor").to(x.device)
    removal_step = torch.searchsorted(counts, _pixel_ranks(maps).flatten(1), right=True).view_as(maps)
    probs = _scores_along_schedule(
        model, x, targets, removal_step, n_steps + 1, fill_of(x), insert, activation, batch_size
    )
    fractions = (counts.double() / num_pixels).to(probs.dtype)
    auc = torch.trapezoid(probs, fractions, dim=1)
    return PerturbationCurve(fractions.to(out_device), probs.to(out_device), auc.to(out_device))


def deletion(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    n_steps: int = 100,
    baseline: float | torch.Tensor = 0.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> PerturbationCurve:
    """Deletion AUC (Petsiuk et al., RISE, BMVC 2018): lower is better.

    Pixels are set to ``baseline`` in order of decreasing map value (ties by position), a share
    ``k / n_steps`` of them after step ``k`` (``floor(k N / n_steps)`` pixels), and the area under the
    target-score curve over the removed fraction in [0, 1] is taken with the trapezoid rule. At most one
    step per pixel: ``n_steps`` is capped at the number of pixels.

    Returns
    -------
    PerturbationCurve
        ``x``: (S,) fraction removed, 0 ... 1; ``probabilities``: (B, S); ``score``: (B,) the AUC.
    """
    return _rank_curve(
        model, x, maps, target, n_steps, lambda img: _fill(baseline, img, "baseline"), False, activation, batch_size
    )


def insertion(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    n_steps: int = 100,
    start: Literal["blur"] | float | torch.Tensor = "blur",
    blur_sigma: float = 5.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> PerturbationCurve:
    """Insertion AUC (Petsiuk et al., RISE, BMVC 2018): higher is better.

    Starts from a canvas -- ``"blur"``: the input blurred by a Gaussian of ``blur_sigma`` pixels as in RISE
    (:func:`gaussian_blur`), or a constant / image ``start`` -- and reveals the original pixels in order of
    decreasing map value over ``n_steps`` steps; the score is the trapezoid area under the target-score curve
    over the inserted fraction in [0, 1].

    Returns
    -------
    PerturbationCurve
        ``x``: (S,) fraction inserted, 0 ... 1; ``probabilities``: (B, S); ``score``: (B,) the AUC.
    """
    if isinstance(start, str):
        if start != "blur":
            raise InputError(f"start must be 'blur', a number or an image, got '{start}'.")
        if blur_sigma <= 0:
            raise InputError(f"blur_sigma must be > 0, got {blur_sigma}.")
        fill_of = lambda img: gaussian_blur(img, blur_sigma)  # noqa: E731
    else:
        fill_of = lambda img: _fill(start, img, "start")  # noqa: E731
    return _rank_curve(model, x, maps, target, n_steps, fill_of, True, activation, batch_size)


def _patch_ids(spatial: Sequence[int], patch_size: Sequence[int], device: torch.device) -> tuple[torch.Tensor, int]:
    """Index of the grid patch of every pixel (flattened, N) and the number of patches."""
    grids = [torch.arange(s, device=device) // p for s, p in zip(spatial, patch_size)]
    per_axis = [-(-s // p) for s, p in zip(spatial, patch_size)]
    ids = torch.zeros(spatial, dtype=torch.long, device=device)
    for axis, (grid, n) in enumerate(zip(grids, per_axis)):
        shape = [1] * len(spatial)
        shape[axis] = -1
        ids = ids * n + grid.view(shape)
    return ids.flatten(), int(np.prod(per_axis))


def aopc_morf(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    patch_size: int | Sequence[int] = 8,
    num_steps: int | None = None,
    baseline: float | torch.Tensor = 0.0,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> PerturbationCurve:
    """Area over the MoRF perturbation curve (Samek et al., IEEE TNNLS 2017, eq. 12): higher is better.

    The image is tiled into a grid of non-overlapping patches of ``patch_size`` pixels per axis (the last
    patch of an axis may be smaller); patches are ordered by their summed relevance, most relevant first
    (ties by position), and removed cumulatively (set to ``baseline``) for ``L = num_steps`` steps::

        AOPC = 1 / (L + 1) * sum_{k=0}^{L} ( f(x^(0)) - f(x^(k)) )

    where ``f`` is the target score (``activation``). Samek et al. use 9x9 regions replaced by uniform
    noise and overlapping candidates; here the grid is non-overlapping and the replacement configurable.

    Parameters
    ----------
    num_steps
        ``L``; ``None`` removes every patch.

    Returns
    -------
    PerturbationCurve
        ``x``: (L + 1,) number of patches removed 0 ... L; ``probabilities``: (B, L + 1); ``score``: (B,).
    """
    x, maps, out_device = _prepare(model, x, maps)
    spatial = tuple(maps.shape[2:])
    sizes = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(patch_size)
    if len(sizes) != len(spatial) or any(int(p) < 1 for p in sizes):
        raise InputError(f"patch_size must be a positive int or {len(spatial)} positive ints, got {patch_size}.")
    ids, num_patches = _patch_ids(spatial, [int(p) for p in sizes], x.device)
    steps = num_patches if num_steps is None else int(num_steps)
    if not 1 <= steps <= num_patches:
        raise InputError(f"num_steps must be in [1, {num_patches}] (the number of patches), got {num_steps}.")
    targets = _targets(model, x, target, batch_size)
    flat = maps.flatten(1)
    relevance = torch.zeros(flat.shape[0], num_patches, dtype=flat.dtype, device=flat.device)
    relevance.scatter_add_(1, ids.expand_as(flat), flat)
    patch_rank = _pixel_ranks(relevance.view(-1, 1, num_patches)).view(-1, num_patches)
    removal_step = (patch_rank.gather(1, ids.expand_as(flat)) + 1).view_as(maps)
    fill = _fill(baseline, x, "baseline")
    probs = _scores_along_schedule(model, x, targets, removal_step, steps + 1, fill, False, activation, batch_size)
    score = (probs[:, :1] - probs).mean(1)
    abscissa = torch.arange(steps + 1, dtype=probs.dtype)
    return PerturbationCurve(abscissa.to(out_device), probs.to(out_device), score.to(out_device))


def average_drop_increase(
    model: Model,
    x: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    target: int | torch.Tensor | list[int] | None = None,
    normalize: bool = True,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> ConfidenceChange:
    """Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++, WACV 2018, Sec. 6.1.1).

    The input is multiplied by its explanation map (``E = L * I``, the map min-max normalised to [0, 1]
    per sample when ``normalize`` is set, broadcast over channels); with ``Y`` the target score of the
    input and ``O`` that of the masked input::

        drop_i = max(0, Y_i - O_i) / Y_i * 100,      increase_i = [O_i > Y_i]

    Average drop % is the mean of ``drop``; increase in confidence is the mean of ``increase``.

    Raises
    ------
    InputError
        When a sample's score ``Y`` is not positive (with ``activation="none"``), as the ratio is undefined.
    """
    x, maps, out_device = _prepare(model, x, maps)
    targets = _targets(model, x, target, batch_size)
    weights = minmax(maps) if normalize else maps
    batch = x.shape[0]

    def make(chunk: slice) -> torch.Tensor:
        rows = torch.arange(chunk.start, chunk.stop, device=x.device)
        sample, masked = rows % batch, (rows >= batch).view(-1, *([1] * (x.ndim - 1)))
        return torch.where(masked, x[sample] * weights[sample], x[sample])

    outputs = batched_forward(model, make, n=2 * batch, batch_size=batch_size)
    scores = class_scores(outputs, targets.repeat(2), activation).to(x.dtype)
    original, masked = scores[:batch], scores[batch:]
    if bool((original <= 0).any()):
        bad = int((original <= 0).nonzero()[0])
        raise InputError(f"average drop needs a positive score; sample {bad} has {float(original[bad]):.4g}.")
    drop = (original - masked).clamp(min=0) / original * 100
    increase = (masked > original).to(x.dtype)
    return ConfidenceChange(*(t.to(out_device) for t in (drop, increase, original, masked)))
