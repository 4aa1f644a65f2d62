"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014), batched, any batch size, 2D and 3D.

A patch of ``patch_size`` slides over the image with ``stride``; each position replaces the patch by a
baseline value and records the drop of the target score, ``f_t(x) - f_t(x_occluded)``. A voxel's map value
is the mean drop over the patch positions that cover it, as in captum's ``Occlusion`` (same window
placement: starts at ``0, s, 2s, ...`` up to ``ceil((D - w) / s) * s``, the last window clipped at the image
border), so the numbers equal captum's with the same settings.

Why not the libraries: ``monai.visualize.OcclusionSensitivity`` accepts a batch of one image only and
returns occluded scores rather than drops; captum's ``Occlusion`` builds one full mask tensor per window
and calls the model with ``perturbations_per_eval`` inputs at a time on the input's device. Here every
perturbed copy of every sample in the batch is built on demand, chunk by chunk, on the model's device
(:func:`medxai.explain.perturbation.batched_forward`), and the per-voxel averaging is one separable
``einsum`` (windows are axis-aligned boxes, so their indicator factorises over the spatial axes).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any, Literal

import torch

from medxai.errors import InputError
from medxai.explain.base import Explainer, resolve_targets
from medxai.explain.perturbation import batched_forward, model_device
from medxai.explain.registry import register_explainer

__all__ = ["Occlusion", "target_scores", "window_indicators", "OUTPUT_KINDS"]

OutputKind = Literal["probability", "logit"]
OUTPUT_KINDS: tuple[str, ...] = ("probability", "logit")


def target_scores(logits: torch.Tensor, targets: torch.Tensor, output: str = "probability") -> torch.Tensor:
    """The score of each sample's target class, the quantity perturbation methods explain.

    Parameters
    ----------
    logits
        Model outputs (N, K).
    targets
        Class index per row (N,) (any device; moved to ``logits``'s device).
    output
        ``"probability"``: softmax over the K classes (sigmoid of the single logit when K == 1);
        ``"logit"``: the raw output.

    Returns
    -------
    torch.Tensor
        Scores (N,), float, on ``logits``'s device.
    """
    if output not in OUTPUT_KINDS:
        raise InputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}.")
    if logits.ndim != 2:
        raise InputError(f"the model must return logits (N, K); got shape {tuple(logits.shape)}.")
    if output == "probability":
        values = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)
    else:
        values = logits
    index = targets.to(logits.device).long().view(-1, 1)
    return values.gather(1, index).squeeze(1).float()


