"""What the bundle tests share: a copy of a bundle with a small overlay, and ``python -m monai.bundle`` on it.

Bundle tests run the bundle as a user does: a subprocess of ``python -m monai.bundle``, started from a folder
other than the bundle (``--bundle_root`` is what matters), on a copy of the bundle (so nothing is written
into the repository) whose ``tiny.json`` overlay, merged last, makes the run CPU-sized, with a private
``MEDXAI_CACHE`` for the demo data. Test files import it as ``from bundle_runner import ...`` (pytest puts
this folder on ``sys.path``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OVERLAY_NAME = "tiny.json"


@dataclass(frozen=True)
class BundleCopy:
    """A bundle copied under a temporary folder, with its overlay, working folder and environment."""

    bundle: Path
    cwd: Path
    env: dict[str, str]

    @property
    def cache(self) -> Path:
        """The private demo-data cache (``MEDXAI_CACHE``)."""
        return Path(self.env["MEDXAI_CACHE"])

    def config_files(self, *configs: str) -> list[str]:
        """Absolute paths of ``configs/<name>`` in order, then the overlay."""
        return [str(self.bundle / "configs" / name) for name in configs] + [str(self.bundle / OVERLAY_NAME)]

    def monai_bundle(self, *args: str, launcher: Sequence[str] = (), timeout: int = 600) -> str:
        """Run ``python [launcher] -m monai.bundle *args`` from :attr:`cwd`; assert success, return the log.

        Under a launcher (``torchrun``), a run in which a rank was *aborted by a signal* is started once more:
        gloo on CPU occasionally aborts a rank inside its C++ transport under load ("terminate called without
        an active exception", SIGABRT, before any Python error; seen once in 20 CI runs, cf. pytorch/gloo
        issue 514). A rank that fails with a Python exception exits with code 1, which is never retried.
        """
        command = [sys.executable, *launcher, "-m", "monai.bundle", *args]
        for attempt in range(2 if launcher else 1):
            result = subprocess.run(
                command, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
            )
            log = result.stdout + result.stderr
            if result.returncode == 0 or not _rank_aborted_by_signal(log) or attempt == 1:
                break
            warnings.warn(f"a rank was aborted by a signal (gloo); running once more. Log tail:\n{log[-1500:]}")
        assert result.returncode == 0, log[-4000:]
        return log

    def run_args(self, *configs: str, run_id: str = "run") -> list[str]:
        """The ``monai.bundle`` arguments ``run <run_id>`` with ``configs`` (then the overlay) and the bundle's
        metadata and logging."""
        return [
            "run", run_id,
            "--config_file", str(self.config_files(*configs)),
            "--bundle_root", str(self.bundle),
            "--meta_file", str(self.bundle / "configs" / "metadata.json"),
            "--logging_file", str(self.bundle / "configs" / "logging.conf"),
        ]  # fmt: skip

    def run(self, *configs: str, run_id: str = "run", launcher: Sequence[str] = (), timeout: int = 600) -> str:
        """``monai.bundle run <run_id>`` with ``configs`` (then the overlay) and the bundle's metadata and logging."""
        return self.monai_bundle(*self.run_args(*configs, run_id=run_id), launcher=launcher, timeout=timeout)

    def infer_on(self, records: Sequence[dict[str, Any]], work: Path) -> tuple[dict[str, str], Path]:
        """Run ``inference.json`` (then the overlay) on a datalist whose ``test`` list is ``records``.

        The datalist goes to ``work/dataset``, the outputs to ``work/out``. Returns ``bad_cases.json`` as
        ``{case: error}`` and the output folder.
        """
        dataset = work / "dataset"
        dataset.mkdir()
        (dataset / "datalist.json").write_text(json.dumps({"test": list(records)}))
        out = work / "out"
        self.monai_bundle(
            "run", "--config_file", str(self.config_files("inference.json")),
            "--bundle_root", str(self.bundle), "--dataset_dir", str(dataset), "--output_dir", str(out),
        )  # fmt: skip
        bad = {entry["case"]: entry["error"] for entry in json.loads((out / "bad_cases.json").read_text())}
        return bad, out

    def write_overlay(self, overlay: dict[str, Any]) -> None:
        """Replace the overlay (``tiny.json``)."""
        (self.bundle / OVERLAY_NAME).write_text(json.dumps(overlay))


