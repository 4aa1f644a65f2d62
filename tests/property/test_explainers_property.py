"""Property-based tests of the explainers, the map normalisations and the box extraction.

Random batches (0-size axes, 1-pixel images, 2D/3D/other ranks, wrong channel counts, every dtype, NaN,
+-Inf, constant and huge values) and targets go through ``create_explainer(name, tiny CNN)``: each call
returns finite maps (B, 1, *spatial) or raises :class:`medxai.errors.MedXAIError` naming the problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from property_strategies import arrays, elements, names_offender, plausible

from medxai.errors import MedXAIError
from medxai.explain import create_explainer
from medxai.explain.boxes import boxes_from_map
from medxai.explain.normalize import NORMALIZERS, minmax_within, normalize
from medxai.transforms.explanation_map import ExplanationMapd

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


class TinyCNN(torch.nn.Module):
    """conv (1 -> 3 channels) -> ReLU -> global average -> linear (2 classes), 2D or 3D."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, 3, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.pool = (nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d)(1)
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


torch.manual_seed(0)
MODELS = {2: TinyCNN(2).eval(), 3: TinyCNN(3).eval()}

EXPLAINERS = {
    "gradcam": {"target_layer": "conv"},
    "gradcam++": {"target_layer": "conv"},
    "saliency": {},
    "occlusion": {"patch_size": 2},
    "lime": {"num_samples": 10},
    "kernel_shap": {"num_samples": 10},
    "lrp": {},
}

DTYPES = (np.float32, np.float32, np.float64, np.float16, np.uint8, np.int16, np.bool_)


def _values(shape: tuple[int, ...]) -> st.SearchStrategy:
    """Arrays of ``shape``: any dtype; finite, with NaN/+-Inf, or constant values."""
    return st.sampled_from(DTYPES).flatmap(
        lambda dtype: st.one_of(
            hnp.arrays(dtype, shape, elements=elements(dtype, finite=True)),
            hnp.arrays(dtype, shape, elements=elements(dtype, finite=False)),
            elements(dtype, finite=False).map(lambda v: np.full(shape, v, dtype=dtype)),
        )
    )


@st.composite
def batch_arrays(draw: st.DrawFn) -> np.ndarray:
    """(B, C, *spatial) of rank 3..6: mostly (1-2, 1, H, W) and (1, 1, D, H, W); 0-size axes, wrong channels."""
    ndim = draw(st.sampled_from((3, 4, 4, 4, 5, 5, 6)))
    side = st.integers(1, 6) if draw(st.booleans()) else st.integers(0, 6)
    spatial = draw(st.lists(side, min_size=ndim - 2, max_size=ndim - 2))
    shape = (draw(st.sampled_from((1, 1, 2, 0))), draw(st.sampled_from((1, 1, 1, 3, 0))), *spatial)
    return draw(_values(shape))


#: batches the tiny CNN takes: float32, one channel, 2D or 3D, finite values up to 1e3 in magnitude
model_batches = plausible((3, 4), -1e3, 1e3, (1, 2), 6, (np.float32,)).map(lambda a: a[:, None])


def works_or_refuses(call, x: np.ndarray, *values: object) -> torch.Tensor | None:
    try:
        out = call()
    except MedXAIError as err:
        assert names_offender(err, x, *values), f"unclear error for x {x.shape} {x.dtype}: {err}"
        event("refused")
        return None
    event("computed")
    assert bool(torch.isfinite(out).all()), f"non-finite map for x {x.shape} {x.dtype}"
    return out


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
@SETTINGS
@given(x=model_batches | batch_arrays(), target=st.sampled_from((None, 0, 1, 2, -1)))
# bugs found (each was a bare torch/numpy/sklearn error or NaN maps before the fix):
@example(x=np.zeros((1, 1, 1, 1), dtype=np.float64), target=None)  # "Input type (double) and bias type (float)"
@example(x=np.zeros((1, 0, 1, 1), dtype=np.float32), target=None)  # conv error; LIME/SHAP "zero-size array"
@example(x=np.zeros((1, 3, 1, 1), dtype=np.float32), target=None)  # "expected input ... to have 1 channels"
@example(x=np.zeros((1, 1, 1, 1), dtype=np.float32), target=None)  # occlusion's message lacked the shape
@example(x=np.full((1, 1, 4, 4), 3e38, dtype=np.float32), target=1)  # NaN maps; LIME "Input y contains NaN"
@example(x=np.array([[[[3e38, -3e38], [0.0, 1.0]]]], dtype=np.float32), target=0)
@example(x=np.zeros((1, 1, 3, 3, 3), dtype=np.float32), target=None)  # 3D batch, 3D model
def test_explainer_property(name: str, x: np.ndarray, target: int | None) -> None:
    model = MODELS[3 if x.ndim == 5 else 2]
    explainer = create_explainer(name, model, **EXPLAINERS[name])
    maps = works_or_refuses(lambda: explainer(torch.from_numpy(x), target), x, target)
    if maps is not None:
        assert tuple(maps.shape) == (x.shape[0], 1, *x.shape[2:])
        assert maps.dtype == torch.from_numpy(x).dtype