def window_indicators(size: int, window: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Indicator of the windows along one axis, placed as captum's ``Occlusion`` places them.

    Window ``k`` covers ``[k * stride, min(k * stride + window, size))`` for
    ``k = 0 .. ceil((size - window) / stride)``.

    Returns
    -------
    torch.Tensor
        (num_windows, size) float32, 1 where the window covers the position.
    """
    if window < 1 or stride < 1:
        raise InputError(f"patch size and stride must be >= 1, got window={window}, stride={stride}.")
    if window > size:
        raise InputError(f"patch size {window} is larger than the image axis of size {size}.")
    count = math.ceil((size - window) / stride) + 1
    starts = torch.arange(count, device=device).view(-1, 1) * stride
    positions = torch.arange(size, device=device).view(1, -1)
    return ((positions >= starts) & (positions < starts + window)).float()


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != ndim:
        raise InputError(f"{name} needs 1 or {ndim} values for a {ndim}D image, got {value!r}.")
    return values


@register_explainer("occlusion")
class Occlusion(Explainer):
    """Occlusion sensitivity map: mean drop of the target score over the patches covering each voxel.

    Parameters
    ----------
    model
        Maps (N, C, *spatial) to logits (N, K).
    patch_size
        Patch edge per spatial axis (an int for all axes), e.g. 8 or (4, 8, 8).
    stride
        Step between patch positions per axis; default ``patch_size`` halved (rounded up), i.e. 50 % overlap.
    baseline
        Value written into the patch: a float (e.g. 0.0, or -1000.0 for air in CT Hounsfield units), or
        ``"mean"`` for each sample's per-channel image mean.
    output
        ``"probability"`` (softmax; sigmoid for a single logit) or ``"logit"``: the score whose drop is mapped.
    batch_size
        Perturbed copies per forward pass on the model's device.

    Notes
    -----
    The map is signed (a patch can raise the score); voxels covered by no patch (``stride > patch_size``)
    get 0. Samples of a batch share forward batches; each sample's result equals its own explanation.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        patch_size: int | Sequence[int] = 8,
        stride: int | Sequence[int] | None = None,
        baseline: float | str = 0.0,
        output: OutputKind = "probability",
        batch_size: int = 64,
    ) -> None:
        super().__init__(model)
        if output not in OUTPUT_KINDS:
            raise InputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}.")
        if isinstance(baseline, str) and baseline != "mean":
            raise InputError(f"baseline must be a number or 'mean', got {baseline!r}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.patch_size = patch_size
        self.stride = stride
        self.baseline = baseline
        self.output = output
        self.batch_size = batch_size

    def _geometry(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ndim = len(spatial)
        patch = _per_axis(self.patch_size, ndim, "patch_size")
        stride = (
            tuple(max(1, (p + 1) // 2) for p in patch)
            if self.stride is None
            else _per_axis(self.stride, ndim, "stride")
        )
        return patch, stride

    def attribute(self, x: torch.Tensor, target: int | torch.Tensor | list[int] | None, **kwargs: Any) -> torch.Tensor:
        """Occlusion maps (B, 1, *spatial) for ``x`` (B, C, *spatial); ``kwargs`` are not used."""
        device = model_device(self.model, x.device)
        xd = x.detach().to(device)
        batch, spatial = xd.shape[0], tuple(xd.shape[2:])
        patch, stride = self._geometry(spatial)
        if any(w > n for n, w in zip(spatial, patch)):
            raise InputError(f"Occlusion: patch size {patch} is larger than x of shape {tuple(x.shape)}.")
        indicators = [window_indicators(n, w, s, device) for n, w, s in zip(spatial, patch, stride)]
        counts = tuple(ind.shape[0] for ind in indicators)
        num_windows = math.prod(counts)

        with torch.no_grad():
            logits = self.model(xd)
        targets = resolve_targets(target, batch, logits)
        reference = target_scores(logits, targets, self.output)  # (B,)

        if self.baseline == "mean":
            fill = xd.mean(dim=tuple(range(2, xd.ndim)), keepdim=True)  # (B, C, 1, ...)
        else:
            shape = (batch, xd.shape[1]) + (1,) * len(spatial)
            fill = torch.full(shape, float(self.baseline), device=device, dtype=xd.dtype)

        def make(chunk: slice) -> torch.Tensor:
            index = torch.arange(chunk.start, chunk.stop, device=device)
            sample, window = index // num_windows, index % num_windows
            mask = torch.ones((index.numel(),) + spatial, device=device, dtype=torch.bool)
            remainder = window
            for axis in reversed(range(len(spatial))):  # C-order unravel of the window index
                position = remainder % counts[axis]
                remainder = remainder // counts[axis]
                shape = [index.numel()] + [1] * len(spatial)
                shape[axis + 1] = spatial[axis]
                mask &= indicators[axis][position].bool().view(shape)
            return torch.where(mask.unsqueeze(1), fill[sample], xd[sample])

        occluded_targets = targets.to(device).repeat_interleave(num_windows)
        occluded_logits = batched_forward(self.model, make, n=batch * num_windows, batch_size=self.batch_size)
        occluded = target_scores(occluded_logits, occluded_targets, self.output)
        drops = (reference.repeat_interleave(num_windows) - occluded).view(batch, *counts)

        # sum of drops over covering windows, and the number of covering windows, axis by axis
        letters = string.ascii_lowercase
        window_axes, voxel_axes = letters[: len(spatial)], letters[len(spatial) : 2 * len(spatial)]
        operands = ",".join(f"{w}{v}" for w, v in zip(window_axes, voxel_axes))
        total = torch.einsum(f"z{window_axes},{operands}->z{voxel_axes}", drops, *indicators)
        ones = torch.ones(counts, device=device)
        coverage = torch.einsum(f"{window_axes},{operands}->{voxel_axes}", ones, *indicators)
        maps = torch.where(coverage > 0, total / coverage.clamp(min=1), torch.zeros_like(total))
        return maps.unsqueeze(1).to(device=x.device, dtype=x.dtype)
