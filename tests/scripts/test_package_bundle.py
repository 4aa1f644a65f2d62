"""Tests for ``scripts/package_bundle.py`` and :mod:`medxai.packaging` (self-contained bundle archives).

The end-to-end test packages a copy of cxr_lung_segmentation with a tiny U-Net (``configs/tiny.json``) and a
``models/model.pt`` saved from that network's seeded initialisation (prediction equality needs no training),
unzips it into an empty folder and runs ``python -m monai.bundle run`` there in a fresh process whose
``sys.path`` holds nothing of this checkout: medxai is installed editable (a ``.pth`` entry for ``common/``),
so a bootstrap drops every path under the checkout and every editable finder before it runs ``monai.bundle``
as ``-m`` does, and records which ``medxai`` was imported. Its predictions must equal the source bundle's.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

import medxai
from medxai.data.io import load_image
from medxai.packaging import (
    BASE_DISTRIBUTIONS,
    ArchiveError,
    archive_name,
    bundle_requirements,
    extract_bundle,
    package_bundle,
)
from medxai.transforms.lung_segmentation import LungSegmentationd

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "cxr_lung_segmentation"
VERSION = json.loads((REPO / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())["version"]
TINY = {"image_size": [32, 32], "unet_channels": [4, 8, 16], "unet_strides": [2, 2], "unet_num_res_units": 0,
        "num_workers": 0}  # fmt: skip
CONFIGS = ["configs/inference.json", "configs/tiny.json"]

# Runs monai.bundle the way ``python -m monai.bundle`` does (working directory first on sys.path), after
# removing everything of the source checkout: sys.path entries under it (the editable .pth entry) and
# setuptools' editable finders. At exit it writes which medxai ran and the final sys.path.
BOOTSTRAP = """
import atexit, json, os, runpy, sys
repo, report = os.path.realpath(sys.argv[1]), sys.argv[2]
venv = os.path.realpath(sys.prefix)  # CI's virtual environment may live inside the checkout: keep it
def under(p, root):
    return p == root or p.startswith(root + os.sep)
def inside(p):
    p = os.path.realpath(p or os.getcwd())
    return under(p, repo) and not under(p, venv)
sys.path[:] = [os.getcwd()] + [p for p in sys.path[1:] if not inside(p)]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_importer_cache.clear()
assert "medxai" not in sys.modules
def record():
    medxai = sys.modules.get("medxai")
    with open(report, "w") as f:
        json.dump({"medxai": getattr(medxai, "__file__", None), "sys_path": sys.path}, f)
