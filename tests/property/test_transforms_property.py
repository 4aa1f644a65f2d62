"""Property-based tests of the array/dict transforms: odd shapes, dtypes and values either work or raise
:class:`medxai.errors.MedXAIError` naming the problem; no other exception, no NaN/Inf in an output.

Transforms that compute from intensities or resample them in float32 (CLAHE, unsharp mask, lung mask, the
volume and label checks, the canvas, the slice resize / crop-resize / sampling) must refuse NaN/Inf and
values that overflow float32. :class:`RandSampleSliced` only cuts one slice out (no arithmetic, the dtype
kept), so it is tested on finite values: NaN in the input is :class:`CheckVolumed`'s job, first in every
chain.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from property_strategies import arrays, names_offender, plausible

from medxai.errors import MedXAIError
from medxai.transforms import (
    CheckLabelMapd,
    CheckVolume,
    CheckVolumed,
    LungMask,
    LungMaskd,
    RandResizedCropSlicesd,
    RandSampleSliced,
    ResizeSlicesd,
    SampleSlicesd,
)
from medxai.transforms.canvas import AspectCanvas, AspectCanvasd
from medxai.transforms.contrast import CLAHE, UnsharpMask

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _numpy(out: object) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(out)


def works_or_refuses(call, array: np.ndarray, *values: object) -> np.ndarray | None:
    """Run ``call``: its output as numpy (asserted finite), or ``None`` after a MedXAIError naming the problem.

    Any other exception propagates and fails the test.
    """
    try:
        out = call()
    except MedXAIError as err:
        assert names_offender(err, array, *values), f"unclear error for shape {array.shape} {array.dtype}: {err}"
        event("refused")
        return None
    event("computed")
    result = _numpy(out)
    if result.dtype != np.bool_:
        assert np.isfinite(result.astype(np.float64)).all(), f"non-finite output for {array.shape} {array.dtype}"
    return result


# ---------------------------------------------------------------------------------------- contrast (2D)


@SETTINGS
@given(image=plausible((3,), -1e3, 1e3, (1, 2), 9) | arrays(ndims=(2, 3, 4), max_side=9))
@example(image=np.zeros((0, 0, 0), dtype=np.uint8))  # bug found: numpy's "need at least one array to stack"
@example(image=np.zeros((1, 1, 1), dtype=np.float32) + np.float32(0.5))  # 1-pixel image
@example(image=np.array([[[0.0, 1.0]]], dtype=np.float32))  # 1-row image
def test_clahe_property(image: np.ndarray) -> None:
    out = works_or_refuses(lambda: CLAHE()(image), image)
    if out is not None:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(image=plausible((3,), 0.0, 1.0, (1, 2), 9) | arrays(ndims=(2, 3, 4), max_side=9))
@example(image=np.full((1, 1, 1), np.nan, dtype=np.float32))
@example(image=np.zeros((2, 0, 3), dtype=np.float32))  # bug found: numpy's "zero-size array to reduction"
def test_unsharp_mask_property(image: np.ndarray) -> None:
    out = works_or_refuses(lambda: UnsharpMask()(torch.from_numpy(image)), image)
    if out is not None:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


# ------------------------------------------------------------------------------------------ canvas (2D)


@SETTINGS
@given(
    image=plausible((3,), -1e3, 1e3, (1, 3), 9) | arrays(ndims=(2, 3, 4), max_side=9),
    canvas=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
@example(image=np.array([[[3.4028236e38]]]), canvas=(1, 1))  # bug found: float64 beyond float32 became Inf
def test_aspect_canvas_property(image: np.ndarray, canvas: tuple[int, int]) -> None:
    out = works_or_refuses(lambda: AspectCanvas(canvas)(image), image)
    if out is not None:
        assert out.shape == (image.shape[0], *canvas) and out.dtype == np.float32
    out_d = works_or_refuses(lambda: AspectCanvasd("img", canvas)({"img": torch.from_numpy(image)})["img"], image)
    assert (out is None) == (out_d is None)


# -------------------------------------------------------------------------------------- CT volumes (3D)


@SETTINGS
@given(volume=plausible((4,), -1100, 300, (1,), 8, (np.int16, np.float32)) | arrays(ndims=(3, 4, 5), max_side=8))
@example(volume=np.zeros((1, 0, 4, 4), dtype=np.float32))  # bug found: IndexError in lung_mask
@example(volume=np.full((1, 5, 5, 2), np.nan, dtype=np.float32))  # bug found: NaN silently read as "not air"
def test_lung_mask_property(volume: np.ndarray) -> None:
    out = works_or_refuses(lambda: LungMask(allow_empty=True)(volume), volume)
    if out is not None:
        assert out.shape == volume.shape and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    masker = LungMaskd("ct", allow_empty=True)
    out_d = works_or_refuses(lambda: masker({"ct": torch.from_numpy(volume)})["lung_mask"], volume)
    assert (out is None) == (out_d is None)


@SETTINGS
@given(
    volume=plausible((4,), -1100, 1000, (1,), 5, (np.int16, np.float32)) | arrays(ndims=(2, 3, 4, 5), max_side=5),
    min_slices=st.integers(1, 3),
)
def test_check_volume_property(volume: np.ndarray, min_slices: int) -> None:
    tensor = torch.from_numpy(volume)
    out = works_or_refuses(lambda: CheckVolume(min_slices=min_slices)(tensor), volume, min_slices)
    checker = CheckVolumed("ct", min_slices=min_slices)
    out_d = works_or_refuses(lambda: checker({"ct": tensor})["ct"], volume, min_slices)
    assert (out is None) == (out_d is None)
    if out is not None:  # accepted: returned unchanged, and it really is a plausible CT in HU
        assert out.shape == volume.shape and out.ndim == 4 and out.shape[0] == 1 and out.shape[-1] >= min_slices
        assert out.max() > out.min() and out.min() <= -500 and out.max() >= -500


@SETTINGS
@given(
    label=plausible((4,), 0, 3, (1,), 5, (np.uint8, np.int16)) | arrays(ndims=(1, 2, 3, 4), max_side=5),
    num_classes=st.integers(2, 4),
)
@example(label=np.array([0.5], dtype=np.float16), num_classes=2)  # message did not name the fractional values
def test_check_label_map_property(label: np.ndarray, num_classes: int) -> None:
    checker = CheckLabelMapd("label", num_classes)
    out = works_or_refuses(lambda: checker({"label": torch.from_numpy(label)})["label"], label)
    if out is not None:
        values = out.astype(np.float64)
        assert out.shape == label.shape and np.all(values == np.round(values))
        assert values.min() >= 0 and values.max() < num_classes


# --------------------------------------------------------------------------- slice sampling / sectioning

#: plausible (C, H, W, D) volumes mixed with odd shapes, dtypes and values
volumes = plausible((4,), -1e3, 1e3, (1, 2)) | arrays(ndims=(2, 3, 4, 5), max_side=5)
finite_volumes = plausible((4,), -1e3, 1e3, (1, 2)) | arrays(ndims=(2, 3, 4, 5), max_side=5, finite=True)


@SETTINGS
@given(volume=finite_volumes, seed=st.integers(0, 2**16))
def test_rand_sample_slice_property(volume: np.ndarray, seed: int) -> None:
    sampler = RandSampleSliced(["image", "mask"]).set_random_state(seed=seed)
    tensor = torch.from_numpy(volume)
    out = works_or_refuses(lambda: sampler({"image": tensor, "mask": tensor.clone()})["image"], volume)
    if out is not None:
        assert out.shape == (*volume.shape[:3], 1)
        assert any(np.array_equal(out[..., 0], volume[..., z]) for z in range(volume.shape[3]))


@SETTINGS
@given(volume=volumes, num_slices=st.integers(1, 6))
@example(volume=np.zeros((0, 0, 0, 0), dtype=np.uint8), num_slices=1)  # bug found: torch's interpolate RuntimeError
def test_sample_slices_property(volume: np.ndarray, num_slices: int) -> None:
    sampler = SampleSlicesd("image", num_slices)
    out = works_or_refuses(lambda: sampler({"image": torch.from_numpy(volume)})["image"], volume)
    if out is not None:  # nearest-slice selection: every output slice is an input slice, in order
        assert out.shape == (*volume.shape[:3], num_slices) and out.dtype == np.float32
        depth = volume.shape[3]
        for i in range(num_slices):
            z = min(int(np.floor((i + 0.5) * depth / num_slices)), depth - 1)
            np.testing.assert_array_equal(out[..., i], volume[..., z].astype(np.float32))


@SETTINGS
@given(volume=volumes, size=st.integers(1, 4), seed=st.integers(0, 99))
@example(volume=np.zeros((0, 0, 0, 0), dtype=np.uint8), size=1, seed=0)  # bug found: adaptive_avg_pool3d RuntimeError
@example(volume=np.zeros((0, 0), dtype=np.uint8), size=1, seed=0)  # bug found: IndexError before the shape check
@example(volume=np.full((1, 1, 3, 1), 1.1342746e38, dtype=np.float32), size=1, seed=0)  # bug found: "area" sum -> Inf
def test_resize_and_crop_slices_property(volume: np.ndarray, size: int, seed: int) -> None:
    tensor = torch.from_numpy(volume)
    out = works_or_refuses(lambda: ResizeSlicesd("image", (size, size))({"image": tensor})["image"], volume)
    if out is not None:
        assert out.shape == (volume.shape[0], size, size, volume.shape[3])
    crop = RandResizedCropSlicesd("image", (size, size)).set_random_state(seed=seed)
    out = works_or_refuses(lambda: crop({"image": tensor})["image"], volume)
    if out is not None:
        assert out.shape == (volume.shape[0], size, size, volume.shape[3])
