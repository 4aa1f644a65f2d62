"""Aspect-preserving canvas of seed 004 sec. 4: hand-computed sizes and padding, inverse, stretch comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resize

from medxai.errors import InputError
from medxai.transforms.canvas import AspectCanvas, AspectCanvasd, fit_size


def _disc(height: int, width: int, radius: float) -> np.ndarray:
    """(1, H, W) float32 image of a centred disc of ones on zeros."""
    yy, xx = np.mgrid[:height, :width]
    inside = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2 <= radius**2
    return inside[None].astype(np.float32)


def _extents(image: np.ndarray) -> tuple[int, int]:
    """Rows and columns holding a pixel above 0.5 in a (1, H, W) image."""
    mask = np.asarray(image)[0] > 0.5
    return int(mask.any(axis=1).sum()), int(mask.any(axis=0).sum())


@pytest.mark.parametrize(
    ("image_size", "canvas", "expected"),
    [
        ((100, 50), (200, 200), (200, 100)),  # s = min(2, 4) = 2
        ((30, 20), (45, 45), (45, 30)),  # s = min(1.5, 2.25) = 1.5
        ((3, 7), (10, 10), (4, 10)),  # s = 10/7, 3 * 10/7 = 4.29 -> 4
        ((5, 8), (10, 4), (3, 4)),  # s = 0.5, 5 * 0.5 = 2.5 -> 3 (halves round up)
        ((400, 300), (253, 349), (253, 190)),  # s = 253/400, 300 * 0.6325 = 189.75 -> 190
        ((64, 48), (64, 48), (64, 48)),  # already canvas-sized
    ],
)
def test_fit_size_by_hand(image_size, canvas, expected):
    assert fit_size(image_size, canvas) == expected


def test_tall_image_is_centred_on_a_square_canvas_with_exact_padding():
    image = np.full((1, 100, 50), 0.7, dtype=np.float32)
    out = AspectCanvas((200, 200), pad_value=-1.0)(image)
    assert isinstance(out, np.ndarray) and out.shape == (1, 200, 200) and out.dtype == np.float32
    # content 200 x 100 in columns 50..149, 50 columns of padding each side, exactly the pad value
    np.testing.assert_array_equal(out[:, :, :50], -1.0)
    np.testing.assert_array_equal(out[:, :, 150:], -1.0)
    # a constant image stays constant on the canvas (enlarged: no anti-aliasing filter)
    np.testing.assert_allclose(out[:, :, 50:150], 0.7, atol=1e-6)
    # aspect ratio within one pixel: 100 / 50 = 200 / 100
    rows, cols = (np.abs(out[0] - 0.7) < 1e-5).any(axis=1).sum(), (np.abs(out[0] - 0.7) < 1e-5).any(axis=0).sum()
    assert (rows, cols) == (200, 100)


def test_odd_padding_and_end_method():
    image = torch.ones(2, 100, 50)
    centred = AspectCanvas((200, 201))(image)
    assert isinstance(centred, torch.Tensor) and not isinstance(centred, MetaTensor)
    assert centred.shape == (2, 200, 201)
    cols = centred[0].sum(dim=0) > 0
    assert cols[50:150].all() and not cols[:50].any() and not cols[150:].any()  # 50 before, 51 after
    end = AspectCanvas((200, 201), method="end")(image)
    cols = end[0].sum(dim=0) > 0
    assert cols[:100].all() and not cols[100:].any()


def test_shrinking_keeps_a_constant_image_constant_without_anti_aliasing():
    image = np.ones((1, 60, 90), dtype=np.float32)
    out = AspectCanvas((20, 20), anti_aliasing=False)(image)  # s = 2/9 -> content 13 x 20, rows 3..15
    np.testing.assert_allclose(out[0, 3:16], 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[0, :3], 0.0)
    np.testing.assert_array_equal(out[0, 16:], 0.0)
    # MONAI's anti-aliasing pads with zeros: the interior stays 1, the content border is dimmed
    smoothed = AspectCanvas((20, 20))(image)
    np.testing.assert_allclose(smoothed[0, 6:13, 4:16], 1.0, atol=1e-4)
    assert smoothed[0, 3, 0] < 0.99


def test_canvas_sized_image_is_unchanged():
    rng = np.random.default_rng(0)
    image = MetaTensor(torch.from_numpy(rng.random((1, 24, 36), dtype=np.float32)))
    out = AspectCanvas((24, 36))(image)
    torch.testing.assert_close(out.as_tensor(), image.as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(out.affine, image.affine)


def test_metatensor_inverse_restores_shape_affine_and_smooth_values():
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(12.0), indexing="ij")
    smooth = (yy / 20 + xx / 12)[None]
    affine = torch.diag(torch.tensor([0.7, 0.7, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(smooth, affine=affine, meta={"filename_or_obj": "/data/slice_01.png"})
    canvas = AspectCanvas((40, 40))
    out = canvas(image)
    assert out.shape == (1, 40, 40)
    assert [op["class"] for op in out.applied_operations] == ["AspectCanvas"]
    # a content pixel keeps its world coordinates: canvas pixel (0, 8) is near original pixel (0, 0)
    world = out.affine @ torch.tensor([0.5, 8.5, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(world[:2], torch.tensor([0.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    back = canvas.inverse(out)
    assert back.shape == (1, 20, 12) and back.applied_operations == []
    torch.testing.assert_close(back.affine, affine)
    torch.testing.assert_close(back[0, 2:-2, 2:-2].as_tensor(), smooth[0, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_dictionary_version_per_key_modes_and_invertd():
    image = MetaTensor(torch.rand(1, 30, 90))
    mask = MetaTensor((torch.rand(1, 30, 90) > 0.5).float())
    pipeline = Compose(
        [
            AspectCanvasd(
                ["image", "mask"],
                (64, 48),
                mode=("bilinear", "nearest-exact"),
                anti_aliasing=(True, False),
                pad_value=(-1.0, 0.0),
            )
        ]
    )
    out = pipeline({"image": image, "mask": mask})
    assert out["image"].shape == out["mask"].shape == (1, 64, 48)  # content 16 x 48, rows 24..39
    assert set(out["mask"].unique().tolist()) == {0.0, 1.0}
    assert (out["image"][:, :24] == -1.0).all() and (out["image"][:, 40:] == -1.0).all()
    out["pred"] = out["image"].clone()
    inverted = Invertd(["pred"], pipeline, orig_keys="image")(out)
    assert inverted["pred"].shape == (1, 30, 90)
    back = pipeline.inverse(out)
    assert back["image"].shape == back["mask"].shape == (1, 30, 90)


def test_disc_stays_round_on_the_canvas_but_stretching_makes_an_ellipse():
    disc = _disc(40, 80, radius=15)  # a landscape image, like an axial CT slice
    on_canvas = AspectCanvas((64, 64))(disc)  # s = 0.8: content 32 x 64, radius 12
    rows, cols = _extents(on_canvas)
    assert abs(rows / cols - 1.0) < 0.1
    stretched = Resize((64, 64), mode="bilinear", anti_aliasing=True)(disc)  # rows x1.6, columns x0.8
    rows, cols = _extents(stretched)
    assert abs(rows / cols - 2.0) < 0.2


@pytest.mark.parametrize("size", [(0, 10), (10, -5), (10,), (10.5, 10), 224, (True, 10), "224x224"])
def test_bad_canvas_sizes_are_named(size):
    with pytest.raises(InputError, match="spatial_size"):
        AspectCanvas(size)


def test_bad_arguments_and_images_are_named():
    with pytest.raises(InputError, match="'trilinear'"):
        AspectCanvas((8, 8), mode="trilinear")
    with pytest.raises(InputError, match="'middle'"):
        AspectCanvas((8, 8), method="middle")
    with pytest.raises(InputError, match="pad_value"):
        AspectCanvas((8, 8), pad_value=float("nan"))
    with pytest.raises(InputError, match=r"\(1, 4, 4, 4\)"):
        AspectCanvas((8, 8))(np.zeros((1, 4, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(4, 4\)"):
        AspectCanvas((8, 8))(np.zeros((4, 4), dtype=np.float32))
    volume = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "/data/ct_07.nii.gz"})
    with pytest.raises(InputError, match="ct_07.nii.gz.*key 'image'"):
        AspectCanvasd("image", (8, 8))({"image": volume})