atexit.register(record)
sys.argv = ["monai.bundle", *sys.argv[3:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _load_script():
    spec = importlib.util.spec_from_file_location("package_bundle", REPO / "scripts" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_checkout(path: str, cwd: Path) -> bool:
    """Whether the ``sys.path`` entry ``path`` of a process that ran in ``cwd`` is in the source checkout,
    other than in the running virtual environment (which CI creates inside the checkout)."""
    real, repo, venv = (Path(os.path.realpath(p)) for p in (os.path.join(cwd, path or "."), REPO, sys.prefix))
    return real.is_relative_to(repo) and not real.is_relative_to(venv)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1"}


def _tiny_network(bundle: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(bundle / c) for c in CONFIGS])
    torch.manual_seed(3)
    return parser.get_parsed_content("network_def")


def _write_cases(folder: Path) -> Path:
    """Two 48 x 40 grayscale PNGs (a bright disc and a ramp) and a datalist with them as the test split."""
    folder.mkdir()
    yy, xx = np.mgrid[:48, :40]
    disc = np.where((yy - 20) ** 2 + (xx - 18) ** 2 < 150, 220, 30).astype(np.uint8)
    ramp = ((xx + yy) * 255 // (39 + 47)).astype(np.uint8)
    for name, image in (("disc", disc), ("ramp", ramp)):
        Image.fromarray(image).save(folder / f"{name}.png")
    records = [{"image": str(folder / f"{n}.png")} for n in ("disc", "ramp")]
    (folder / "datalist.json").write_text(json.dumps({"test": records}))
    return folder


def _predictions(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the bundle with the tiny overlay as ``configs/tiny.json`` and seeded weights."""
    import shutil

    root = tmp_path_factory.mktemp("package")
    bundle = root / "src" / BUNDLE
    shutil.copytree(REPO / "bundles" / BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    (bundle / "configs" / "tiny.json").write_text(json.dumps(TINY))
    (bundle / "models").mkdir()
    torch.save(_tiny_network(bundle).state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def archive(source) -> Path:
    return package_bundle(source, output_dir=source.parents[1] / "dist")


def test_archive_holds_the_bundle_weights_and_a_clean_medxai(source, archive):
    assert archive.name == f"{BUNDLE}_v{VERSION}.zip" == archive_name(BUNDLE, VERSION)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        packaged_meta = json.loads(zf.read(f"{BUNDLE}/configs/metadata.json"))
        weights = zf.read(f"{BUNDLE}/models/model.pt")
        vendored_init = zf.read(f"{BUNDLE}/medxai/__init__.py")
        assert all(zf.getinfo(n).date_time == (1980, 1, 1, 0, 0, 0) for n in names)
    assert {f"{BUNDLE}/configs/inference.json", f"{BUNDLE}/configs/tiny.json", f"{BUNDLE}/docs/README.md",
            f"{BUNDLE}/LICENSE", f"{BUNDLE}/docs/packaged_bundle.md"} <= names  # fmt: skip
    assert all(n.startswith(f"{BUNDLE}/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    package = Path(medxai.__file__).parent
    sources = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file() and "__pycache__" not in
               p.parts and p.suffix != ".pyc"}  # fmt: skip
    vendored = {n[len(f"{BUNDLE}/medxai/") :] for n in names if n.startswith(f"{BUNDLE}/medxai/")}
    assert vendored == sources and len(vendored) > 50
    assert vendored_init == (package / "__init__.py").read_bytes()
    assert weights == (source / "models" / "model.pt").read_bytes()
    shipped = json.loads((source / "configs" / "metadata.json").read_text())
    assert "medxai-bundles" in shipped["required_packages_version"]
    expected = {k: v for k, v in shipped["required_packages_version"].items() if k != "medxai-bundles"}
    assert packaged_meta["required_packages_version"] == expected
    assert {k: v for k, v in packaged_meta.items() if k != "required_packages_version"} == {
        k: v for k, v in shipped.items() if k != "required_packages_version"
    }
    # same files, same bytes: packaging is reproducible
    again = package_bundle(source, output_dir=archive.parent / "again")
    assert again.read_bytes() == archive.read_bytes()


def test_missing_weights_is_an_error_naming_the_path_unless_allowed(source, tmp_path):
    import shutil

    bundle = tmp_path / BUNDLE
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("models"))
    with pytest.raises(ArchiveError, match=str(bundle / "models" / "model.pt")):
        package_bundle(bundle, output_dir=tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
    script = _load_script()
    assert script.main([str(bundle), "--output_dir", str(tmp_path / "dist")]) == 1
    assert script.main([str(bundle), "--output_dir", str(tmp_path / "dist"), "--allow_missing_weights"]) == 0
    with zipfile.ZipFile(tmp_path / "dist" / f"{BUNDLE}_v{VERSION}.zip") as zf:
        assert f"{BUNDLE}/configs/inference.json" in zf.namelist()
        assert not any("/models/" in n for n in zf.namelist())
    with pytest.raises(ArchiveError, match="'9.9.9' has no 'changelog' entry"):
        package_bundle(bundle, output_dir=tmp_path / "dist", version="9.9.9", allow_missing_weights=True)
    with pytest.raises(ArchiveError, match="may only hold"):
        archive_name(BUNDLE, "../1")


def test_unzipped_bundle_runs_without_the_checkout_and_predicts_as_the_source(source, archive, tmp_path):
    extracted = extract_bundle(archive, tmp_path / "unzipped")
    assert extracted == tmp_path / "unzipped" / BUNDLE
    data = _write_cases(tmp_path / "data")

    # the unzipped bundle: the plain model-zoo command from its folder, with nothing of the checkout importable
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(REPO), str(report), "run", "--config_file", str(CONFIGS),
         "--bundle_root", ".", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")],
        cwd=extracted, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ran = json.loads(report.read_text())
    assert Path(ran["medxai"]) == extracted / "medxai" / "__init__.py"
    assert not [p for p in ran["sys_path"] if _from_checkout(p, extracted)]

    # the source bundle's prediction, in this process (medxai from the checkout): its network, weights and
    # pre-/postprocessing through LungSegmentationd, which gives the very mask its inference writes
    # (tests/bundles/test_cxr_lung_segmentation_bundle.py)
    segment = LungSegmentationd(keys="image", bundle_dir=source, mask_key="mask", config_files=CONFIGS)
    rows = _predictions(tmp_path / "out")
    assert sorted(rows) == ["disc", "ramp"]
    lung_pixels = 0
    for case, row in rows.items():
        expected = segment({"image": load_image(data / f"{case}.png", grayscale=True)})["mask"][0].numpy().T * 255
        unzipped = np.array(Image.open(tmp_path / "out" / case / f"{case}_lung.png"))
        np.testing.assert_array_equal(unzipped, expected)
        assert int((expected > 0).sum()) == int(row["lung_pixels"])
        lung_pixels += int(row["lung_pixels"])
    # the weights decide the masks: with these seeded weights they are neither empty nor full
    assert 0 < lung_pixels < 2 * 48 * 40


def _zip_with(path: Path, evil: zipfile.ZipInfo, payload: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bundle/configs/metadata.json", "{}")  # a good member first: nothing may be written
        zf.writestr(evil, payload)
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so the mode bits are read
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (zipfile.ZipInfo("../x"), "'..' component"),
        (zipfile.ZipInfo("bundle/../../x"), "'..' component"),
        (zipfile.ZipInfo("bundle\\..\\..\\x"), "'..' component"),
        (zipfile.ZipInfo("/tmp/abs_x"), "absolute path"),
        (zipfile.ZipInfo("C:/x"), "absolute path"),
        (_symlink_info("bundle/link"), "symbolic link"),
    ],
    ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute", "drive", "symlink"],
)
def test_extract_refuses_members_that_escape_before_writing_anything(tmp_path, member, reason):
    archive = _zip_with(tmp_path / "evil.zip", member, b"/etc/passwd" if "link" in member.filename else b"x")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ArchiveError, match=f"member {member.filename!r}.*{reason}".replace("\\", "\\\\")):
        extract_bundle(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "x").exists() and not Path("/tmp/abs_x").exists()


def test_extract_refuses_to_overwrite_and_extracts_a_good_archive(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle/configs/metadata.json", '{"version": "1"}')
        zf.writestr("bundle/medxai/__init__.py", "")
    assert extract_bundle(archive, tmp_path / "t") == tmp_path / "t" / "bundle"
    assert (tmp_path / "t" / "bundle" / "configs" / "metadata.json").read_text() == '{"version": "1"}'
    with pytest.raises(ArchiveError, match="'bundle/configs/metadata.json' would overwrite"):
        extract_bundle(archive, tmp_path / "t")


def test_bundle_requirements_follow_the_import_closure(tmp_path):
    package = tmp_path / "pkg" / "medxai"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import Thing\n")
    (package / "sub" / "a.py").write_text(
        "import numpy\nfrom medxai.sub import b\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pandas\nclass Thing:\n    pass\n"
    )
    (package / "sub" / "b.py").write_text(
        "try:\n    import yaml\nexcept ImportError:\n    yaml = None\ndef f():\n    import scipy\n"
        "def g():\n    return 'ITKReader'\n"
    )
    (package / "unused.py").write_text("import sklearn\n")
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    config = {"imports": ["$import torch", "$from PIL import Image"], "x": {"_target_": "medxai.sub.a.Thing"},
              "h": {"_target_": "TensorBoardStatsHandler"}}  # fmt: skip
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"x": "import sklearn"}))
    req = bundle_requirements(bundle, package_dir=package)
    assert req.modules == {"medxai", "medxai.sub", "medxai.sub.a", "medxai.sub.b"}
    assert set(req.module_level) == {"numpy", "torch", "pillow", "tensorboard"}
    assert set(req.lazy) == {"pandas", "pyyaml", "scipy", "itk"}
    assert req.unresolved == set()


# the model-zoo workflows every user runs; other configs (demo, real-data, DICOM output, ...) are opt-in overlays
CORE_CONFIGS = ("train.json", "evaluate.json", "inference.json", "explain.json", "multi_gpu_train.json")


@pytest.mark.parametrize("bundle", sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir()))
def test_metadata_lists_what_the_bundle_imports_at_installed_versions(bundle):
    folder = REPO / "bundles" / bundle
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    required = meta["required_packages_version"]
    optional = meta.get("optional_packages", {})
    assert "optional_packages_version" not in meta  # MONAI 1.6 reads it as a deprecated required_packages_version
    core = [c for c in CORE_CONFIGS if (folder / "configs" / c).is_file()]
    missing = set(bundle_requirements(folder, configs=core).module_level) - BASE_DISTRIBUTIONS - set(required)
    assert not missing, f"{bundle} imports {sorted(missing)} when its configs load; list them as required"
    everything = bundle_requirements(folder)
    missing = set(everything.module_level) - BASE_DISTRIBUTIONS - set(required) - set(optional)
    assert not missing, f"{bundle}'s opt-in configs import {sorted(missing)}; list them as optional"
    assert everything.unresolved == set()
    for name, version in {**required, **optional}.items():
        if name != "medxai-bundles":  # this repository, installed editable
            assert importlib.metadata.version(name) == version, name
    assert required["medxai-bundles"] == medxai.__version__
    assert not set(required) & set(optional)
    installed = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
    for key, dist in installed.items():
        assert meta[key] == importlib.metadata.version(dist).split("+")[0], key
