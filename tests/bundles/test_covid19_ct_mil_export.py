"""TorchScript export of the covid19_ct_mil_classification bundle (``python -m monai.bundle ckpt_export``).

Trains a copy of the bundle for one short epoch with a tiny overlay, exports the checkpoint that training
wrote exactly as a user does (a subprocess from another working directory, ``--bundle_root`` pointing at
the copy), and checks that the TorchScript file reproduces the eager network, holds the trained weights and
carries the bundle's metadata and config. ``verify_net_in_out`` runs on the network as shipped
(ResNet-50 trunk, the metadata's 224 x 224 x 32 input).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_runner import REPO, BundleCopy, copy_bundle

BUNDLE = REPO / "bundles" / "covid19_ct_mil_classification"

TINY = {
    "demo_args": {"num_cases": 21, "shape": [48, 48, 16]},
    "backbone": "tiny",
    "image_size": [32, 32],
    "train_num_slices": 8,
    "section_length": 4,
    "top_k": 2,
    "batch_size": 2,
    "num_iterations": 4,
    "num_workers": 0,
    "cache_rate": 1.0,
}
"""Overlay for a CPU run of seconds: one epoch (every epoch validates, so ``models/model.pt`` is written)."""

# deprecation warnings of torch.jit script / save / load: TorchScript is the format ckpt_export writes
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")


@pytest.fixture(scope="module")
def exported_bundle(tmp_path_factory):
    """A bundle copy trained with :data:`TINY`, with ``models/model.pt`` exported to ``models/model.ts``."""
    copy = copy_bundle(BUNDLE.name, tmp_path_factory.mktemp("ct_mil_export"), TINY)
    copy.run("train.json", run_id="training")
    # the network definition must match the checkpoint: export with the same overlay as training
    models = copy.bundle / "models"
    copy.monai_bundle(
        "ckpt_export", "network_def",
        "--filepath", str(models / "model.ts"),
        "--ckpt_file", str(models / "model.pt"),
        "--meta_file", str(copy.bundle / "configs" / "metadata.json"),
        "--config_file", str(copy.config_files("inference.json")),
        "--bundle_root", str(copy.bundle),
    )  # fmt: skip
    return copy.bundle, copy.cwd, copy.env


def _eager_network(bundle: Path) -> torch.nn.Module:
    """``inference.json#network_def`` with the overlay, holding the trained plain state dict (strict)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "tiny.json")])
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval()


def test_torchscript_holds_the_trained_weights_and_reproduces_the_eager_probabilities(exported_bundle):
    bundle, _, _ = exported_bundle
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert not scripted.training  # exported in eval mode: EDM dropout (0.7) is off without a call to eval()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    exported_state = scripted.state_dict()
    assert set(exported_state) == set(state)
    for key, value in state.items():
        assert torch.equal(exported_state[key], value), key

    eager = _eager_network(bundle)
    x = torch.rand(1, 1, 32, 32, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager.forward_details(x)
        logits = scripted(x)
        details = scripted.forward_details(x)
    assert logits.shape == (1, 2)
    torch.testing.assert_close(torch.sigmoid(logits), expected["patient_probs"], atol=1e-5, rtol=0.0)
    torch.testing.assert_close(details["patient_probs"], expected["patient_probs"], atol=1e-5, rtol=0.0)
    # section_length 4 over 8 slices: two sections; cams at the tiny trunk's 1/4 resolution
    torch.testing.assert_close(details["section_probs"], expected["section_probs"], atol=1e-5, rtol=0.0)
    assert details["cams"].shape == (1, 2, 8, 8, 8)
    torch.testing.assert_close(details["cams"], expected["cams"], atol=1e-5, rtol=1e-5)



def test_torchscript_carries_the_bundle_metadata_and_configs(exported_bundle):
    from monai.data import load_net_with_metadata

    bundle, _, _ = exported_bundle
    _, meta, extra = load_net_with_metadata(
        str(bundle / "models" / "model.ts"), more_extra_files=("inference.json", "tiny.json")
    )
    shipped = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog", "name", "task", "monai_version", "pytorch_version", "network_data_format"):
        assert meta[key] == shipped[key], key
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())
    assert json.loads(extra["tiny.json"]) == TINY

    # what a TorchScript-only user reads: the same file names as ckpt_export writes them
    files = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(bundle / "models" / "model.ts"), _extra_files=files)
    assert json.loads(files["metadata.json"])["version"] == shipped["version"]


def test_exported_metadata_keeps_the_required_packages(exported_bundle):
    from monai.data import load_net_with_metadata

    bundle, _, _ = exported_bundle
    _, meta, _ = load_net_with_metadata(str(bundle / "models" / "model.ts"))
    shipped = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["required_packages_version"] == shipped["required_packages_version"]


def test_verify_net_in_out_passes_for_the_shipped_network(exported_bundle):
    bundle, cwd, env = exported_bundle
    log = BundleCopy(bundle, cwd, env).monai_bundle(
        "verify_net_in_out", "network_def",
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle),
    )  # fmt: skip
    assert "data shape of network is verified with no error" in log
