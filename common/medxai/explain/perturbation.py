"""Evaluating a model on many perturbed inputs in large batches on the model's device.

Every perturbation method (occlusion, LIME, Kernel SHAP, AOPPC, deletion/insertion) reduces to "score
N perturbed copies of one input". Doing that in a few large batches, without numpy round trips, is what
makes them cost little more than N bare forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = ["model_device", "batched_forward", "iter_chunks"]


def model_device(model: torch.nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``default`` for a parameter-free model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device(default)


def iter_chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0, batch_size), [batch_size, 2 * batch_size), ...`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def batched_forward(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor | Callable[[slice], torch.Tensor],
    n: int | None = None,
    batch_size: int = 64,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``model`` over ``inputs`` in chunks of ``batch_size`` and concatenate the outputs.

    Parameters
    ----------
    model
        Maps a batch (b, C, *spatial) to outputs (b, ...), e.g. logits (b, K).
    inputs
        Either a tensor (N, C, *spatial), or a function ``make(chunk: slice) -> (b, C, *spatial)`` that
        builds each chunk on demand (so N perturbed copies never sit in memory at once); then ``n`` is
        required.
    postprocess
        Applied to each chunk's output before it is kept, e.g. ``lambda z: z.softmax(1)[:, k]``.

    Returns
    -------
    torch.Tensor
        The concatenated outputs (N, ...), on the model output's device.
    """
    if callable(inputs) and not isinstance(inputs, torch.Tensor):
        if n is None:
            raise ValueError("n is required when inputs is a chunk-building function.")
        make = inputs
    else:
        tensor = inputs
        n = tensor.shape[0] if n is None else n
        make = lambda chunk: tensor[chunk]  # noqa: E731
    outputs = []
    for chunk in iter_chunks(n, batch_size):
        out = model(make(chunk))
        outputs.append(postprocess(out) if postprocess is not None else out)
    if not outputs:
        raise ValueError("batched_forward got no inputs (n = 0).")
    return torch.cat(outputs, dim=0)
