"""End to end: the brain_ventricle_segmentation bundle trains on thick labels and thin images, evaluates slice Dice
by thickness with the latent-space landscape, infers, explains, and reports bad inputs.

Runs ``python -m monai.bundle`` as a user does on a copy of the bundle with a tiny overlay (six 48 x 48 x 30 phantom
heads at 4 mm in-plane, the CPU test trunk ``small_resnet``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import BundleCopy, REPO, assert_report_links_every_case, copy_bundle, predicted_cases, trained_copy
from monai.bundle import ConfigParser

from medxai.explain.latent_space import load_latent_landscape
from medxai.networks import SubpixelUNet

BUNDLE = REPO / "bundles" / "brain_ventricle_segmentation"

TINY = {
    "demo_args": {"num_subjects": 6, "shape": [48, 48, 30], "spacing_mm": [4.0, 4.0, 2.0],
                  "fractions": {"training": 0.5, "validation": 0.2, "test": 0.3}},  # fmt: skip
    "backbone": "small_resnet",
    "decoder_channels": [8, 8, 8],
    "unet_features": [4, 4, 8, 8, 16, 4],
    "pixdim": [4.0, 4.0],
    "field_of_view": [48, 48],
    "image_size": [48, 48],
    "batch_size": 4,
    "slices_per_volume": 2,
    "num_iterations": 8,
    "val_interval": 2,
    "num_workers": 0,
    "sw_batch_size": 8,
}


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("brain"), TINY)


def _datalist(copy: BundleCopy) -> tuple[Path, dict]:
    path = next(copy.cache.glob("demo_brain_*/datalist.json"))
    return path.parent, json.loads(path.read_text())


def _parser(copy: BundleCopy, *configs: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(copy.config_files(*configs))
    parser["bundle_root"] = str(copy.bundle)
    return parser


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_training_reads_thick_labels_and_only_the_images_of_thin_volumes(trained_bundle, monkeypatch):
    monkeypatch.setenv("MEDXAI_CACHE", str(trained_bundle.cache))
    parser = _parser(trained_bundle, "train.json")
    labelled = parser.get_parsed_content("train#records")
    unlabelled = parser.get_parsed_content("train#unlabeled_records")
    root, datalist = _datalist(trained_bundle)
    training = datalist["training"]
    assert sorted(Path(r["image"]).name for r in labelled) == sorted(
        Path(r["image"]).name for r in training if r["thickness"] == "thick"
    )
    assert all(set(r) == {"image"} for r in unlabelled)  # no label path: thin labels are never read
    assert sorted(Path(r["image"]).name for r in unlabelled) == sorted(
        Path(r["image"]).name for r in training if r["thickness"] == "thin"
    )
    validation = parser.get_parsed_content("validate#records")
    assert validation and all(r["thickness"] == "thick" for r in validation)


def test_training_writes_a_subpixel_unet_state_dict_and_both_losses(trained_bundle):
    state = torch.load(trained_bundle.bundle / "models" / "model.pt", weights_only=True)
    network = SubpixelUNet("small_resnet", in_channels=1, out_channels=4, decoder_channels=(8, 8, 8))
    network.load_state_dict(state["model"] if "model" in state else state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in (trained_bundle.bundle / "eval").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train_loss", "train_loss_supervised", "train_loss_unsupervised", "val_mean_dice"} <= tags


def test_evaluate_reports_slice_dice_by_thickness_and_the_latent_landscape(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")
    out = trained_bundle.bundle / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = _rows(out / "slice_dice.csv")
    _, datalist = _datalist(trained_bundle)
    assert metrics["n_volumes"] == len(datalist["test"]) == 4
    for group in ("thick", "thin"):
        values = [float(r["dice"]) for r in rows if r["group"] == group]
        assert values and metrics["slice_dice"][group] == pytest.approx(np.mean(values), abs=1e-9)
    assert metrics["slice_dice"]["mixed"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-9)
    # thin volumes have thick_factor (5) times the slices of thick ones: more slices in the thin group
    assert sum(r["group"] == "thin" for r in rows) > 3 * sum(r["group"] == "thick" for r in rows)
    table = json.loads((out / "dice_table.json").read_text())["table"]
    assert table["mixed"]["n_slices"] == len(rows)
    # the landscape: one point per evaluated slice; its saved model reproduces the expected Dice column
    latent = _rows(out / "latent_space.csv")
    assert {(r["case"], r["slice"]) for r in latent} == {(r["case"], r["slice"]) for r in rows}
    landscape = load_latent_landscape(trained_bundle.bundle / "models" / "latent_landscape.npz")
    coords = np.array([[float(r["pc1"]), float(r["pc2"])] for r in latent])
    np.testing.assert_allclose(landscape.predict_dice(coords), [float(r["expected_dice"]) for r in latent], atol=1e-4)
    np.testing.assert_allclose([float(r["dice"]) for r in latent], sorted_like(rows, latent), atol=1e-5)
    assert (out / "latent_space.png").stat().st_size > 10_000 and (out / "dice_by_group.png").is_file()


def sorted_like(rows: list[dict[str, str]], order: list[dict[str, str]]) -> list[float]:
    by_key = {(r["case"], r["slice"]): float(r["dice"]) for r in rows}
    return [by_key[(r["case"], r["slice"])] for r in order]


def test_inference_writes_label_maps_in_the_input_geometry_with_volumes(trained_bundle):
    trained_bundle.run("inference.json")
    out = trained_bundle.bundle / "eval" / "inference"
    root, datalist = _datalist(trained_bundle)
    assert json.loads((out / "bad_cases.json").read_text()) == []
    names = sorted(Path(r["image"]).name.replace(".nii.gz", "") for r in datalist["test"])
    assert predicted_cases(out) == names
    rows = {r["case"]: r for r in _rows(out / "predictions.csv")}
    for record in datalist["test"]:
        name = Path(record["image"]).name.replace(".nii.gz", "")
        source = nib.load(str(root / record["image"]))
        labels = nib.load(str(out / name / f"{name}_ventricles.nii.gz"))
        assert labels.shape == source.shape
        np.testing.assert_allclose(labels.affine, source.affine, atol=1e-5)
        values = np.asarray(labels.dataobj)
        summary = json.loads((out / name / f"{name}_summary.json").read_text())
        voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
        for index, cls in enumerate(("lateral", "third", "fourth"), start=1):
            assert summary["volume_ml"][cls] == pytest.approx((values == index).sum() * voxel_ml, rel=1e-6)
            assert float(rows[name][f"{cls}_ml"]) == pytest.approx(summary["volume_ml"][cls], abs=1e-3)
        if summary["slice_range"] is not None:
            z = np.flatnonzero(values.reshape(-1, values.shape[-1]).any(axis=0))
            assert summary["slice_range"] == [int(z[0]), int(z[-1])]
            assert summary["sentence"].startswith(f"Ventricles found on axial slices {z[0]}-{z[-1]} of {values.shape[-1]}")
        assert (out / name / f"{name}_overlay.png").is_file()


def test_explain_adds_the_expected_dice_of_each_slice(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")  # fits models/latent_landscape.npz
    trained_bundle.run("inference.json", "explain.json")
    out = trained_bundle.bundle / "eval" / "explain"
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/*_summary.json"))]
    assert len(summaries) == 4
    assert_report_links_every_case(out, [p.parent.name for p in sorted(out.glob("*/*_summary.json"))])
    found = [s for s in summaries if s["expected_dice"]]
    assert found, "no case with predicted ventricles to explain"
    for summary in found:
        per_slice = {int(k): v for k, v in summary["expected_dice"]["per_slice"].items()}
        assert all(0.0 <= v <= 1.0 for v in per_slice.values())
        assert summary["expected_dice"]["mean"] == pytest.approx(np.mean(list(per_slice.values())), abs=1e-3)
        first, last = summary["slice_range"]
        assert all(first <= k <= last for k in per_slice)
        assert "Expected Dice from the latent-space landscape" in summary["sentence"]


def test_bad_inputs_are_reported_and_good_volumes_still_written(trained_bundle, tmp_path):
    root, datalist = _datalist(trained_bundle)
    good = [str(root / r["image"]) for r in datalist["test"][:2]]
    affine = np.diag([4.0, 4.0, 2.0, 1.0])
    bad = {"missing": tmp_path / "missing.nii.gz", "truncated": tmp_path / "truncated.nii.gz",
           "plane": tmp_path / "plane.nii.gz", "with_nan": tmp_path / "with_nan.nii.gz"}  # fmt: skip
    bad["truncated"].write_bytes(Path(good[0]).read_bytes()[:200])
    nib.save(nib.Nifti1Image(np.random.rand(48, 48).astype(np.float32), affine), str(bad["plane"]))
    volume = np.random.rand(48, 48, 10).astype(np.float32)
    volume[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(volume, affine), str(bad["with_nan"]))
    errors, out = trained_bundle.infer_on([{"image": p} for p in good] + [{"image": str(p)} for p in bad.values()], tmp_path)
    assert set(errors) == set(bad)
    assert "NaN" in errors["with_nan"] and "2D image" in errors["plane"]
    assert predicted_cases(out) == sorted(Path(p).name.replace(".nii.gz", "") for p in good)


def test_labels_outside_the_class_range_stop_training_before_it_starts(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, TINY)
    image = np.random.rand(48, 48, 10).astype(np.float32)
    label = np.zeros((48, 48, 10), np.uint8)
    label[20:25, 20:25, 3:6] = 43  # FreeSurfer's raw aseg code for the right lateral ventricle
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name, array in (("img.nii.gz", image), ("seg_raw.nii.gz", label)):
        nib.save(nib.Nifti1Image(array, np.diag([4.0, 4.0, 2.0, 1.0])), str(dataset / name))
    record = {"image": "img.nii.gz", "label": "seg_raw.nii.gz"}
    splits = {"training": [{**record, "thickness": "thick"}, {"image": "img.nii.gz", "thickness": "thin"}],
              "validation": [{**record, "thickness": "thick"}]}  # fmt: skip
    (dataset / "datalist.json").write_text(json.dumps(splits))
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(copy.config_files("train.json")),
               "--bundle_root", str(copy.bundle), "--dataset_dir", str(dataset)]  # fmt: skip
    result = subprocess.run(command, cwd=copy.cwd, env=copy.env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    # the dataset check in initialize (medxai.data.validate) names the case and its label map
    assert "[training] img.nii.gz: label map seg_raw.nii.gz: labels [43] are outside the class range [0, 4)" in log
    assert "Epoch: 1/" not in log  # nothing trained


@pytest.mark.parametrize("overlay, latent", [("unet.json", "down_4"), ("unetplusplus.json", "network.conv_4_0")])
def test_baseline_overlays_build_networks_with_a_bottleneck(trained_bundle, monkeypatch, overlay, latent):
    monkeypatch.setenv("MEDXAI_CACHE", str(trained_bundle.cache))
    parser = _parser(trained_bundle, "train.json", overlay)
    network = parser.get_parsed_content("network_def").eval()
    layer = parser.get_parsed_content("latent_layer")
    assert layer == latent
    captured = []
    handle = network.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        logits = network(torch.rand(2, 1, 48, 48))
    handle.remove()
    assert logits.shape == (2, 4, 48, 48) and captured[0].shape[0] == 2 and captured[0].shape[-1] == 3
    assert parser.get_parsed_content("supervised_loss").lambda_ce == pytest.approx(0.25)  # eq. 15: 1 / (HWC)


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "num_iterations": 4, "val_interval": 1})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    # 2 labelled thick training volumes on 2 ranks, 2 volumes per batch: one iteration per epoch and rank
    assert "Epoch: 4/4, Iter: 1/1" in log and "val_mean_dice" in log
    state = torch.load(copy.bundle / "models" / "model.pt", weights_only=True)
    SubpixelUNet("small_resnet", in_channels=1, out_channels=4, decoder_channels=(8, 8, 8)).load_state_dict(state)
