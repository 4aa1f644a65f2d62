"""Slice-consistent crop, resize, flip and depth sampling of CT volumes (seed 003 sec. 4.1.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, Resize
from torchvision.transforms import RandomResizedCrop

from medxai.errors import InputError
from medxai.transforms import RandResizedCropSlicesd, ResizeSlicesd, SampleSlicesd, sample_crop_box

SPACING = (0.7, 0.8, 5.0)
ORIGIN = (-180.0, -200.0, -150.0)


def _affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    return affine


def _volume(array: np.ndarray, name: str = "/hospital/ward/ct_0007.nii.gz") -> MetaTensor:
    return MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(_affine()), meta={"filename_or_obj": name})


def _stack(base: np.ndarray, depth: int, step: float = 0.0) -> np.ndarray:
    """(H, W, D): slice k is ``base + step * k`` (identical copies when step is 0)."""
    return np.stack([base + np.float32(step * k) for k in range(depth)], axis=-1).astype(base.dtype)


def _box_in_ranges(box, height, width, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)) -> bool:
    """Whether a box drawn with area fraction in ``scale`` and ratio in ``ratio`` can round to ``box``.

    ``w = round(sqrt(T r))`` and ``h = round(sqrt(T / r))`` are each within 0.5 of the real values, so
    ``h w >= T - (h + w) / 2 - 1/4`` and ``(w - 1/2) / (h + 1/2) <= r <= (w + 1/2) / (h - 1/2)``.
    """
    top, left, h, w = box
    area = height * width
    inside = 0 <= top and top + h <= height and 0 <= left and left + w <= width
    area_ok = scale[0] * area - 0.5 * (h + w) - 0.25 <= h * w <= scale[1] * area
    ratio_ok = (w + 0.5) / (h - 0.5) >= ratio[0] and (w - 0.5) / (h + 0.5) <= ratio[1]
    return inside and area_ok and ratio_ok


class _TorchDraws:
    """The random draws of torchvision's ``get_params`` (torch's global generator) behind ``self.R``'s API."""

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, size=(1,)).item())


def test_sample_crop_box_is_torchvision_random_resized_crop():
    # fed the same random numbers, the box equals torchvision's RandomResizedCrop.get_params exactly
    for height, width in ((96, 96), (60, 80), (50, 90)):
        for seed in range(150):
            torch.manual_seed(seed)
            expected = RandomResizedCrop.get_params(torch.zeros(1, height, width), [0.9, 1.0], [3 / 4, 4 / 3])
            torch.manual_seed(seed)
            assert sample_crop_box(_TorchDraws(), height, width) == tuple(expected)


def test_sample_crop_box_area_and_aspect_ratio_over_many_seeds():
    for height, width in ((96, 96), (60, 80), (224, 180)):
        fractions, ratios = [], []
        for seed in range(400):
            box = sample_crop_box(np.random.RandomState(seed), height, width)
            assert _box_in_ranges(box, height, width), (height, width, seed, box)
            fractions.append(box[2] * box[3] / (height * width))
            ratios.append(box[3] / box[2])
        fractions, ratios = np.array(fractions), np.array(ratios)
        assert fractions.max() <= 1.0 and np.quantile(fractions, 0.05) >= 0.88
        assert 0.7 <= ratios.min() and ratios.max() <= 1.4
        assert len(set(np.round(fractions, 4))) > 20  # a spread of boxes, not one fallback
    # an image far outside the ratio range falls back to the central crop with the ratio clamped to 4/3
    assert sample_crop_box(np.random.RandomState(0), 30, 100) == (0, 30, 30, 40)
    with pytest.raises(InputError, match="scale"):
        sample_crop_box(np.random.RandomState(0), 10, 10, scale=(1.0, 0.5))


def test_rand_resized_crop_same_box_on_every_slice_and_key():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 100.0, size=(50, 70)).astype(np.float32)
    mask_base = (rng.random((50, 70)) > 0.7).astype(np.uint8)
    depth = 6
    data = {
        "image": _volume(_stack(base, depth, step=10.0)),  # slices differ by a constant
        "copies": _volume(_stack(base, depth)),  # identical slices
        "mask": _volume(_stack(mask_base, depth)),
    }
    crop = RandResizedCropSlicesd(["image", "copies", "mask"], size=(64, 48), mode=("area", "area", "nearest-exact"))
    crop.set_random_state(3)
    out = crop(data)
    top, left, h, w = crop.box
    assert _box_in_ranges(crop.box, 50, 70) and (h, w) != (50, 70)
    for key in out:
        assert tuple(out[key].shape) == (1, 64, 48, depth)
    # identical input slices give identical output slices; an offset per slice survives unchanged
    for k in range(depth):
        assert torch.equal(out["copies"][0, ..., k], out["copies"][0, ..., 0])
        np.testing.assert_allclose(out["image"][0, ..., k] - out["image"][0, ..., 0], 10.0 * k, atol=1e-3)
        assert torch.equal(out["mask"][0, ..., k], out["mask"][0, ..., 0])
    # each slice equals torch's 2D crop-and-resize of that slice with the same box
    reference = F.interpolate(torch.from_numpy(base[top : top + h, left : left + w])[None, None], (64, 48), mode="area")
    np.testing.assert_allclose(out["copies"][0, ..., 0].numpy(), reference[0, 0].numpy(), atol=1e-4)
    reference_mask = F.interpolate(
        torch.from_numpy(mask_base[top : top + h, left : left + w]).float()[None, None], (64, 48), mode="nearest-exact"
    )
    assert torch.equal(out["mask"][0, ..., 0].as_tensor(), reference_mask[0, 0])
    assert set(torch.unique(out["mask"]).tolist()) == {0.0, 1.0}  # masks stay binary


