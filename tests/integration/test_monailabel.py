"""The segmentation bundles load in MONAI Label's ``monaibundle`` app and serve inference over its REST API.

MONAI Label 0.8.5 needs pydicom < 3 (the project uses pydicom 3), so it lives in its own environment
(docs/monailabel.md): set ``MEDXAI_MONAILABEL_PYTHON`` to that environment's python, or run the tests where
``monailabel`` imports. Without either the module is skipped.

One server (a copy of the app that ships with monailabel, on a free port of 127.0.0.1) serves copies of both
bundles, their network sizes baked into ``configs/inference.json`` (MONAI Label reads no overlay):

- ``cxr_lung_segmentation``: a tiny U-Net trained here for two seconds on four synthetic chest X-rays; the
  label served for a fifth must overlap its ground-truth lungs (Dice);
- ``brain_ventricle_segmentation``: a tiny network fitted for 20 steps to the test head itself (a real model
  costs about a minute of CPU); the label served for that head must equal, voxel for voxel, the label of the
  bundle's own pre-processing, inferer and post-processing run in this process, on the image's grid and affine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.transforms import LoadImage, Resize
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
LUNG, BRAIN = "cxr_lung_segmentation", "brain_ventricle_segmentation"

#: network and grid sizes baked into the copies' inference.json (the bundle tests' tiny overlays)
LUNG_TINY = {"image_size": [32, 32], "unet_channels": [4, 8, 16], "unet_strides": [2, 2], "unet_num_res_units": 0}
BRAIN_TINY = {
    "backbone": "small_resnet",
    "decoder_channels": [8, 8, 8],
    "pixdim": [4.0, 4.0],
    "field_of_view": [48, 48],
    "image_size": [48, 48],
    "sw_batch_size": 8,
}
CXR_SIZE = (64, 64)
HEAD_SHAPE, HEAD_SPACING = (48, 48, 30), (4.0, 4.0, 2.0)
STARTUP_TIMEOUT_S = 180


def _monailabel_python() -> str | None:
    """``$MEDXAI_MONAILABEL_PYTHON``, else this interpreter when ``monailabel`` imports, else ``None``."""
    configured = os.environ.get("MEDXAI_MONAILABEL_PYTHON")
    if configured:
        return configured
    return sys.executable if importlib.util.find_spec("monailabel") is not None else None


PYTHON = _monailabel_python()
pytestmark = [
    pytest.mark.monailabel,
    pytest.mark.skipif(PYTHON is None, reason="no python with monailabel (set MEDXAI_MONAILABEL_PYTHON)"),
]


@dataclass(frozen=True)
class Served:
    """A running MONAI Label server and what it serves."""

    url: str
    studies: Path
    app: Path
    lung_truth: np.ndarray  # (rows, columns) bool, the test X-ray's lungs
    brain_reference: np.ndarray  # (X, Y, Z) the bundle's own label for the test head


def _sample_app(python: str) -> Path:
    """The ``monaibundle`` sample app shipped in the monailabel environment (``<prefix>/monailabel/...``)."""
    prefix = subprocess.run(
        [python, "-c", "import sys, monailabel; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    app = Path(prefix) / "monailabel" / "sample-apps" / "monaibundle"
    assert (app / "main.py").is_file(), f"no monaibundle sample app at {app}"
    return app


def _copy_bundle(name: str, app: Path, overrides: dict[str, Any]) -> Path:
    """Copy ``bundles/<name>`` to ``app/model/<name>`` with ``overrides`` merged into its inference.json."""
    bundle = app / "model" / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    config = bundle / "configs" / "inference.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **overrides}, indent=1))
    (bundle / "models").mkdir()
    return bundle


def _parser(bundle: Path, output_dir: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = str(output_dir)
    return parser


def _train_lung_net(bundle: Path, images: list[Path], masks: list[Path], work: Path) -> None:
    """Fit the copy's ``network_def`` to ``images`` for 150 Adam steps; save ``models/model.pt``.

    Inputs go through the copy's own ``preprocessing`` (so orientation and scaling match what MONAI Label
    feeds the network); masks are loaded the same way and resized with nearest neighbours.
    """
    parser = _parser(bundle, work / "unused")
    preprocessing = parser.get_parsed_content("preprocessing")
    size = parser.get_parsed_content("image_size")
    x = torch.stack([preprocessing({"image": str(p)})["image"].as_tensor() for p in images])
    load, resize = LoadImage(image_only=True, ensure_channel_first=True), Resize(size, mode="nearest")
    y = torch.stack([(resize(load(str(p))) > 0).float().as_tensor() for p in masks])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(150):
        optimizer.zero_grad()
        loss(network(x), y).backward()
        optimizer.step()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")


def _fit_brain_net(bundle: Path, image: np.ndarray, label: np.ndarray, work: Path, steps: int = 20) -> None:
    """A few Adam steps of the copy's ``network_def`` on the axial slices of one head (X, Y, Z); save it.

    Not a model of the ventricles: just enough that the label is no longer one class everywhere, so that the
    comparison with the bundle's own pipeline checks a label with structure.
    """
    x = torch.from_numpy(image).float().permute(2, 0, 1)[:, None]
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(label).long().permute(2, 0, 1)[:, None]
    torch.manual_seed(0)
    network = _parser(bundle, work / "unused").get_parsed_content("network_def")
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(network(x), y).backward()
        optimizer.step()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")


def _brain_reference(bundle: Path, image: Path, work: Path) -> np.ndarray:
    """The bundle's own label for ``image``: its preprocessing, network, inferer and postprocessing in process."""
    parser = _parser(bundle, work / "reference")
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
    data = parser.get_parsed_content("postprocessing")(data)
    return np.asarray(data["pred"][0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, method: str = "GET", timeout: float = 120) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(), dict(response.headers)


def _wait_for_info(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"MONAI Label exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            _request(f"{url}/info/", timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"MONAI Label did not answer /info/ within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    from medxai.data.synthetic.brain import generate_brain_case
    from medxai.data.synthetic.cxr import generate_cxr_case
    from medxai.data.synthetic.io import save_nifti, save_png

    root = tmp_path_factory.mktemp("monailabel")
    app = root / "app"
    shutil.copytree(_sample_app(PYTHON), app, ignore=shutil.ignore_patterns("__pycache__"))
    studies, train = root / "studies", root / "train"
    studies.mkdir()

    # four training X-rays (one per class) and a test X-ray from another centre and seed
    images, masks = [], []
    for i in range(4):
        case = generate_cxr_case(100 + i, i, "mild", "AB"[i % 2], CXR_SIZE)
        images.append(save_png(case.image, train / f"cxr_{i}.png"))
        masks.append(save_png((case.lung_mask > 0).astype(np.uint8), train / f"cxr_{i}_lung.png"))
    test_cxr = generate_cxr_case(7, 0, "mild", "A", CXR_SIZE)
    save_png(test_cxr.image, studies / "cxr_test.png")
    lung = _copy_bundle(LUNG, app, LUNG_TINY)
    _train_lung_net(lung, images, masks, root)

    head = generate_brain_case(3, "t1", HEAD_SHAPE, 5, HEAD_SPACING)
    head_path = save_nifti(head.thin_image, head.thin_affine, studies / "brain_test.nii.gz", dtype=np.float32)
    brain = _copy_bundle(BRAIN, app, BRAIN_TINY)
    _fit_brain_net(brain, head.thin_image, head.thin_label, root)
    reference = _brain_reference(brain, head_path, root)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    command = [
        PYTHON, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "models", f"{LUNG},{BRAIN}", "--conf", "zoo_source", "ngc", "--conf", "sam2", "false",
        "--conf", "skip_trainers", "true", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDXAI_CACHE": str(root / "cache")}
    with open(log, "w") as handle:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        _wait_for_info(url, server, log)
        yield Served(url, studies, app, test_cxr.lung_mask > 0, reference)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _infer(served: Served, model: str, image: str, output: str) -> tuple[bytes, dict[str, str]]:
    return _request(f"{served.url}/infer/{model}?image={image}&output={output}", method="POST")


def test_info_lists_both_bundles_as_segmentation_models_with_their_labels(served):
    info = json.loads(_request(f"{served.url}/info/")[0])
    models = info["models"]
    assert models[LUNG]["type"] == "segmentation" and models[LUNG]["dimension"] == 2
    assert models[LUNG]["labels"] == {"lung": 1}
    assert models[BRAIN]["type"] == "segmentation"
    assert models[BRAIN]["labels"] == {"lateral ventricles": 1, "third ventricle": 2, "fourth ventricle": 3}
    assert info["datastore"]["total"] == 2


def test_lung_label_served_as_png_matches_the_ground_truth(served):
    body, headers = _infer(served, LUNG, "cxr_test", "image")
    assert headers["content-type"] == "image/png"
    label_file = served.studies.parent / "lung_label.png"
    label_file.write_bytes(body)
    label = np.array(Image.open(label_file))
    assert label.shape == CXR_SIZE == served.lung_truth.shape  # (rows, columns) as the input PNG
    assert set(np.unique(label)) <= {0, 1}
    truth, found = served.lung_truth, label == 1
    dice = 2 * np.logical_and(truth, found).sum() / (truth.sum() + found.sum())
    print(f"\nMONAILABEL {LUNG} Dice vs phantom lungs: {dice:.4f}")
    assert dice > 0.8, f"Dice of the served lung mask vs the phantom's lungs: {dice:.3f}"
    # the bundle's own writer ran inside the server as well
    written = served.app / "model" / LUNG / "eval" / "inference" / "cxr_test" / "cxr_test_lung.png"
    np.testing.assert_array_equal(np.array(Image.open(written)) > 127, found)


@pytest.mark.parametrize(
    "model, image, labels, first_steps",
    [
        (LUNG, "cxr_test", {"lung": 1}, ["LoadMedicalImaged", "CopyItemsd", "Resized"]),
        (BRAIN, "brain_test", {"lateral ventricles": 1, "third ventricle": 2, "fourth ventricle": 3},
         ["LoadImageTensord", "EnsureChannelFirstd", "CheckVolumed"]),
    ],
)  # fmt: skip
def test_json_result_names_the_labels_and_reports_latencies(served, model, image, labels, first_steps):
    """``output=json``: label names and latencies (``pytest -s`` prints them; docs/monailabel.md quotes them)."""
    result = json.loads(_infer(served, model, image, "json")[0])
    assert result["label_names"] == labels
    latencies = result["latencies"]
    print(f"\nMONAILABEL {model} latencies (s): {json.dumps({k: v for k, v in latencies.items() if k != 'transform'})}")
    assert latencies["total"] >= latencies["infer"] >= 0
    steps = latencies["transform"]
    # MONAI Label ran the bundle's own transforms (its LoadImaged replaced by LoadImageTensord), then Restored
    assert list(steps["pre"])[:3] == first_steps
    assert "Invertd" in steps["post"] and list(steps["post"])[-1] == "Restored"


def test_ventricle_label_served_as_nifti_equals_the_bundle_pipeline_on_the_image_grid(served):
    body, _ = _infer(served, BRAIN, "brain_test", "image")
    label_file = served.studies.parent / "brain_label.nii.gz"
    label_file.write_bytes(body)
    label, image = nib.load(label_file), nib.load(served.studies / "brain_test.nii.gz")
    assert label.shape == image.shape == HEAD_SHAPE
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
    values = np.asarray(label.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(values, served.brain_reference)
    assert len(np.unique(values)) >= 2  # the comparison is not between two constant labels
    print(f"\nMONAILABEL {BRAIN} label voxels per class: {np.bincount(values.ravel(), minlength=4).tolist()}")
