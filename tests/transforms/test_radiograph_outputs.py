"""WriteRadiographOutputsd: files, geometry (MONAI's (X, Y) PNG layout vs display), sentence side, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medxai.errors import MedXAIError
from medxai.transforms.radiograph_outputs import WriteRadiographOutputsd

CLASSES = ("normal", "bacterial", "viral", "covid19")


def _case(map_columns: slice) -> dict:
    """A 40-column x 30-row radiograph as MONAI loads it: (1, X=40, Y=30); lungs at columns 5-17 and 22-34."""
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    image = MetaTensor(torch.rand(1, 40, 30), affine=torch.as_tensor(affine), meta={"filename_or_obj": "/d/cxr_7.png"})
    lung = torch.zeros(1, 40, 30)
    lung[:, 5:18, 4:26] = 1
    lung[:, 22:35, 4:26] = 1
    saliency = torch.zeros(1, 40, 30)
    saliency[:, map_columns, 18:24] = 1.0  # lower part of the rows 4-25 lung height
    return {
        "image_original": image,
        "map": saliency,
        "lung": lung,
        "pred": torch.tensor([0.1, 0.1, 0.2, 0.6]),
        "image": torch.rand(1, 16, 16),
    }


def test_writes_every_file_with_display_orientation_and_the_image_geometry(tmp_path):
    writer = WriteRadiographOutputsd(tmp_path, lung_key="lung", class_names=CLASSES, box_min_size=1)
    out = writer(_case(slice(8, 14)))
    summary = out["summary"]
    folder = tmp_path / "cxr_7"
    assert summary == json.loads((folder / "cxr_7_summary.json").read_text())
    assert summary["predicted_class"] == "covid19" and summary["probabilities"]["covid19"] == pytest.approx(0.6)
    # one box around the map block, in (X, Y) as loaded and in mm through the affine
    (box,) = summary["boxes"]
    assert box["min"] == [8, 18] and box["max"] == [13, 23]
    nifti = nib.load(str(folder / "cxr_7_map.nii.gz"))
    assert nifti.shape[:2] == (40, 30) and np.allclose(nifti.affine[:2, :2], np.diag([0.5, 0.5]))
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).squeeze(), out["map"][0].numpy())
    overlay = np.array(Image.open(folder / "cxr_7_overlay.png"))
    assert overlay.shape == (30, 40, 3)  # displayed as rows x columns
    # the box outline (red) sits at rows 18-23, columns 8-13 of the displayed image
    assert tuple(overlay[18, 10]) == (255, 0, 0) and tuple(overlay[10, 10]) != (255, 0, 0)
    side_by_side = np.array(Image.open(folder / "cxr_7_input.png"))
    assert side_by_side.shape == (30, 40 + 4 + 30)  # the 16 x 16 input scaled to the original's height


def test_sentence_names_the_lung_the_map_covers(tmp_path):
    writer = WriteRadiographOutputsd(tmp_path, lung_key="lung", class_names=CLASSES, box_min_size=1)
    # image left = patient's right (PA display)
    right = writer(_case(slice(8, 14)))["summary"]["sentence"]
    left = writer(_case(slice(26, 32)))["summary"]["sentence"]
    assert right.startswith("covid19 (probability 0.60)")
    assert "right lung" in right and "left lung" not in right
    assert "left lung" in left and "right lung" not in left


def test_without_a_lung_mask_the_sentence_says_so(tmp_path):
    writer = WriteRadiographOutputsd(tmp_path, lung_key=None, class_names=CLASSES, input_key=None)
    summary = writer(_case(slice(8, 14)))["summary"]
    assert "No lung mask was given" in summary["sentence"] and "input" not in summary["files"]


def test_bad_data_names_the_case(tmp_path):
    data = _case(slice(8, 14))
    data["map"] = torch.zeros(1, 20, 30)
    with pytest.raises(MedXAIError, match="case 'cxr_7'.*share one grid"):
        WriteRadiographOutputsd(tmp_path, lung_key="lung", class_names=CLASSES)(data)
    data = _case(slice(8, 14))
    data["pred"] = torch.tensor([0.5, float("nan"), 0.2, 0.3])
    with pytest.raises(MedXAIError, match="case 'cxr_7'.*4 finite probabilities"):
        WriteRadiographOutputsd(tmp_path, lung_key="lung", class_names=CLASSES)(data)
