"""CLAHE of seed 001 sec. III-A-2: scikit-image's numbers, the mask kept at 0, metadata, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage.exposure import equalize_adapthist

from medxai.errors import InputError
from medxai.transforms.contrast import CLAHE, CLAHEd, UnsharpMask, UnsharpMaskd


def _low_contrast_image(seed: int = 0) -> np.ndarray:
    """(1, 64, 64) image whose intensities span only 100..140 of 0..255, with a brighter disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 24) ** 2 < 150).astype(float)
    return (100 + 20 * disc + rng.normal(0, 4, (64, 64)).clip(-10, 10) + 10)[None].astype(np.float32)


def test_matches_scikit_image_on_the_unit_range_image():
    image = _low_contrast_image()
    out = CLAHE(clip_limit=0.02, kernel_size=16)(image)
    unit = (image[0] - image.min()) / (image.max() - image.min())
    expected = equalize_adapthist(unit.astype(np.float64), kernel_size=16, clip_limit=0.02)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert out.dtype == np.float32 and out.shape == (1, 64, 64)


def test_contrast_rises_and_a_fixed_range_is_used_when_given():
    image = _low_contrast_image()
    out = CLAHE(image_range=(0, 255))(image)
    # the input spans 40/255 = 0.16 of the range; CLAHE spreads it over most of [0, 1]
    assert float(out.max() - out.min()) > 0.6
    unit = np.clip(image[0] / 255.0, 0, 1)
    np.testing.assert_allclose(out[0], equalize_adapthist(unit.astype(np.float64)), atol=1e-6)


def test_background_outside_the_mask_stays_zero_and_inside_is_unchanged():
    image = _low_contrast_image() - 120.0  # standardised intensities: the lung holds negative values
    mask = np.zeros_like(image)
    mask[:, 8:56, 8:40] = 1
    clahe = CLAHE()  # the removed background (0) is mid-range here, not the minimum
    plain = clahe(image * mask)
    masked = clahe(image * mask, mask)
    assert plain[mask == 0].mean() > 0.05  # without the mask CLAHE maps the removed background above 0
    assert np.all(masked[mask == 0] == 0)
    np.testing.assert_array_equal(masked[mask == 1], plain[mask == 1])


def test_dictionary_version_keeps_metadata_and_uses_the_mask_key():
    image = MetaTensor(torch.from_numpy(_low_contrast_image()), meta={"filename_or_obj": "/data/cxr_0001.png"})
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:50, 10:50] = 1
    out = CLAHEd("image", mask_key="lung_mask")({"image": image, "lung_mask": mask})
    assert isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "/data/cxr_0001.png"
    assert float(out["image"][mask == 0].abs().max()) == 0.0
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    with pytest.raises(InputError, match="mask key 'lung_mask' is missing"):
        CLAHEd("image", mask_key="lung_mask")({"image": image})


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((1, 8, 8), 3.0), "is constant"),
        (np.zeros((8, 8)), r"\(C, H, W\)"),
        (np.where(np.eye(8)[None] > 0, np.nan, 1.0), "1 NaN|8 NaN"),
    ],
)
def test_bad_images_name_the_case_and_problem(image, message):
    named = MetaTensor(torch.as_tensor(image), meta={"filename_or_obj": "/x/bad_case.png"})
    with pytest.raises(InputError, match=message) as info:
        CLAHE()(named)
    assert "bad_case.png" in str(info.value)


# --- unsharp masking (seed 002 sec. II-A) ---


def _step_edge() -> np.ndarray:
    """(1, 32, 32) image: 0.3 on the left half, 0.6 on the right."""
    image = np.full((1, 32, 32), 0.3, np.float32)
    image[:, :, 16:] = 0.6
    return image


def test_unsharp_mask_is_x_plus_amount_times_x_minus_its_gaussian_blur():
    from scipy.ndimage import gaussian_filter

    image = _step_edge()
    out = UnsharpMask(radius=2.0, amount=0.5)(image)
    blurred = gaussian_filter(image[0].astype(np.float64), sigma=2.0, mode="nearest", truncate=4.0)
    expected = np.clip(image[0] + 0.5 * (image[0] - blurred), 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    # the edge steepens: just left of it darker than 0.3, just right brighter than 0.6, far away unchanged
    assert out[0, 10, 15] < 0.29 and out[0, 10, 16] > 0.61
    np.testing.assert_allclose(out[0, :, :4], 0.3, atol=1e-6)
    assert out.dtype == np.float32


def test_unsharp_mask_keeps_metadata_and_amount_zero_is_identity():
    image = MetaTensor(torch.from_numpy(_step_edge()), meta={"filename_or_obj": "/data/cxr_7.png"})
    out = UnsharpMaskd(keys="image", amount=0.0)({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/data/cxr_7.png"
    np.testing.assert_allclose(out.numpy(), _step_edge(), atol=1e-7)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((1, 8, 8), 2.0, np.float32), "expected [0, 1]"),
        (np.full((8, 8), 0.5, np.float32), "(C, H, W)"),
        (np.array([[[np.nan, 0.5], [0.5, 0.5]]], np.float32), "NaN/Inf"),
    ],
)
def test_unsharp_mask_rejects_bad_images(image, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        UnsharpMask()(image)


def test_unsharp_mask_rejects_bad_parameters():
    with pytest.raises(InputError, match="radius"):
        UnsharpMask(radius=0)
    with pytest.raises(InputError, match="amount"):
        UnsharpMask(amount=-1)
