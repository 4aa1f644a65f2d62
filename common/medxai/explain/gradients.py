"""Input-gradient explainers: the saliency map (vanilla gradient) and SmoothGrad, in 2D and 3D.

Both differentiate the target logit with respect to the input. A batch takes one backward pass of
``sum_b y_b[target_b]``, which equals explaining each sample alone when the model is in ``eval`` mode
(in ``train`` mode BatchNorm couples the samples of a batch; maps are computed in the caller's mode).
"""

from __future__ import annotations

from typing import Any

import torch

from medxai.errors import InputError
from medxai.explain.base import Explainer, resolve_targets
from medxai.explain.hooks import select_output
from medxai.explain.perturbation import iter_chunks
from medxai.explain.registry import register_explainer

__all__ = ["input_gradient", "saliency_from_gradient", "Saliency", "SmoothGrad"]


def input_gradient(
    model: torch.nn.Module, x: torch.Tensor, target: Any, output_key: str | int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d y_b[t_b] / d x_b`` for every sample b, from one forward and one backward pass.

    Parameters
    ----------
    model
        Maps (B, C, *spatial) to logits (B, K) (or a tuple/dict holding them, see ``output_key``).
    x
        The batch (B, C, *spatial).
    target
        Class per sample (int, sequence or tensor (B,)); ``None`` takes each sample's predicted class.
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).

    Returns
    -------
    tuple of torch.Tensor
        The gradient (B, C, *spatial) and the explained classes (B,). The model's parameters receive no
        ``.grad`` (the gradient is taken with :func:`torch.autograd.grad`).
    """
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        logits = select_output(model(inputs), output_key)
        targets = resolve_targets(target, x.shape[0], logits).to(logits.device)
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    return grad, targets


def saliency_from_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. (2014, sec. 3.1): ``M_ij = max_c |w_c,ij|`` over channels, (B, C, *s) -> (B, 1, *s)."""
    return gradient.abs().amax(dim=1, keepdim=True)


@register_explainer("saliency")
@register_explainer("vanilla_gradient")
class Saliency(Explainer):
    """Saliency map / vanilla gradient (Simonyan, Vedaldi and Zisserman, ICLR workshop 2014).

    The map is the largest absolute input gradient of the target logit over the input channels,
    ``M = max_c |d y_t / d x_c|`` (B, 1, *spatial), non-negative. For a linear model ``y = W x + b`` it is
    ``max_c |W_t,c|``.

    Parameters
    ----------
    model
        Maps (B, C, *spatial) to logits (B, K) (or a tuple/dict holding them, see ``output_key``).
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).
    """

    non_negative = True

    def __init__(self, model: torch.nn.Module, output_key: str | int | None = None) -> None:
        super().__init__(model)
        self.output_key = output_key

    def attribute(self, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        gradient, _ = input_gradient(self.model, x, target, self.output_key)
        return saliency_from_gradient(gradient).to(x.device)


@register_explainer("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al., 2017, eq. 3): the saliency map averaged over noisy copies of the input.

    ``M_hat(x) = 1/n sum_i M(x + N(0, sigma^2))`` with ``M`` the saliency map of :class:`Saliency` and
    ``sigma = noise_level * (max(x_b) - min(x_b))`` per sample (the paper's noise level, 10-20 % works well).
    With ``noise_level=0`` it equals :class:`Saliency`.

    Parameters
    ----------
    model
        Maps (B, C, *spatial) to logits (B, K) (or a tuple/dict holding them, see ``output_key``).
    n_samples
        Number of noisy copies n per sample.
    noise_level
        Noise standard deviation as a fraction of each sample's intensity range.
    batch_size
        Images per forward/backward pass: the B x n noisy copies are processed in chunks of about this many,
        built on the fly on the input's device.
    seed
        Seed of the noise. Copy i uses the noise pattern drawn with seed ``seed + i`` (shape (C, *spatial),
        scaled by each sample's sigma), so results do not depend on ``batch_size`` nor on a sample's position
        in the batch, and the same seed gives the same maps.
    output_key
        Selects the logits when the model returns a tuple (index) or dict (key).

    Notes
    -----
    ``target=None`` explains the predicted class of the clean input (one extra forward pass).
    """

    non_negative = True

    def __init__(
        self,
        model: torch.nn.Module,
        n_samples: int = 25,
        noise_level: float = 0.15,
        batch_size: int = 64,
        seed: int = 0,
        output_key: str | int | None = None,
    ) -> None:
        super().__init__(model)
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}.")
        if noise_level < 0:
            raise InputError(f"noise_level must be >= 0, got {noise_level}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.n_samples = n_samples
        self.noise_level = noise_level
        self.batch_size = batch_size
        self.seed = seed
        self.output_key = output_key

    def noise(self, index: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Standard normal noise pattern of copy ``index`` (shape (C, *spatial)), drawn with seed ``seed + index``."""
        generator = torch.Generator(device=device).manual_seed(self.seed + index)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def attribute(self, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        batch = x.shape[0]
        if target is None:
            with torch.no_grad():
                logits = select_output(self.model(x), self.output_key)
            targets = resolve_targets(None, batch, logits)
        else:
            targets = resolve_targets(target, batch)
        x = x.detach()
        flat = x.flatten(1)
        sigma = self.noise_level * (flat.amax(1) - flat.amin(1))
        sigma = sigma.view(1, batch, *([1] * (x.ndim - 1)))
        total = torch.zeros((batch, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        copies_per_chunk = max(1, self.batch_size // batch)
        for chunk in iter_chunks(self.n_samples, copies_per_chunk):
            noise = torch.stack(
                [self.noise(i, tuple(x.shape[1:]), x.device, x.dtype) for i in range(chunk.start, chunk.stop)]
            )
            noisy = (x.unsqueeze(0) + sigma * noise.unsqueeze(1)).flatten(0, 1)  # (copies * B, C, *spatial)
            chunk_targets = targets.repeat(chunk.stop - chunk.start)
            gradient, _ = input_gradient(self.model, noisy, chunk_targets, self.output_key)
            maps = saliency_from_gradient(gradient).view(chunk.stop - chunk.start, batch, 1, *x.shape[2:])
            total += maps.sum(0).to(x.device)
        return total / self.n_samples