def predicted_cases(out: Path) -> list[str]:
    """The case names of ``out/predictions.csv``, sorted."""
    with open(out / "predictions.csv") as handle:
        return sorted(row["case"] for row in csv.DictReader(handle))


def write_bad_images(folder: Path, good_png: Path, plane_shape: tuple[int, int] = (64, 64)) -> dict[str, Path]:
    """The bad inputs every 2D bundle must report, by case name: a missing file, a PNG truncated to 100 bytes
    (cut from ``good_png``), a 3D NIfTI volume and a 2D NIfTI plane with a NaN pixel."""
    import nibabel as nib
    import numpy as np

    bad = {name: folder / f"{name}{suffix}" for name, suffix in
           (("missing", ".png"), ("truncated", ".png"), ("volume", ".nii.gz"), ("with_nan", ".nii.gz"))}  # fmt: skip
    bad["truncated"].write_bytes(good_png.read_bytes()[:100])
    nib.save(nib.Nifti1Image(np.ones((*plane_shape, 5), np.float32), np.eye(4)), str(bad["volume"]))
    plane = np.ones(plane_shape, np.float32)
    plane[3, 4] = np.nan
    nib.save(nib.Nifti1Image(plane, np.eye(4)), str(bad["with_nan"]))
    return bad


def _rank_aborted_by_signal(log: str) -> bool:
    """Whether torchrun's failure report names a rank killed by SIGABRT or SIGSEGV (not a Python error)."""
    return "exitcode  : -6 " in log or "exitcode  : -11 " in log


def copy_bundle(name: str, root: Path, overlay: dict[str, Any]) -> BundleCopy:
    """Copy ``bundles/<name>`` (without ``models``/``eval``) to ``root/bundle`` and write ``overlay``.

    The runs get ``OMP_NUM_THREADS=1``, ``MEDXAI_CACHE=root/cache`` and start from ``root/elsewhere``.
    """
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    cwd = root / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "MEDXAI_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    copy = BundleCopy(bundle=bundle, cwd=cwd, env=env)
    copy.write_overlay(overlay)
    return copy


def trained_copy(name: str, root: Path, overlay: dict[str, Any]) -> BundleCopy:
    """:func:`copy_bundle`, then ``monai.bundle run training`` with ``train.json`` and the overlay."""
    copy = copy_bundle(name, root, overlay)
    copy.run("train.json", run_id="training")
    return copy


def copy_bundle_for_demo(name: str, root: Path, demo_overrides: dict[str, Any]) -> Path:
    """Copy ``bundles/<name>`` to ``root/bundles/<name>`` with ``demo_overrides`` merged into its ``demo.json``.

    Returns the copy's bundles folder, for ``medxai.cli.demo(bundle=name, bundles_dir=...)``: the demo then
    runs exactly as ``medxai demo`` does, at the smaller size the overrides set.
    """
    bundles = root / "bundles"
    bundle = bundles / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    demo_json = bundle / "configs" / "demo.json"
    demo_json.write_text(json.dumps({**json.loads(demo_json.read_text()), **demo_overrides}))
    return bundles


def assert_report_links_every_case(explain_dir: Path, cases: Sequence[str]) -> None:
    """The explain run's HTML report (``<explain_dir>/report``) has a page for each case and links it from
    ``index.html``, and no page loads anything from outside the file."""
    report = explain_dir / "report"
    index = (report / "index.html").read_text()
    assert cases, "no cases to look for in the report"
    for case in cases:
        page = report / f"{case}.html"
        assert page.is_file(), page
        assert f'href="{case}.html"' in index, case
        assert "http://" not in page.read_text() and "https://" not in page.read_text(), page
