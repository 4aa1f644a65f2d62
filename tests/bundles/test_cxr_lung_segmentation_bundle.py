"""End to end: the cxr_lung_segmentation bundle trains, evaluates, infers and explains; bad inputs are reported.

Runs ``python -m monai.bundle`` as a user does (a subprocess, from another working directory, ``--bundle_root``
pointing at a copy of the bundle) with a tiny overlay (64 px phantoms, 32 px network input), and checks what
each step writes and that the numbers agree with each other.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runner import (
    BundleCopy,
    REPO,
    assert_report_links_every_case,
    copy_bundle,
    predicted_cases,
    trained_copy,
    write_bad_images,
)
from monai.networks.nets import UNet
from PIL import Image

from medxai.data.io import load_image
from medxai.transforms import LungSegmentationd

BUNDLE = REPO / "bundles" / "cxr_lung_segmentation"

TINY = {
    "demo_args": {"num_cases": 20, "size": [64, 64], "fractions": {"training": 0.6, "validation": 0.2, "test": 0.2}},
    "image_size": [32, 32],
    "unet_channels": [4, 8, 16],
    "unet_strides": [2, 2],
    "unet_num_res_units": 0,
    "batch_size": 4,
    "learning_rate": 0.003,
    "num_iterations": 24,
    "val_interval": 2,
    "num_workers": 0,
}


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> BundleCopy:
    return trained_copy(BUNDLE.name, tmp_path_factory.mktemp("lungseg"), TINY)


def _test_cases(copy: BundleCopy) -> list[dict]:
    return json.loads(next(copy.cache.glob("demo_cxr_*/datalist.json")).read_text())["test"]


def _column(path: Path, name: str) -> np.ndarray:
    with open(path) as f:
        return np.array([float(row[name]) for row in csv.DictReader(f)])


def test_training_writes_a_plain_state_dict_and_tensorboard_scalars(trained_bundle):
    state = torch.load(trained_bundle.bundle / "models" / "model.pt", weights_only=True)
    assert any(key.startswith("model.") for key in state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in (trained_bundle.bundle / "eval").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    assert {"train_loss", "val_mean_dice", "val_mean_iou"} <= tags


def test_evaluate_writes_dice_and_iou_that_agree_per_image(trained_bundle):
    trained_bundle.run("train.json", "evaluate.json")
    out = trained_bundle.bundle / "eval"
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and report["n_cases"] == len(_test_cases(trained_bundle))
    assert 0.0 < report["mean_iou"] <= report["mean_dice"] <= 1.0
    dice, iou = _column(out / "val_mean_dice_raw.csv", "mean"), _column(out / "val_mean_iou_raw.csv", "mean")
    assert len(dice) == len(iou) == report["n_cases"]
    # binary masks: IoU = Dice / (2 - Dice) for every image (seed 001 eq. 2 and 7)
    np.testing.assert_allclose(iou, dice / (2 - dice), atol=1e-4)
    assert report["mean_dice"] == pytest.approx(dice.mean(), abs=1e-4)
    assert report["mean_iou"] == pytest.approx(iou.mean(), abs=1e-4)


def test_inference_writes_masks_in_input_geometry_and_matches_the_transform(trained_bundle):
    trained_bundle.run("inference.json")
    out = trained_bundle.bundle / "eval" / "inference"
    cases = _test_cases(trained_bundle)
    root = next(trained_bundle.cache.glob("demo_cxr_*"))
    assert json.loads((out / "bad_cases.json").read_text()) == []
    with open(out / "predictions.csv") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(Path(c["image"]).stem for c in cases)
    segment = LungSegmentationd(
        keys="image",
        bundle_dir=trained_bundle.bundle,
        mask_key="mask",
        config_files=trained_bundle.config_files("inference.json"),
    )
    for case in cases:
        name = Path(case["image"]).stem
        folder = out / name
        mask_png = np.array(Image.open(folder / f"{name}_lung.png"))
        assert mask_png.shape == (64, 64) and set(np.unique(mask_png)) <= {0, 255}
        nifti = nib.load(str(folder / f"{name}_lung.nii.gz")).get_fdata()[:, :, 0]
        np.testing.assert_array_equal(nifti.T * 255, mask_png)
        summary = json.loads((folder / f"{name}_summary.json").read_text())
        assert summary["lung_pixels"] == int((mask_png > 0).sum()) == int(rows[name]["lung_pixels"])
        # the transform other bundles use gives the very mask inference wrote
        data = segment({"image": load_image(root / case["image"], grayscale=True)})
        np.testing.assert_array_equal(data["mask"][0].numpy().T * 255, mask_png)
        cropped = np.array(Image.open(folder / f"{name}_lung_cropped.png"))
        if summary["bounding_box"] is not None:
            x0, x1, y0, y1 = summary["bounding_box"]
            assert cropped.shape == (y1 - y0, x1 - x0)


def test_explain_writes_gradcam_maps_of_the_lung_class(trained_bundle):
    trained_bundle.run("inference.json", "explain.json")
    out = trained_bundle.bundle / "eval" / "explain"
    maps = sorted(out.glob("*/*_gradcam_lung.nii.gz"))
    assert 1 <= len(maps) == len(list(out.glob("*/*_gradcam_lung.png")))
    assert_report_links_every_case(out, [p.parent.name for p in maps])
    for path in maps:
        values = nib.load(str(path)).get_fdata()
        assert values.shape[:2] == (64, 64) and values.min() >= 0.0 and np.isfinite(values).all()


def test_bad_inputs_are_reported_and_good_cases_still_written(trained_bundle, tmp_path):
    root = next(trained_bundle.cache.glob("demo_cxr_*"))
    good = _test_cases(trained_bundle)[:2]
    bad_images = write_bad_images(tmp_path, root / good[0]["image"])
    records = [{"image": str(root / c["image"])} for c in good]
    records += [{"image": str(bad_images[name])} for name in ("missing", "truncated")]
    bad, out = trained_bundle.infer_on(records, tmp_path)
    assert set(bad) == {"missing", "truncated"}
    assert "does not exist" in bad["missing"] or "No such file" in bad["missing"]
    assert "cannot read" in bad["truncated"]
    for case in good:
        name = Path(case["image"]).stem
        assert (out / name / f"{name}_lung.png").is_file() and (out / name / f"{name}_lung_cropped.png").is_file()
    assert predicted_cases(out) == sorted(Path(c["image"]).stem for c in good)


def test_multi_gpu_config_trains_on_two_cpu_ranks_with_gloo(tmp_path):
    copy = copy_bundle(BUNDLE.name, tmp_path, {**TINY, "batch_size": 2, "num_iterations": 6, "val_interval": 1})
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    log = copy.run("train.json", "multi_gpu_train.json", run_id="training", launcher=torchrun)
    # 12 training images on 2 ranks with batch 2: 3 iterations per epoch and rank
    assert "Epoch: 1/2, Iter: 3/3" in log and "val_mean_dice" in log
    # CheckpointSaver unwraps DistributedDataParallel: a plain UNet state dict that inference.json loads
    state = torch.load(copy.bundle / "models" / "model.pt", weights_only=True)
    network = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)
    network.load_state_dict(state)
