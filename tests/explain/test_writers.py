"""Writers: NIfTI round trips with the input's geometry, pixel-exact overlays, JSON, and safe case names."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib import colormaps
from monai.data import MetaTensor
from PIL import Image

from medxai.errors import InputError
from medxai.explain.boxes import boxes_from_map
from medxai.explain.text import TextExplanation
from medxai.explain.writers import (
    affine_from,
    check_case_name,
    render_montage,
    render_overlay,
    save_json,
    save_map_nifti,
    save_overlay_png,
    to_jsonable,
    top_slices,
)

AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 95.5], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]]
)


def test_nifti_round_trip_takes_the_affine_from_the_input_metatensor(tmp_path):
    rng = np.random.default_rng(0)
    saliency = rng.normal(size=(1, 6, 7, 5)).astype(np.float32)
    image = MetaTensor(torch.zeros(1, 6, 7, 5), affine=torch.as_tensor(AFFINE))
    path = save_map_nifti(saliency, tmp_path, "case-007", reference=image)
    assert path == tmp_path / "case-007_map.nii.gz"
    loaded = nib.load(str(path))
    np.testing.assert_allclose(loaded.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), saliency[0])  # values as they are, not normalised
    # a MetaTensor map brings its own affine; an explicit affine wins over everything
    own = MetaTensor(torch.from_numpy(saliency), affine=torch.as_tensor(AFFINE))
    np.testing.assert_allclose(nib.load(str(save_map_nifti(own, tmp_path, "own"))).affine, AFFINE)
    explicit = np.diag([1.0, 2.0, 3.0, 1.0])
    written = save_map_nifti(own, tmp_path, "explicit", affine=explicit)
    np.testing.assert_allclose(nib.load(str(written)).affine, explicit)


def test_lps_metadata_is_converted_to_ras_and_missing_geometry_is_an_error(tmp_path):
    lps = np.diag([0.5, 0.5, 2.0, 1.0])
    ras = affine_from({"affine": lps, "space": "LPS"})
    np.testing.assert_allclose(ras, np.diag([-0.5, -0.5, 2.0, 1.0]))
    with pytest.raises(InputError, match="no affine"):
        save_map_nifti(np.zeros((4, 4, 4)), tmp_path, "case1")


def test_2d_map_with_3x3_affine(tmp_path):
    saliency = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = save_map_nifti(saliency, tmp_path, "cxr", affine=np.array([[0.2, 0, 5.0], [0, 0.3, 6.0], [0, 0, 1]]))
    loaded = nib.load(str(path))
    np.testing.assert_allclose(loaded.affine, [[0.2, 0, 0, 5.0], [0, 0.3, 0, 6.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), saliency)


def test_overlay_pixels_box_colour_map_and_image():
    image = np.tile(np.linspace(0.0, 100.0, 20), (16, 1))  # gray ramp along columns
    saliency = np.zeros((16, 20))
    saliency[4:8, 10:15] = 1.0
    boxes = boxes_from_map(saliency)
    assert boxes[0]["min"] == [4, 10] and boxes[0]["max"] == [7, 14]
    rgb = render_overlay(image, saliency, boxes, cmap="jet", alpha=0.5)
    assert rgb.shape == (16, 20, 3) and rgb.dtype == np.uint8
    red = np.array([255, 0, 0])
    outline = np.zeros((16, 20), dtype=bool)
    outline[4, 10:15] = outline[7, 10:15] = outline[4:8, 10] = outline[4:8, 14] = True
    assert (rgb[outline] == red).all()  # the box, exactly on its rows and columns
    assert not (rgb[~outline] == red).all(axis=1).any()  # and nowhere else
    # where the map is zero the image shows unchanged
    expected_gray = np.round(255.0 * image / 100.0).astype(np.uint8)
    zero = saliency == 0
    np.testing.assert_array_equal(rgb[zero & ~outline], np.repeat(expected_gray[zero & ~outline][:, None], 3, axis=1))
    # where the map is at its maximum: half image, half the colour map's top colour (dark red for jet)
    top = np.asarray(colormaps["jet"](1.0)[:3])
    inner = (5, 12)
    np.testing.assert_allclose(rgb[inner], np.round(255.0 * (0.5 * image[inner] / 100.0 + 0.5 * top)), atol=1)
    assert rgb[inner][0] > rgb[inner][2]  # red-dominated, unlike the gray image


def test_montage_of_top_slices_and_3d_boxes():
    image = np.zeros((10, 12, 6))
    saliency = np.zeros((10, 12, 6))
    saliency[2:5, 3:6, 4] = 2.0
    saliency[6:8, 6:9, 1] = 1.0
    assert top_slices(saliency, 2) == [1, 4]
    boxes = boxes_from_map(saliency, threshold=0.9)  # only the strong blob on slice 4
    canvas = render_montage(image, saliency, boxes, count=2, box_width=1)
    assert canvas.shape == (10, 2 * 12, 3)  # two tiles side by side: slice 1 then slice 4
    second = canvas[:, 12:]
    assert (second[2, 3:6] == [255, 0, 0]).all() and (second[4, 3:6] == [255, 0, 0]).all()
    assert not (canvas[:, :12] == [255, 0, 0]).all(axis=2).any()  # the box does not cross slice 1
    # the weaker blob is coloured on slice 1 (the volume's map range is shared by all tiles)
    assert canvas[6, 7].any() and not canvas[0, 0].any()


def test_save_overlay_png_2d_and_3d(tmp_path):
    image = np.random.default_rng(0).uniform(size=(16, 20))
    saliency = np.zeros((16, 20))
    saliency[4:8, 10:15] = 1.0
    path = save_overlay_png(image, saliency, tmp_path, "case-1", boxes=boxes_from_map(saliency))
    with Image.open(path) as png:
        assert png.size == (20, 16) and png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), render_overlay(image, saliency, boxes_from_map(saliency)))
    volume = np.random.default_rng(1).uniform(size=(8, 8, 5))
    path3d = save_overlay_png(volume, volume, tmp_path, "case-1", suffix="_montage", count=4)
    with Image.open(path3d) as png:
        assert png.size == (16, 16)


def test_json_converts_numpy_torch_and_nan(tmp_path):
    explanation = TextExplanation("COVID-19 (probability 0.93).", "COVID-19", 0.93, "probability", "Grad-CAM")
    record = {
        "boxes": boxes_from_map(np.pad(np.ones((2, 2)), 1)),
        "probabilities": torch.tensor([0.25, 0.75]),
        "score": np.float32(0.5),
        "count": np.int64(3),
        "flag": np.bool_(True),
        "missing": float("nan"),
        "text": explanation,
        1: "integer key",
    }
    path = save_json(record, tmp_path, "case-2")
    loaded = json.loads(path.read_text())
    assert loaded["boxes"][0]["min"] == [1, 1] and loaded["boxes"][0]["max"] == [2, 2]
    assert loaded["probabilities"] == [0.25, 0.75] and loaded["score"] == 0.5 and loaded["count"] == 3
    assert loaded["flag"] is True and loaded["missing"] is None and loaded["1"] == "integer key"
    assert loaded["text"]["sentence"] == "COVID-19 (probability 0.93)." and loaded["text"]["probability"] == 0.93
    with pytest.raises(InputError, match="cannot write a object"):
        to_jsonable(object())


@pytest.mark.parametrize(
    "name, message",
    [
        ("../escape", r"'\.\.'"),
        ("a/b", r"'/' \(a path separator\) at position 1"),
        ("a\\b", r"path separator"),
        ("/abs", r"'/' \(a path separator\) at position 0"),
        (".hidden", r"'\.' at position 0"),
        ("", "empty"),
        ("x" * 200, "200 characters"),
        ("Doe John", r"' ' at position 3"),
    ],
)
def test_case_names_that_could_leave_the_folder_are_refused(tmp_path, name, message):
    with pytest.raises(InputError, match=message) as error:
        save_json({}, tmp_path / "out", name)
    if len(name) > 3:
        assert name not in str(error.value)  # the name (maybe a patient id) is not echoed
    assert not (tmp_path / "out").exists()


def test_valid_case_names():
    assert check_case_name("pt-3fa9c1e2b7d0") == "pt-3fa9c1e2b7d0"
    assert check_case_name("case_001.slice-3") == "case_001.slice-3"