def test_rand_resized_crop_ranges_over_many_seeds_and_affine():
    volume = _volume(np.arange(40 * 56 * 3, dtype=np.float32).reshape(40, 56, 3))
    crop = RandResizedCropSlicesd("image", size=(16, 16))
    affine_in = _affine()
    boxes = set()
    for seed in range(120):
        crop.set_random_state(seed)
        out = crop({"image": volume})["image"]
        top, left, h, w = crop.box
        boxes.add(crop.box)
        assert _box_in_ranges(crop.box, 40, 56)
        assert tuple(out.shape) == (1, 16, 16, 3)
        affine = out.affine.numpy()
        np.testing.assert_allclose(np.diag(affine)[:3], [SPACING[0] * h / 16, SPACING[1] * w / 16, SPACING[2]])
        # the output field of view is the crop box: first and last pixel edges in world coordinates
        np.testing.assert_allclose(affine @ [-0.5, -0.5, 0, 1], affine_in @ [top - 0.5, left - 0.5, 0, 1], atol=1e-6)
        np.testing.assert_allclose(
            affine @ [15.5, 15.5, 2, 1], affine_in @ [top + h - 0.5, left + w - 0.5, 2, 1], atol=1e-6
        )
    assert len(boxes) > 15  # 25 distinct boxes fit a 40 x 56 slice at these seeds


def test_rand_resized_crop_deterministic_and_invertible():
    volume = _volume(np.random.default_rng(1).normal(size=(40, 50, 4)).astype(np.float32))

    def run(seed):
        pipeline = Compose([RandResizedCropSlicesd("image", size=(32, 32))])
        pipeline.set_random_state(seed)
        return pipeline, pipeline({"image": volume})

    (pipe_a, a), (_, b) = run(11), run(11)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], run(12)[1]["image"])
    restored = pipe_a.inverse(a)["image"]
    assert tuple(restored.shape) == (1, 40, 50, 4)
    np.testing.assert_allclose(restored.affine.numpy(), _affine(), atol=1e-6)


def test_rand_resized_crop_refuses_mismatched_keys_and_2d():
    crop = RandResizedCropSlicesd(["image", "mask"], size=(8, 8))
    data = {"image": _volume(np.zeros((20, 20, 2), np.float32)), "mask": _volume(np.zeros((20, 18, 2), np.float32))}
    with pytest.raises(InputError, match="ct_0007.nii.gz.*'mask'.*in-plane size"):
        crop(data)
    flat = MetaTensor(torch.zeros(1, 20, 20), meta={"filename_or_obj": "/x/Doe_J/slice_12.png"})
    with pytest.raises(InputError, match="slice_12.png.*volume") as err:
        RandResizedCropSlicesd("image", size=(8, 8))({"image": flat})
    assert "Doe_J" not in str(err.value)
    with pytest.raises(InputError, match="ratio"):
        RandResizedCropSlicesd("image", ratio=(2.0, 1.0))
    with pytest.raises(InputError, match="size"):
        RandResizedCropSlicesd("image", size=(224, 0))


