"""ONNX export of bundle networks with MONAI's converter, checked with onnxruntime against PyTorch eager.

MONAI exports a bundle's network with ``python -m monai.bundle onnx_export network_def ...``
(:func:`monai.bundle.onnx_export`, which calls :func:`monai.networks.utils.convert_to_onnx`; on torch >= 2.9
that is ``torch.onnx.export`` with the ``torch.export``-based exporter). Its ``verify`` option runs the ONNX
model once, on the export input. This module adds what a deployment check needs beyond that:

- :func:`onnx_converter_kwargs`: the ``converter_kwargs`` every bundle uses (input ``image``, output ``pred``,
  a dynamic batch axis, onnxruntime verification on the CPU with the given tolerances);
- :func:`export_onnx`: ``convert_to_onnx`` of an in-memory network with those arguments (what
  ``onnx_export`` does after building the network and loading the checkpoint);
- :func:`onnx_max_abs_difference`: onnxruntime against eager on any inputs, e.g. a second batch size.

The spatial shape (and, for CT volumes, the number of slices) is fixed at export: only the batch axis is
dynamic. Needs the optional packages ``onnx``, ``onnxruntime`` and ``onnxscript`` (extra ``onnx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medxai.errors import InputError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "onnx_converter_kwargs", "export_onnx", "onnx_max_abs_difference"]

INPUT_NAME = "image"
"""Name of the ONNX graph input (the bundles' ``network_data_format`` input key)."""
OUTPUT_NAME = "pred"
"""Name of the ONNX graph output (the bundles' ``network_data_format`` output key)."""


def onnx_converter_kwargs(atol: float = 1e-4, rtol: float = 1e-4, dynamic_batch: bool = True) -> dict[str, Any]:
    """``converter_kwargs`` for :func:`monai.bundle.onnx_export` / :func:`monai.networks.utils.convert_to_onnx`.

    The ONNX graph gets the input ``image`` and output ``pred``; with ``dynamic_batch`` their axis 0 is the
    symbolic ``batch``. ``verify`` runs the exported model with onnxruntime (CPU provider) on the export input
    and fails unless ``|onnx - eager| <= atol + rtol * |eager|`` elementwise (``torch.testing.assert_close``).
    """
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "verify": True,
        "use_ort": True,
        "ort_provider": ["CPUExecutionProvider"],
        "device": "cpu",
        "atol": float(atol),
        "rtol": float(rtol),
    }
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    return kwargs


def export_onnx(
    network: nn.Module,
    example: torch.Tensor,
    filepath: str | Path,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    dynamic_batch: bool = True,
) -> Any:
    """Export ``network`` (put in eval mode) to ``filepath`` with MONAI's ``convert_to_onnx`` and verify it.

    Parameters
    ----------
    network
        The PyTorch network; it must return one tensor.
    example
        Export (and verification) input, (B, C, *spatial); the exported graph keeps its shape except the batch
        axis when ``dynamic_batch``.
    filepath
        Where the ``.onnx`` file is written (weights inside the file).
    atol, rtol, dynamic_batch
        See :func:`onnx_converter_kwargs`.

    Returns
    -------
    onnx.ModelProto
        The exported model.

    Raises
    ------
    AssertionError
        onnxruntime's output on ``example`` is not within the tolerances (raised by MONAI's verification).
    """
    from monai.networks.utils import convert_to_onnx

    if not isinstance(example, torch.Tensor) or example.ndim < 3:
        raise InputError(f"export_onnx: the example must be a tensor (B, C, *spatial), got {_describe(example)}.")
    network.eval()
    return convert_to_onnx(
        network,
        [example],
        filename=str(filepath),
        use_trace=False,
        **onnx_converter_kwargs(atol, rtol, dynamic_batch),
    )


def onnx_max_abs_difference(
    onnx_file: str | Path,
    network: nn.Module,
    inputs: Sequence[torch.Tensor],
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> float:
    """Largest ``|onnxruntime - eager|`` over the outputs of ``network`` (eval mode, no grad) and of the ONNX
    model ``onnx_file`` on every tensor of ``inputs`` (each (B, C, *spatial), B may differ between them).

    Raises
    ------
    InputError
        No inputs, or an ONNX output whose shape differs from the eager output (a batch axis that was not
        exported as dynamic makes onnxruntime itself raise on another batch size).
    """
    import onnxruntime

    if len(inputs) == 0:
        raise InputError("onnx_max_abs_difference: no inputs given.")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=list(providers))
    input_name = session.get_inputs()[0].name
    network.eval()
    largest = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = network(x).detach().float().cpu().numpy()
        actual = session.run(None, {input_name: x.detach().cpu().numpy()})[0]
        if actual.shape != expected.shape:
            raise InputError(
                f"onnx_max_abs_difference: {Path(onnx_file).name} gives shape {tuple(actual.shape)} for input "
                f"{tuple(x.shape)}, the eager network {tuple(expected.shape)}."
            )
        largest = max(largest, float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0)))
    return largest


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
