"""ONNX export of the bundles' inference networks (issue 9): MONAI's ``convert_to_onnx`` (what
``python -m monai.bundle onnx_export`` runs), checked with onnxruntime against PyTorch eager.

Each network is ``inference.json#network_def`` of the bundle with its ``demo.json`` overlay and a few
CPU-sized overrides (random init): the export must pass MONAI's onnxruntime verification on the export
input (atol = rtol = 1e-4), keep a symbolic batch axis with channels and spatial shape fixed, and give the
eager outputs within 1e-5 on new inputs of batch sizes 1 and 2. The CT MIL network runs slice chunks of
the volume depth, so batch size 2 needs two trunk chunks where the batch-1 export input had one (the
export used to fix the chunk count). The ensemble bundle's network is checked as the two members of its
``ensemble.json`` overlay's ``PosteriorEnsemble``. cxr_lung_segmentation's network is exported through
``scripts/export_onnx.py`` (``monai.bundle.onnx_export`` itself), which the test checks as well. Also:
:func:`medxai.export.onnx_max_abs_difference` measures a known difference, and
:func:`medxai.networks.wrappers.plain_tensor` (the export fix).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402

from medxai.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_max_abs_difference  # noqa: E402
from medxai.networks import PosteriorEnsemble  # noqa: E402
from medxai.networks.wrappers import plain_tensor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
SCRIPT = REPO_ROOT / "scripts" / "export_onnx.py"

# bundle -> (network overrides on inference.json + demo.json, export input shape (1, C, *spatial))
CASES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "cxr_lung_segmentation": (
        {"unet_channels": [4, 8, 16], "unet_strides": [2, 2], "unet_num_res_units": 1},
        (1, 1, 32, 32),
    ),
    "brain_ventricle_segmentation": ({"decoder_channels": [8, 8, 8]}, (1, 1, 32, 32)),
    "covid19_cxrnet_classification": ({"decoder_channels": [8, 8, 8]}, (1, 1, 32, 32)),
    "covid19_ct_transfer_classification": ({}, (1, 3, 32, 44)),
    "covid19_cxr_ensemble_classification": ({}, (1, 1, 32, 32)),
    "covid19_ct_mil_classification": (
        {"backbone": "tiny", "section_length": 4, "top_k": 2, "slice_chunk_size": 8},
        (1, 1, 32, 32, 8),
    ),
}

ATOL = RTOL = 1e-4  # MONAI's verification on the export input
EQUAL_TO = 1e-5  # onnxruntime vs eager on new inputs (measured: below 1e-6 for every case)


def bundle_network(name: str, overrides: dict[str, Any]) -> torch.nn.Module:
    """``network_def`` of ``inference.json`` + ``demo.json`` with ``overrides``, seeded random init."""
    bundle = BUNDLES / name
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "demo.json")])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    for key, value in {**overrides, "bundle_root": str(bundle)}.items():
        parser[key] = value
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def").eval()


def check_export(network: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Export with MONAI (verified by onnxruntime), then compare with eager on batch sizes 1 and 2."""
    generator = torch.Generator().manual_seed(1)
    model = export_onnx(network, torch.rand(shape, generator=generator), path, atol=ATOL, rtol=RTOL)
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    assert (graph_input.name, graph_output.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", *shape[1:]]  # dynamic batch, fixed channels and spatial shape
    inputs = [torch.rand((b, *shape[1:]), generator=generator) for b in (1, 2)]
    assert onnx_max_abs_difference(path, network, inputs) <= EQUAL_TO


@pytest.mark.parametrize(
    "bundle", sorted(set(CASES) - {"covid19_cxr_ensemble_classification", "cxr_lung_segmentation"})
)
def test_bundle_network_exports_to_onnx_and_matches_eager(bundle, tmp_path):
    overrides, shape = CASES[bundle]
    check_export(bundle_network(bundle, overrides), shape, tmp_path / f"{bundle}.onnx")


def test_export_script_runs_monai_onnx_export_and_reports_the_difference(tmp_path):
    """``scripts/export_onnx.py`` on cxr_lung_segmentation (demo overlay, CPU-sized UNet, random init)."""
    script = runpy.run_path(str(SCRIPT))
    overrides, shape = CASES["cxr_lung_segmentation"]
    output = tmp_path / "lung.onnx"
    argv = [str(BUNDLES / "cxr_lung_segmentation"), "--config", "configs/demo.json", "--output", str(output)]
    argv += ["--json", str(tmp_path / "report.json")]
    argv += [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    argv += ["--input-shape", *map(str, shape), "--batch-sizes", "1", "2"]
    assert script["main"](argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["network"] == "UNet" and report["input_shape"] == list(shape)
    assert report["overrides"] == overrides and report["checkpoint"] == "random init, seed 0"
    assert set(report["max_abs_difference"]) == {"1", "2"}
    assert all(0 <= d <= EQUAL_TO for d in report["max_abs_difference"].values())
    # the ONNX file holds the random-init weights the script saved: recompute the difference independently
    network = bundle_network("cxr_lung_segmentation", overrides)
    network.load_state_dict(torch.load(output.with_suffix(".random_init.pt"), weights_only=True))
    assert onnx_max_abs_difference(output, network, [torch.rand(3, *shape[1:])]) <= EQUAL_TO


class Shifted(torch.nn.Module):
    """``network(x) + offset``: a known difference for :func:`onnx_max_abs_difference` to measure."""

    def __init__(self, network: torch.nn.Module, offset: float) -> None:
        super().__init__()
        self.network, self.offset = network, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) + self.offset


def test_posterior_ensemble_of_the_ensemble_overlay_exports_to_onnx(tmp_path):
    overrides, shape = CASES["covid19_cxr_ensemble_classification"]
    members = [bundle_network("covid19_cxr_ensemble_classification", overrides) for _ in range(2)]
    with torch.no_grad():  # two different members (bundle_network seeds every one alike)
        members[1].classifier.bias[0] += 1.0  # (the same shift of every logit would not change a softmax)
    ensemble = PosteriorEnsemble(members, mode="scpa").eval()
    path = tmp_path / "ensemble.onnx"
    check_export(ensemble, shape, path)
    x = torch.rand(2, *shape[1:])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {INPUT_NAME: x.numpy()})
    assert probs.sum(axis=1) == pytest.approx([2.0, 2.0], abs=1e-5)  # summed softmax posteriors of 2 members
    # the helper measures a real difference: an eager network shifted by 0.25 differs by exactly 0.25
    assert onnx_max_abs_difference(path, Shifted(ensemble, 0.25), [x]) == pytest.approx(0.25, abs=1e-6)


def test_plain_tensor_strips_metatensor_and_passes_plain_tensors_through():
    values = torch.arange(6.0).reshape(1, 1, 2, 3)
    meta = MetaTensor(values, meta={"filename_or_obj": "a.nii"})
    plain = plain_tensor(meta)
    assert type(plain) is torch.Tensor and torch.equal(plain, values)
    assert plain_tensor(values) is values  # no as_subclass copy: torch.export traces through it