@SETTINGS
@given(
    image=_values((1, 5, 5)) | _values((1, 1, 1)) | _values((3, 4, 4)) | _values((1, 0, 4)),
    pred=st.sampled_from(([0.2, 0.8], [1.0], [])),
)
@example(image=np.zeros((1, 5, 5), dtype=np.float32), pred=[])  # bug found: "a Tensor with 0 elements cannot be ..."
@example(image=np.zeros((3, 4, 4), dtype=np.float32), pred=[0.2, 0.8])  # wrong channels: the message names the case
def test_explanation_map_transform_property(image: np.ndarray, pred: list[float]) -> None:
    explainer = create_explainer("gradcam", MODELS[2], target_layer="conv")
    transform = ExplanationMapd("image", explainer)
    data = {"image": torch.from_numpy(image), "pred": torch.tensor(pred)}
    out = works_or_refuses(lambda: transform(data)["map"], image, pred)
    if out is not None:
        assert tuple(out.shape) == (1, *image.shape[1:])


@pytest.mark.parametrize("method", sorted(NORMALIZERS))
@SETTINGS
@given(maps=plausible((2, 3, 4), -1e30, 1e30, (1, 2)) | arrays(ndims=(1, 2, 3, 4), max_side=5), as_tensor=st.booleans())
@example(maps=np.array([[3e38, -1e38]], dtype=np.float32), as_tensor=False)  # bug found: minmax NaN (max - min = Inf)
@example(maps=np.array([[65000, -65000]], dtype=np.float16), as_tensor=True)  # the same in float16
def test_normalize_property(method: str, maps: np.ndarray, as_tensor: bool) -> None:
    value = torch.from_numpy(maps) if as_tensor else maps
    try:
        out = normalize(value, method)
    except MedXAIError as err:
        assert names_offender(err, maps), f"unclear error for {maps.shape} {maps.dtype}: {err}"
        return
    out = out.numpy() if isinstance(out, torch.Tensor) else out
    assert out.shape == maps.shape and np.issubdtype(out.dtype, np.floating)
    assert np.isfinite(out).all(), f"{method} gave non-finite values for {maps.shape} {maps.dtype}"
    low = -1.0 if method in ("max_abs", "percentile_clip") else 0.0
    assert out.min() >= low - 1e-6 and out.max() <= 1.0 + 1e-6


@SETTINGS
@given(maps=arrays(ndims=(2, 3, 4), max_side=5), masks=st.integers(0, 2))
@example(maps=np.array([[3e38, -1e38, 0.0]], dtype=np.float32), masks=2)  # bug found: NaN as in minmax
def test_minmax_within_property(maps: np.ndarray, masks: int) -> None:
    mask = (np.arange(maps.size).reshape(maps.shape) % 3 < masks) if maps.size else np.zeros(maps.shape, bool)
    try:
        out = minmax_within(maps, mask)
    except MedXAIError as err:
        assert names_offender(err, maps), str(err)
        return
    assert out.shape == maps.shape and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6 and np.all(out[~mask] == 0)


@SETTINGS
@given(
    saliency=plausible((2, 3), -10, 10, (2, 4, 6), 6) | arrays(ndims=(1, 2, 3, 4), max_side=6),
    threshold=st.sampled_from((0.5, 1.0, 0.0, 2.0, float("nan"))),
    mode=st.sampled_from(("relative", "absolute", "otsu", "bogus")),
)
@example(saliency=np.zeros((0, 0), dtype=np.uint8), threshold=0.5, mode="relative")  # bug found: numpy zero-size max
def test_boxes_from_map_property(saliency: np.ndarray, threshold: float, mode: str) -> None:
    try:
        boxes = boxes_from_map(saliency, threshold=threshold, mode=mode)
    except MedXAIError as err:
        assert names_offender(err, saliency, threshold, mode), str(err)
        return
    assert saliency.ndim in (2, 3)
    covered = 0
    for box in boxes:
        assert len(box["min"]) == len(box["max"]) == saliency.ndim
        assert all(0 <= a <= b < s for a, b, s in zip(box["min"], box["max"], saliency.shape))
        assert np.isfinite([box["score_max"], box["score_mean"], *box["centroid"]]).all()
        covered += box["num_voxels"]
    assert covered <= saliency.size
