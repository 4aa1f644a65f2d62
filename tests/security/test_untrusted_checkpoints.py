"""Untrusted weights files are refused before any code in them runs.

A checkpoint is a pickle: unpickling it without ``weights_only=True`` runs whatever callable its ``__reduce__``
names. Every file here carries such a payload, ``open(marker, "w")``: harmless, but it leaves the marker file
behind if it ever runs. Each loading path the project has (``medxai`` functions, the bundles'
``CheckpointLoader`` handlers parsed from their configs, the export/verify scripts, the latent landscape
``.npz``) must raise AND leave no marker. A control test shows that the payload does run when loaded unsafely,
so a missing marker means something.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set for the loading tests: torch lets it turn a ``torch.load`` whose
``weights_only`` was left to the default into an unsafe load, but not one that passes ``weights_only=True``
(``torch/serialization.py``), so these tests fail for any call that relies on torch's default. A static scan
checks the same for every ``torch.load`` / ``np.load`` in ``common/`` and ``scripts/`` and for the configs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch import nn

from medxai.errors import InputError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bundles"))
from bundle_runner import copy_bundle  # noqa: E402

FORMATS = ("torch.save", "pickle.dump")  # torch's zip format, and a bare pickle (torch's legacy format)
REFUSED = "refused by weights_only=True: Unsupported global: GLOBAL io.open was not an allowed global"


class Payload:
    """Unpickles as ``open(marker, "w")``: creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def write_malicious(path: Path, marker: Path, fmt: str) -> Path:
    """A state-dict-shaped checkpoint (of ``nn.Linear(3, 2)``) whose ``bias`` is the payload; it comes first, so
    the payload's global is the first thing an unpickler meets (a tensor in a bare pickle is refused too)."""
    state = {"bias": Payload(marker), "weight": torch.zeros(2, 3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(state, handle, protocol=2)  # torch's own; higher ones are refused before any global
    return path


@pytest.fixture(params=FORMATS)
def malicious(request, tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    return write_malicious(tmp_path / "weights" / "model.pt", marker, request.param), marker


@pytest.fixture
def no_default_weights_only(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.mark.parametrize("fmt", FORMATS)
def test_control_the_payload_runs_when_loaded_without_weights_only(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = write_malicious(tmp_path / "model.pt", marker, fmt)
    if fmt == "torch.save":
        loaded = torch.load(path, weights_only=False)
        loaded["bias"].close()
    else:
        with open(path, "rb") as handle:
            pickle.load(handle).get("bias").close()
    assert marker.is_file()


def _ensemble_member(path: Path) -> Any:
    from medxai.networks.ensemble import load_member

    return load_member(nn.Linear(3, 2), path)


def _backbone_pretrained_path(path: Path) -> Any:
    from medxai.networks.backbones import create_backbone

    return create_backbone("tiny", in_channels=1, pretrained_path=path)


def _snapshot_selector(path: Path) -> Any:
    from medxai.engines.snapshots import SnapshotSelector

    snapshot = path.with_name("snapshot_model_epoch=1.pt")
    path.rename(snapshot)
    selector = SnapshotSelector(path.parent, nn.Linear(3, 2), evaluator=Engine(lambda engine, batch: None))
    return selector.select(), snapshot


def _lung_segmentation_weights(path: Path) -> Any:
    from medxai.transforms.lung_segmentation import load_lung_segmentation_bundle

    return load_lung_segmentation_bundle(REPO / "bundles" / "cxr_lung_segmentation", checkpoint=path)


LOADERS = {
    "ensemble.load_member": _ensemble_member,
    "backbones.create_backbone(pretrained_path)": _backbone_pretrained_path,
    "snapshots.SnapshotSelector": _snapshot_selector,
    "lung_segmentation.load_lung_segmentation_bundle": _lung_segmentation_weights,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_medxai_loaders_refuse_a_pickle_payload_naming_the_file(loader, malicious, no_default_weights_only):
    path, marker = malicious
    shown = path.with_name("snapshot_model_epoch=1.pt") if loader == "snapshots.SnapshotSelector" else path
    with pytest.raises(InputError) as error:
        LOADERS[loader](path)
    assert str(shown) in str(error.value) and REFUSED in str(error.value)
    assert "set to `False`" not in str(error.value)  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()


def _torch_hub_file(tmp_path: Path, monkeypatch, arch: str = "resnet18") -> Path:
    """Where torch hub caches torchvision's ``DEFAULT`` weights of ``arch``, under a private ``TORCH_HOME``."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    return path


@pytest.mark.parametrize("pretrained", [True, "auto"])
def test_backbone_imagenet_weights_refuse_a_poisoned_torch_hub_cache(pretrained, tmp_path, monkeypatch,
                                                                   no_default_weights_only):  # fmt: skip
    """Both read whatever file sits in the torch hub cache under the weights' name (torch hub checks the hash
    only of a file it downloads). torchvision's own builders would unpickle it with ``weights_only=False``."""
    from medxai.networks.backbones import cached_weights_file, create_backbone

    marker = tmp_path / "PWNED"
    cached = write_malicious(_torch_hub_file(tmp_path, monkeypatch), marker, "torch.save")
    assert cached_weights_file("resnet18") == cached
    with pytest.raises(InputError) as error:
        create_backbone("resnet18", in_channels=3, pretrained=pretrained)
    assert str(cached) in str(error.value) and REFUSED in str(error.value)
    assert not marker.exists()


def test_backbone_imagenet_weights_still_load_from_a_plain_cached_state_dict(tmp_path, monkeypatch):
    """The same path with a plain state dict (a seeded torchvision ResNet-18 standing in for ImageNet weights)."""
    import torchvision

    from medxai.networks.backbones import create_backbone

    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), _torch_hub_file(tmp_path, monkeypatch))
    trunk, features = create_backbone("resnet18", in_channels=3, pretrained=True)
    assert features == 512
    assert torch.equal(trunk.state_dict()["conv1.weight"], reference.conv1.weight)
    assert torch.equal(trunk.state_dict()["layer4.1.bn2.running_var"], reference.layer4[1].bn2.running_var)


def _checkpoint_loaders() -> list[tuple[str, tuple[str, ...], str]]:
    """(bundle, configs merged in order, id of a ``CheckpointLoader``) for every loader in every bundle config;
    ``evaluate.json`` is run over ``train.json`` and ``explain.json`` over ``inference.json`` (bundle READMEs)."""
    base = {"inference.json": (), "evaluate.json": ("train.json",), "explain.json": ("inference.json",)}

    def walk(node: Any, ids: list[str]):
        if isinstance(node, dict):
            if node.get("_target_") == "CheckpointLoader":
                yield "#".join(ids)
            for key, value in node.items():
                yield from walk(value, [*ids, key])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, [*ids, str(index)])

    cases = []
    for bundle in sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir()):
        for name, before in base.items():
            config = bundle / "configs" / name
            if config.is_file():
                cases += [(bundle.name, (*before, name), i) for i in walk(json.loads(config.read_text()), [])]
    return cases


CHECKPOINT_LOADERS = _checkpoint_loaders()
TINY_NETWORK = {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}


def test_every_bundle_has_its_checkpoint_loaders_covered():
    bundles = {bundle for bundle, _, _ in CHECKPOINT_LOADERS}
    assert len(bundles) == 6 and len(CHECKPOINT_LOADERS) >= 14, CHECKPOINT_LOADERS


@pytest.mark.parametrize(("bundle", "configs", "loader_id"), CHECKPOINT_LOADERS,
                         ids=[f"{b}-{c[-1]}" for b, c, _ in CHECKPOINT_LOADERS])  # fmt: skip
def test_bundle_checkpoint_loader_refuses_a_pickle_payload(bundle, configs, loader_id, tmp_path,
                                                           no_default_weights_only):  # fmt: skip
    """The bundle's own ``CheckpointLoader`` (as its config builds it, with a tiny ``network_def``) refuses the
    payload planted as ``models/model.pt``, then loads a plain state dict from the same path."""
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointLoader

    copy = copy_bundle(bundle, tmp_path, {"network_def": TINY_NETWORK, "device": "$torch.device('cpu')"})
    checkpoint = copy.bundle / "models" / "model.pt"
    marker = tmp_path / "PWNED"
    write_malicious(checkpoint, marker, "torch.save")
    parser = ConfigParser(globals={"medxai": "medxai"})
    parser.read_config(copy.config_files(*configs))
    parser["bundle_root"] = str(copy.bundle)
    handler = parser.get_parsed_content(loader_id)
    assert isinstance(handler, CheckpointLoader) and Path(handler.load_path) == checkpoint
    engine = Engine(lambda engine, batch: None)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        handler(engine)
    assert not marker.exists()
    good = nn.Linear(3, 2)
    torch.save(good.state_dict(), checkpoint)
    handler(engine)
    network = handler.load_dict["model"]
    assert torch.equal(network.weight, good.weight) and torch.equal(network.bias, good.bias)


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_security_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def test_export_onnx_script_refuses_a_pickle_payload(malicious, tmp_path, no_default_weights_only):
    path, marker = malicious
    export_onnx = _script("export_onnx")
    report = tmp_path / "report.json"
    code = export_onnx.main([
        str(REPO / "bundles" / "cxr_lung_segmentation"), "--ckpt", str(path), "--output", str(tmp_path / "x.onnx"),
        "--set", f"network_def={json.dumps(TINY_NETWORK)}", "--input-shape", "1", "3", "--json", str(report),
    ])  # fmt: skip
    assert code == 1
    assert "UnpicklingError" in json.loads(report.read_text())["error"]
    assert not marker.exists()
    assert not (tmp_path / "x.onnx").exists()


def test_verify_bundles_ckpt_export_refuses_a_pickle_payload(malicious, tmp_path, no_default_weights_only):
    path, marker = malicious
    verify = _script("verify_bundles")
    copy = copy_bundle("cxr_lung_segmentation", tmp_path / "copy", {})
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = verify.check_ckpt_export(copy.bundle, path, "cpu", work)
    except pickle.UnpicklingError as error:
        assert "Unsupported global" in str(error)
    else:
        assert result.status == verify.FAIL and "Unsupported global" in result.reason
    assert not marker.exists()
    assert not (work / "model.ts").exists()


def test_monai_ckpt_export_refuses_a_pickle_payload(malicious, tmp_path, no_default_weights_only):
    """``python -m monai.bundle ckpt_export`` on a bundle (TorchScript export; ignite's loader)."""
    from monai.bundle import ckpt_export

    path, marker = malicious
    copy = copy_bundle("cxr_lung_segmentation", tmp_path / "copy", {"network_def": TINY_NETWORK})
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        ckpt_export(
            net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(path),
            meta_file=str(copy.bundle / "configs" / "metadata.json"), config_file=copy.config_files("inference.json"),
            bundle_root=str(copy.bundle),
        )  # fmt: skip
    assert not marker.exists()
    assert not (tmp_path / "model.ts").exists()


def test_latent_landscape_refuses_pickled_object_arrays(tmp_path):
    from medxai.explain.latent_space import load_latent_landscape

    marker = tmp_path / "PWNED"
    path = tmp_path / "landscape.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(marker)
    np.savez(path, format_version=payload, mlp_activation=payload)
    with pytest.raises(InputError, match="without pickle") as error:
        load_latent_landscape(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as archive:  # control: the payload is real
        archive["format_version"][0].close()
    assert marker.is_file()


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function
        and isinstance(node.func.value, ast.Name) and node.func.value.id in module.split("|")
    ]  # fmt: skip


def _keyword(call: ast.Call, name: str) -> Any:
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else "<missing or not a constant>"


def test_every_load_in_the_code_passes_weights_only_and_allow_pickle_false():
    files = sorted([*(REPO / "common").rglob("*.py"), *(REPO / "scripts").rglob("*.py")])
    assert len(files) > 30
    bad, seen = [], set()
    unsafe = ("dill", "cloudpickle", "joblib", "shelve", "marshal")
    for file in files:
        tree = ast.parse(file.read_text(), str(file))
        for call in _calls(tree, "torch", "load"):
            seen.add(file.name)
            if _keyword(call, "weights_only") is not True:
                bad.append(f"{file.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "np|numpy", "load"):
            seen.add(file.name)
            if _keyword(call, "allow_pickle") is not False:
                bad.append(f"{file.relative_to(REPO)}:{call.lineno}: np.load without allow_pickle=False")
        for function in ("load", "loads", "Unpickler"):
            for call in _calls(tree, "pickle", function):
                bad.append(f"{file.relative_to(REPO)}:{call.lineno}: pickle.{function}")
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            bad += [f"{file.relative_to(REPO)}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in unsafe]
    expected = {"serialization.py", "snapshots.py", "latent_space.py", "verify_bundles.py", "export_onnx.py"}
    assert expected <= seen and not bad, (seen, bad)


def test_no_bundle_config_loads_pickles():
    """Configs are code; none of ours calls a loader that could unpickle (the handlers above are MONAI's)."""
    bad = []
    for config in sorted((REPO / "bundles").glob("*/configs/*.json")):
        text = config.read_text()
        for needle in ("torch.load", "pickle", "np.load", "numpy.load", "joblib", "weights_only"):
            if needle in text:
                bad.append(f"{config.relative_to(REPO)}: {needle}")
    assert not bad, bad