def test_resize_slices_keeps_depth_and_matches_2d_resize():
    rng = np.random.default_rng(2)
    array = rng.normal(size=(50, 70, 5)).astype(np.float32)
    array[..., 2] = 1.0  # a uniform slice
    out = ResizeSlicesd(["image", "mask"], size=(32, 40), mode=("area", "nearest-exact"))(
        {"image": _volume(array), "mask": _volume((array > 0.5).astype(np.uint8))}
    )
    image = out["image"]
    assert tuple(image.shape) == (1, 32, 40, 5)
    for k in range(5):
        reference = F.interpolate(torch.from_numpy(array[..., k])[None, None], (32, 40), mode="area")[0, 0]
        np.testing.assert_allclose(image[0, ..., k].numpy(), reference.numpy(), atol=1e-5)
    assert torch.all(image[0, ..., 2] == 1.0)  # a uniform slice stays uniform, border included
    assert set(torch.unique(out["mask"]).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], [0.7 * 50 / 32, 0.8 * 70 / 40, 5.0])
    # MONAI's Gaussian anti-aliasing pads with zeros and darkens the border, the reason it is not the default
    ones = _volume(np.ones((100, 100, 2), np.float32))
    darkened = Resize((40, 40, -1), mode="bilinear", anti_aliasing=True)(ones)[0, ..., 0]
    assert float(darkened[0, 20]) < 0.93 and float(darkened[0, 0]) < 0.85 and float(darkened[20, 20]) > 0.999
    assert torch.all(ResizeSlicesd("image", size=(40, 40))({"image": ones})["image"] == 1.0)
    with pytest.raises(InputError, match="slice_3.png"):
        ResizeSlicesd("image")({"image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "a/slice_3.png"})})


def test_rand_flip_on_axis_0_flips_every_slice_and_key_alike():
    # no code of ours: MONAI's RandFlipd(spatial_axis=0) on (C, H, W, D) is seed 003's horizontal flip
    rng = np.random.default_rng(4)
    image = rng.normal(size=(20, 24, 5)).astype(np.float32)
    mask = (image > 0.8).astype(np.uint8)
    flip = RandFlipd(["image", "mask"], prob=0.5, spatial_axis=0)
    flipped_count = 0
    for seed in range(40):
        flip.set_random_state(seed)
        out = flip({"image": _volume(image), "mask": _volume(mask)})
        flipped = not np.array_equal(out["image"][0].numpy(), image)
        flipped_count += flipped
        for k in range(5):
            expected_image = image[::-1, :, k] if flipped else image[..., k]
            expected_mask = mask[::-1, :, k] if flipped else mask[..., k]
            np.testing.assert_array_equal(out["image"][0, ..., k].numpy(), expected_image)
            np.testing.assert_array_equal(out["mask"][0, ..., k].numpy(), expected_mask)
    assert 10 <= flipped_count <= 30  # about half of the volumes


@pytest.mark.parametrize("depth,num_slices", [(48, 16), (10, 16), (7, 7)])
def test_sample_slices_nearest_selection(depth, num_slices):
    values = np.broadcast_to(np.arange(depth, dtype=np.float32), (6, 5, depth)).copy()  # slice k holds k
    mask = np.broadcast_to((np.arange(depth) % 2).astype(np.uint8), (6, 5, depth)).copy()
    out = SampleSlicesd(["image", "mask"], num_slices)({"image": _volume(values), "mask": _volume(mask)})
    expected = [math.floor((i + 0.5) * depth / num_slices) for i in range(num_slices)]
    assert tuple(out["image"].shape) == (1, 6, 5, num_slices)
    np.testing.assert_array_equal(out["image"][0, 0, 0].numpy(), expected)  # real slices, in order
    np.testing.assert_array_equal(out["mask"][0, 0, 0].numpy(), np.array(expected) % 2)  # same slices for masks
    if depth == 48:
        assert expected == [3 * i + 1 for i in range(16)]
    np.testing.assert_allclose(out["image"].affine.numpy()[2, 2], SPACING[2] * depth / num_slices)
    with pytest.raises(InputError, match="num_slices"):
        SampleSlicesd("image", 0)


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI probes a GPU DICOM codec
@pytest.mark.real_data
def test_on_real_ct_slice_mask_fraction_follows_the_crop_box(shared_data):
    folder = shared_data / "covid_ct_infection_seg_medseg100"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    keys = ["image", "mask"]
    loader = Compose([LoadImaged(keys, reader="PILReader", image_only=True), EnsureChannelFirstd(keys)])
    entry = loader(
        {"image": folder / "train/images/slice_000.png", "mask": folder / "train/infection_mask/slice_000.png"}
    )
    image = entry["image"][0].numpy().astype(np.float32)
    mask = (entry["mask"][0].numpy() > 0).astype(np.uint8)
    assert 0.2 < mask.mean() < 0.5  # manifest: infection fraction 0.355
    crop = RandResizedCropSlicesd(["image", "mask"], mode=("area", "nearest-exact"))
    for seed in range(5):
        crop.set_random_state(seed)
        out = crop({"image": _volume(image[..., None]), "mask": _volume(mask[..., None])})
        top, left, h, w = crop.box
        assert tuple(out["image"].shape) == (1, 224, 224, 1)
        assert set(torch.unique(out["mask"]).tolist()) == {0.0, 1.0}
        inside = mask[top : top + h, left : left + w].mean()
        assert abs(float(out["mask"].mean()) - inside) < 0.01
        assert abs(float(out["image"].mean()) - image[top : top + h, left : left + w].mean()) < 1.0
