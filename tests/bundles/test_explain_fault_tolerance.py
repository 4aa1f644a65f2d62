"""End to end: every bundle's explanation job skips bad cases, and the expensive ones resume where they stopped.

For each bundle, ``python -m monai.bundle run`` with ``inference.json`` + ``explain.json`` (+ a tiny overlay)
runs on a cohort of good demo cases plus a missing file and a truncated (corrupt) file, with the network's
untrained weights (the tests are about which cases get outputs, not about their accuracy): the job exits 0,
``eval/explain/bad_cases.json`` names both bad cases with their reasons (once, although the cohort is read
by up to three loaders) and every good case has its outputs.

Resuming: the CT MIL job (superpixel LIME/Kernel SHAP) is SIGKILLed once its first case is written and run
again; the finished cases are not recomputed (unchanged inode and mtime, and the handler's count in the log)
and the final outputs equal an uninterrupted run's. The same for the CXRNet comparison
(:class:`~medxai.engines.explanation_comparison.ExplanationComparisonHandler`), stopped after half the
cohort (explained on half the cohort, then on the whole one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bundle_runner import BundleCopy, copy_bundle
from monai.bundle import ConfigParser

MISSING, CORRUPT = "missing_case", "corrupt_case"

#: bundle -> (demo set, image suffix, tiny overlay)
BUNDLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "covid19_ct_mil_classification": ("ct", ".nii.gz", {
        "demo_args": {"num_cases": 6, "shape": [48, 48, 12], "fractions": {"training": 0.34, "validation": 0.16,
                                                                          "test": 0.5}},
        "backbone": "tiny", "image_size": [32, 32], "section_length": 4, "top_k": 2, "num_workers": 0,
        "explain_top_k": 1, "explain_num_samples": 24, "explain_superpixels": 6, "embedding_methods": ["pca"],
    }),
    "covid19_ct_transfer_classification": ("ct_slices", ".png", {
        "demo_args": {"num_cases": 12, "shape": [64, 48, 8], "slices_per_case": 1,
                      "fractions": {"training": 0.5, "validation": 0.17, "test": 0.33}},
        "backbone": "small_resnet", "pretrained": False, "canvas_hw": [32, 44], "num_workers": 0,
        "embedding_method": "pca",
    }),
    "covid19_cxr_ensemble_classification": ("cxr", ".png", {
        "demo_args": {"num_cases": 16, "size": [64, 64], "fractions": {"training": 0.5, "validation": 0.125,
                                                                       "test": 0.375}},
        "image_size": [32, 32], "backbone": "small_resnet", "num_workers": 0,
    }),
    "covid19_cxrnet_classification": ("cxr", ".png", {
        "demo_args": {"num_cases": 16, "size": [64, 64], "fractions": {"training": 0.5, "validation": 0.125,
                                                                       "test": 0.375}},
        "image_size": [32, 32], "backbone": "small_resnet", "decoder_channels": [8, 8, 8], "num_workers": 0,
    }),
    "cxr_lung_segmentation": ("cxr", ".png", {
        "demo_args": {"num_cases": 10, "size": [64, 64], "fractions": {"training": 0.6, "validation": 0.2,
                                                                       "test": 0.2}},
        "image_size": [32, 32], "unet_channels": [4, 8, 16], "unet_strides": [2, 2], "unet_num_res_units": 0,
        "num_workers": 0,
    }),
    "brain_ventricle_segmentation": ("brain", ".nii.gz", {
        "demo_args": {"num_subjects": 4, "shape": [48, 48, 30], "spacing_mm": [4.0, 4.0, 2.0],
                      "fractions": {"training": 0.5, "validation": 0.25, "test": 0.25}},
        "backbone": "small_resnet", "decoder_channels": [8, 8, 8], "unet_features": [4, 4, 8, 8, 16, 4],
        "pixdim": [4.0, 4.0], "field_of_view": [48, 48], "image_size": [48, 48], "num_workers": 0,
        "sw_batch_size": 8,
    }),
}  # fmt: skip


@contextmanager
def _cache(copy: BundleCopy):
    """Point ``MEDXAI_CACHE`` at the copy's private cache (as its subprocess runs see it) for the block."""
    old = os.environ.get("MEDXAI_CACHE")
    os.environ["MEDXAI_CACHE"] = str(copy.cache)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MEDXAI_CACHE", None)
        else:
            os.environ["MEDXAI_CACHE"] = old


