"""LungSegmentationd and the lung-segmentation writers on a saved tiny checkpoint with known behaviour.

The "bundle" here has a 1x1 convolution as ``network_def``: lung logit ``10 x - 5`` and background logit 0
on the min-max scaled image ``x``, so a pixel is lung exactly where the scaled intensity exceeds 0.5, and the
expected masks can be written down by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medxai.data.io import load_image
from medxai.data.synthetic.io import save_png
from medxai.errors import InputError
from medxai.transforms import LungSegmentationd
from medxai.transforms.lung_segmentation import (
    WriteLungSegmentationd,
    load_lung_segmentation_bundle,
    lung_bounding_box_2d,
    write_lung_predictions,
)


def _threshold_bundle(root: Path, image_size=(20, 12)) -> Path:
    """A bundle folder whose network marks pixels with scaled intensity > 0.5 as lung."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "image_size": list(image_size),
        "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    state = {"weight": torch.tensor([[[[0.0]]], [[[10.0]]]]), "bias": torch.tensor([0.0, -5.0])}
    torch.save(state, root / "models" / "model.pt")
    return root


def _rectangle_image(shape=(40, 24), box=(8, 30, 4, 20), value=200.0) -> torch.Tensor:
    """(1, X, Y) image: 10 outside, ``value`` inside ``box`` (x0, x1, y0, y1), edges on even pixels."""
    image = torch.full((1, *shape), 10.0)
    image[0, box[0] : box[1], box[2] : box[3]] = value
    return image


def test_mask_of_a_bright_rectangle_is_the_rectangle(tmp_path):
    bundle = _threshold_bundle(tmp_path / "bundle")
    image = MetaTensor(_rectangle_image(), affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0])))
    out = LungSegmentationd(keys="image", bundle_dir=bundle, prob_key="lung_prob")({"image": image})
    expected = torch.zeros(1, 40, 24)
    expected[0, 8:30, 4:20] = 1
    # downsampled 2x to (20, 12) and back: edges on even pixels stay exact
    assert torch.equal(out["lung_mask"].as_tensor(), expected)
    assert torch.equal(out["lung_mask"].affine, image.affine)
    # deep inside: scaled intensity 1 -> p(lung) = sigmoid(5); far outside: 0 -> sigmoid(-5)
    assert out["lung_prob"][0, 18, 12].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), abs=1e-4)
    assert out["lung_prob"][0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-5.0)).item(), abs=1e-4)


def test_existing_mask_is_kept_unless_overwrite(tmp_path):
    bundle = _threshold_bundle(tmp_path / "bundle")
    given = torch.zeros(1, 40, 24)
    data = {"image": _rectangle_image(), "lung_mask": given}
    assert LungSegmentationd(keys="image", bundle_dir=bundle)(data)["lung_mask"] is given
    replaced = LungSegmentationd(keys="image", bundle_dir=bundle, overwrite=True)(data)["lung_mask"]
    assert replaced.sum().item() == 22 * 16


def test_png_orientation_round_trip(tmp_path):
    """A non-square PNG loaded the medxai way: mask written back as PNG lies on the same (row, column) pixels."""
    bundle = _threshold_bundle(tmp_path / "bundle", image_size=(40, 24))
    pixels = np.full((24, 40), 10, dtype=np.uint8)  # (rows, columns)
    pixels[2:10, 6:34] = 220  # a wide bright band in the upper rows
    save_png(pixels, tmp_path / "case_7.png")
    image = load_image(tmp_path / "case_7.png", grayscale=True)
    assert tuple(image.shape) == (1, 40, 24)  # MONAI's PILReader: X = columns, Y = rows
    data = LungSegmentationd(keys="image", bundle_dir=bundle, mask_key="pred")({"image": image})
    writer = WriteLungSegmentationd(tmp_path / "out", image_key="image", mask_key="pred", margin=1)
    writer(data)
    folder = tmp_path / "out" / "case_7"
    written = np.array(Image.open(folder / "case_7_lung.png"))
    assert written.shape == (24, 40)
    np.testing.assert_array_equal(written > 127, pixels > 127)
    nifti = nib.load(str(folder / "case_7_lung.nii.gz")).get_fdata()
    np.testing.assert_array_equal(nifti[:, :, 0], (pixels > 127).T.astype(float))
    cropped = np.array(Image.open(folder / "case_7_lung_cropped.png"))
    assert cropped.shape == (8 + 2, 28 + 2)  # rows 2..9 and columns 6..33, one pixel of margin
    assert cropped[1:-1, 1:-1].min() == 255 and cropped[0].max() == 0
    summary = json.loads((folder / "case_7_summary.json").read_text())
    assert summary["lung_pixels"] == 8 * 28
    assert summary["lung_fraction"] == pytest.approx(8 * 28 / (24 * 40))
    assert summary["bounding_box"] == [5, 35, 1, 11]
    csv_path = write_lung_predictions(tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "case,lung_pixels,lung_fraction,x0,x1,y0,y1"
    assert lines[1].startswith("case_7,224,0.233333,5,35,1,11")


def test_empty_mask_writes_uncropped_zero_image_and_null_box(tmp_path):
    image = MetaTensor(torch.rand(1, 6, 5), meta={"filename_or_obj": "/data/empty_case.png"})
    WriteLungSegmentationd(tmp_path, image_key="image", mask_key="pred")({"image": image, "pred": torch.zeros(1, 6, 5)})
    summary = json.loads((tmp_path / "empty_case" / "empty_case_summary.json").read_text())
    assert summary["bounding_box"] is None and summary["lung_pixels"] == 0
    cropped = np.array(Image.open(tmp_path / "empty_case" / "empty_case_lung_cropped.png"))
    assert cropped.shape == (5, 6) and cropped.max() == 0


def test_bounding_box_and_bad_inputs(tmp_path):
    mask = np.zeros((10, 8))
    mask[2:5, 3:7] = 1
    assert lung_bounding_box_2d(mask) == (2, 5, 3, 7)
    assert lung_bounding_box_2d(mask, margin=3) == (0, 8, 0, 8)
    with pytest.raises(InputError, match="does not exist"):
        load_lung_segmentation_bundle(_threshold_bundle(tmp_path / "b1"), checkpoint=tmp_path / "none.pt")
    bundle = _threshold_bundle(tmp_path / "b2")
    torch.save({"weight": torch.zeros(3, 1, 1, 1), "bias": torch.zeros(3)}, bundle / "models" / "model.pt")
    with pytest.raises(InputError, match="does not fit network_def"):
        load_lung_segmentation_bundle(bundle)
    segment = LungSegmentationd(keys="image", bundle_dir=_threshold_bundle(tmp_path / "b3"))
    with pytest.raises(InputError, match=r"\(1, X, Y\)"):
        segment({"image": torch.zeros(3, 8, 8)})
    nan_image = torch.zeros(1, 8, 8)
    nan_image[0, 1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        segment({"image": nan_image})


def test_config_overlay_is_merged_and_missing_config_named(tmp_path):
    bundle = _threshold_bundle(tmp_path / "bundle")
    (bundle / "overlay.json").write_text(json.dumps({"image_size": [40, 24]}))
    network, size = load_lung_segmentation_bundle(bundle, config_files=["configs/inference.json", "overlay.json"])
    assert size == (40, 24) and not network.training
    assert load_lung_segmentation_bundle(bundle)[1] == (20, 12)
    with pytest.raises(InputError, match="demo.json"):
        load_lung_segmentation_bundle(bundle, config_files=["configs/inference.json", "configs/demo.json"])