def _case(path: str) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def _parser(copy: BundleCopy, *configs: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(copy.config_files(*configs))
    parser["bundle_root"] = str(copy.bundle)
    return parser


def _save_untrained_weights(copy: BundleCopy, name: str) -> None:
    """``models/model.pt``: the network as the explain job builds it, seed 0, untrained; the brain bundle also
    gets a small latent landscape fitted on random features of its bottleneck's width."""
    with _cache(copy):
        parser = _parser(copy, "inference.json", "explain.json")
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def")
        (copy.bundle / "models").mkdir(exist_ok=True)
        torch.save(network.state_dict(), copy.bundle / "models" / "model.pt")
        if name == "brain_ventricle_segmentation":
            from medxai.explain.latent_space import fit_latent_landscape, latent_features, save_latent_landscape

            layer = parser.get_parsed_content("latent_layer")
            width = latent_features(network.eval(), torch.rand(2, 1, 48, 48), layer).shape[1]
            rng = np.random.default_rng(0)
            landscape = fit_latent_landscape(rng.random((8, width)), rng.random(8), hidden_layer_sizes=(4,),
                                             grid_size=8, max_iter=50)  # fmt: skip
            save_latent_landscape(landscape, copy.bundle / "models" / "latent_landscape.npz")


def _cohort(
    copy: BundleCopy, kind: str, suffix: str, overlay: dict[str, Any], num_good: int = 3
) -> tuple[Path, list[str]]:
    """``num_good`` demo cases (test split first) plus a missing and a truncated image as the test split of a
    datalist beside the demo set (the other splits as they are); returns its path and the good case names."""
    from medxai.data.demo import resolve_datalist

    with _cache(copy):
        datalist = Path(resolve_datalist("", kind, **overlay["demo_args"]))
    content = json.loads(datalist.read_text())
    good = (content["test"] + content["validation"] + content["training"])[:num_good]
    assert len(good) == num_good
    template = good[0]
    (datalist.parent / "images" / f"{CORRUPT}{suffix}").write_bytes(
        (datalist.parent / template["image"]).read_bytes()[:120]
    )
    bad = [{**template, "image": f"images/{MISSING}{suffix}"}, {**template, "image": f"images/{CORRUPT}{suffix}"}]
    # the bad cases sit between good ones, as they would in a real cohort
    content["test"] = good[:1] + bad[:1] + good[1:2] + bad[1:] + good[2:]
    path = datalist.parent / f"explain_faults_{num_good}.json"
    path.write_text(json.dumps(content))
    return path, [_case(r["image"]) for r in good]


def _explain(copy: BundleCopy, datalist: Path, output_dir: Path, *extra: str) -> str:
    """``monai.bundle run`` with inference.json + explain.json + overlay on ``datalist``, outputs in ``output_dir``."""
    return copy.monai_bundle(
        "run", "--config_file", str(copy.config_files("inference.json", "explain.json")),
        "--bundle_root", str(copy.bundle), "--meta_file", str(copy.bundle / "configs" / "metadata.json"),
        "--logging_file", str(copy.bundle / "configs" / "logging.conf"),
        "--datalist", str(datalist), "--output_dir", str(output_dir), *extra,
    )  # fmt: skip


def _bad_cases(out: Path) -> dict[str, str]:
    entries = json.loads((out / "bad_cases.json").read_text())
    names = [entry["case"] for entry in entries]
    assert sorted(names) == [CORRUPT, MISSING], entries  # each bad case once, although read by several loaders
    return dict((entry["case"], entry["error"]) for entry in entries)


def _good_outputs(name: str, out: Path, good: list[str]) -> None:
    """Every good case has the outputs its bundle's explanation writes."""
    if name == "covid19_ct_mil_classification":
        for case in good:
            record = json.loads((out / case / f"{case}_superpixels.json").read_text())
            assert record["case"] == case and sorted(record["methods"]) == ["kernel_shap", "lime"]
            for entries in record["methods"].values():
                assert len(entries) == 1 and (out / case / entries[0]["overlay"]).is_file()
        assert (out / "embedding_pca.csv").is_file()
    elif name == "covid19_cxr_ensemble_classification":
        for method in ("gradcam", "gradcampp", "lrp"):
            for case in good:
                assert (out / method / case / f"{case}_summary.json").is_file(), (method, case)
    else:
        for case in good:
            assert (out / case / f"{case}_summary.json").is_file(), case
    if name in ("covid19_ct_transfer_classification", "covid19_cxr_ensemble_classification",
                "covid19_cxrnet_classification"):  # fmt: skip
        comparison = json.loads((out / "explanation_comparison.json").read_text())
        explained = sorted(p.name.removesuffix("_comparison.json") for p in (out / "comparison_cases").iterdir())
        assert comparison["n_cases"] == len(explained) >= 1 and set(explained) <= set(good)
    assert not any(MISSING in p.name or CORRUPT in p.name for p in out.rglob("*"))


@pytest.mark.parametrize("name", list(BUNDLES))
def test_explain_skips_a_missing_and_a_corrupt_case_and_writes_every_good_one(name, tmp_path):
    kind, suffix, overlay = BUNDLES[name]
    copy = copy_bundle(name, tmp_path, overlay)
    _save_untrained_weights(copy, name)
    datalist, good = _cohort(copy, kind, suffix, overlay)
    out = tmp_path / "explain"
    started = time.perf_counter()
    log = _explain(copy, datalist, out)
    print(f"{name}: explain run {time.perf_counter() - started:.1f} s")
    errors = _bad_cases(out)
    # named by file name only (no folder), with the reason; MONAI's LoadImaged in the brain bundle words it its way
    assert errors[MISSING] in (
        f"InputError: image file or folder {MISSING} does not exist.",
        f"FileNotFoundError: No such file or no access: '{MISSING}'",
    )
    assert errors[CORRUPT] in (
        f'InputError: cannot read nifti {CORRUPT}: ImageFileError: Cannot work out file type of "{CORRUPT}"',
        f"InputError: cannot read raster {CORRUPT}: OSError: image file is truncated",
        f'ImageFileError: Cannot work out file type of "{CORRUPT}"',
    )
    assert f"skipped case {MISSING}" in log and f"skipped case {CORRUPT}" in log
    assert str(datalist.parent) not in json.dumps(errors)  # no paths in the errors file
    _good_outputs(name, out, good)


# ------------------------------------------------------------------------------------------------ resume


def _snapshot(files: list[Path]) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _without_runtimes(path: Path) -> dict:
    record = json.loads(path.read_text())
    for entries in record["methods"].values():
        for entry in entries:
            entry.pop("runtime_s"), entry.pop("segmentation_runtime_s")
    return record


def _explain_process(copy: BundleCopy, datalist: Path, output_dir: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file",
        str(copy.config_files("inference.json", "explain.json")), "--bundle_root", str(copy.bundle),
        "--datalist", str(datalist), "--output_dir", str(output_dir),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=copy.cwd, env=copy.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_ct_mil_explanation_killed_midway_resumes_without_recomputing_finished_cases(tmp_path):
    name = "covid19_ct_mil_classification"
    kind, suffix, overlay = BUNDLES[name]
    # slower cases (more samples) so the kill lands between cases
    overlay = {**overlay, "explain_num_samples": 200, "explain_superpixels": 12}
    copy = copy_bundle(name, tmp_path, overlay)
    _save_untrained_weights(copy, name)
    datalist, good = _cohort(copy, kind, suffix, overlay)
    assert len(good) >= 3
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    _explain(copy, datalist, reference)

    process = _explain_process(copy, datalist, resumed)
    deadline = time.monotonic() + 240
    try:
        while not list(resumed.glob("*/*_superpixels.json")):
            assert process.poll() is None, "the explain job ended before its first case was written"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    done = sorted(p.parent.name for p in resumed.glob("*/*_superpixels.json"))
    assert 1 <= len(done) < len(good), done
    explained = [
        p for case in done for p in (resumed / case).iterdir() if "superpixels" in p.name or "_slice" in p.name
    ]
    kept = _snapshot(explained)

    log = _explain(copy, datalist, resumed)
    computed = len(good) - len(done)
    assert (f"SuperpixelExplanationHandler: {computed} case(s) computed, {len(done)} reused from an earlier run "
            "with the same settings, 0 failed") in log  # fmt: skip
    assert _snapshot([Path(p) for p in kept]) == kept  # the finished cases' files were not rewritten
    for case in good:
        json_name = f"{case}_superpixels.json"
        assert _without_runtimes(resumed / case / json_name) == _without_runtimes(reference / case / json_name)
        pngs = sorted(p.name for p in (reference / case).glob(f"{case}_*_slice*.png"))
        assert pngs and pngs == sorted(p.name for p in (resumed / case).glob(f"{case}_*_slice*.png"))
        for png in pngs:
            assert (resumed / case / png).read_bytes() == (reference / case / png).read_bytes()
    for table in ("embedding_pca.csv", "embedding_pca.png", "bad_cases.json"):
        assert (resumed / table).read_bytes() == (reference / table).read_bytes(), table

    # "explain_resume": false reaches the handler (which then recomputes every case: see the unit tests)
    with _cache(copy):
        parser = _parser(copy, "inference.json", "explain.json")
        parser["explain_resume"] = False
        handler = next(h for h in parser.get_parsed_content("handlers") if hasattr(h, "resume"))
    assert handler.resume is False
    assert handler.progress.bad_case_log.path == copy.bundle / "eval" / "explain" / "bad_cases.json"


def test_cxrnet_comparison_stopped_after_half_the_cohort_resumes_with_identical_outputs(tmp_path):
    """Batches of 2 over [g1, missing, g2, corrupt, g3, ...]: g1 and g2 are explained alone (their batch-mate is
    bad) in both runs, g3 alone in the first (half) run but with g4 in the whole run. A batch is reused only
    when all its cases were stored from that very batch (batched convolutions are not bit-identical across
    batch compositions), so g1 and g2 are reused and g3's batch is recomputed: then every output is
    byte-identical to an uninterrupted run's."""
    name = "covid19_cxrnet_classification"
    kind, suffix, overlay = BUNDLES[name]
    overlay = {**overlay, "explain_dataloader#batch_size": 2, "explain_target_class": None}  # every case
    copy = copy_bundle(name, tmp_path, overlay)
    _save_untrained_weights(copy, name)
    whole, good = _cohort(copy, kind, suffix, overlay, num_good=6)
    half, first = _cohort(copy, kind, suffix, overlay, num_good=3)
    assert first == good[:3]
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    _explain(copy, whole, reference)
    _explain(copy, half, resumed)  # the job "stopped" after the first half
    cases = resumed / "comparison_cases"
    assert sorted(p.name for p in cases.iterdir()) == sorted(f"{c}_comparison.json" for c in first)
    kept = _snapshot([cases / f"{c}_comparison.json" for c in first[:2]])

    log = _explain(copy, whole, resumed)
    pattern = r"ExplanationComparisonHandler: (\d+) case\(s\) computed, (\d+) reused"
    assert [tuple(map(int, m)) for m in re.findall(pattern, log)] == [(len(good) - 2, 2)]
    assert _snapshot([Path(p) for p in kept]) == kept  # g1 and g2 were not rewritten
    for file in ("explanation_comparison.json", "explanation_comparison.csv", "perturbation_curves.png"):
        assert (resumed / file).read_bytes() == (reference / file).read_bytes(), file
    assert sorted(p.name for p in cases.iterdir()) == sorted(p.name for p in (reference / "comparison_cases").iterdir())
    for path in sorted((reference / "comparison_cases").iterdir()):
        assert (cases / path.name).read_bytes() == path.read_bytes(), path.name
