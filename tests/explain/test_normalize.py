"""Named normalisations: hand-computed values, per-sample behaviour, and the monai.visualize flip trap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.visualize.class_activation_maps import default_normalizer

from medxai.errors import InputError
from medxai.explain.normalize import (
    NORMALIZERS,
    max_abs,
    minmax,
    normalize,
    percentile,
    percentile_clip,
    rank,
    relu_max,
)


def _maps(*rows: list[float]) -> torch.Tensor:
    """(B, 1, 1, W) maps from rows of values."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, None, :]


def test_minmax_hand_values_per_sample_and_constant_gives_zeros():
    maps = _maps([2.0, 4.0, 6.0, 10.0], [-1.0, 0.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0])
    out = minmax(maps)
    expected = _maps([0.0, 0.25, 0.5, 1.0], [0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(out, expected)
    assert not torch.isnan(out).any()


def test_max_abs_keeps_sign_and_scales_by_largest_magnitude():
    maps = _maps([-4.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(max_abs(maps), _maps([-1.0, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]))


def test_relu_max_clips_negatives_then_scales():
    maps = _maps([-3.0, 1.0, 2.0, 4.0], [-1.0, -2.0, -3.0, -4.0])
    torch.testing.assert_close(relu_max(maps), _maps([0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]))


def test_percentile_clip_hand_values_and_matches_numpy_percentile():
    # |v| = 1..10; the 80th percentile (linear, numpy's rule) is 1 + 0.8 * 9 = 8.2
    values = [1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -9.0, 10.0]
    out = percentile_clip(_maps(values), q=80.0)
    expected = [v / 8.2 for v in [1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -8.2, 8.2]]
    torch.testing.assert_close(out, _maps(expected))
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 101))
    for q in (0.0, 37.5, 99.0, 100.0):
        torch.testing.assert_close(
            percentile(torch.from_numpy(data), q)[:, 0], torch.from_numpy(np.percentile(data, q, axis=1))
        )


def test_rank_average_ties_and_constant():
    out = rank(_maps([10.0, 30.0, 20.0, 20.0, 40.0], [1.0, 1.0, 1.0, 1.0, 1.0]))
    # ranks 1, 4, 2.5, 2.5, 5 -> (r - 1) / 4
    torch.testing.assert_close(out, _maps([0.0, 0.75, 0.375, 0.375, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]))


def test_numpy_in_numpy_out_and_3d_batch_is_per_sample():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 1, 3, 4, 5)).astype(np.float32)
    maps[1] *= 100.0
    for name, fn in NORMALIZERS.items():
        out = fn(maps)
        assert isinstance(out, np.ndarray) and out.shape == maps.shape, name
        # the batch result equals normalising each sample alone
        np.testing.assert_allclose(out[1:], fn(maps[1:]), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(out[:1], fn(maps[:1]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(normalize(maps, "percentile_clip", q=50.0), percentile_clip(maps, q=50.0))


def test_order_is_preserved_unlike_monai_default_normalizer():
    """monai's default_normalizer maps (min, max) to (1, 0): the most relevant pixel becomes the least."""
    maps = _maps([0.0, 1.0, 3.0, 7.0])
    ours = minmax(maps)
    theirs = torch.as_tensor(default_normalizer(maps))
    assert ours.flatten().argmax().item() == 3
    assert theirs.flatten().argmax().item() == 0  # the flip
    torch.testing.assert_close(theirs.float(), 1.0 - ours)


def test_errors_name_the_problem():
    with pytest.raises(InputError, match="NaN or Inf"):
        minmax(_maps([0.0, float("nan")]))
    with pytest.raises(InputError, match="shape"):
        minmax(torch.zeros(5))
    with pytest.raises(InputError, match="unknown normalisation 'zscore'"):
        normalize(_maps([1.0, 2.0]), "zscore")
    with pytest.raises(InputError, match="percentile must be in"):
        percentile_clip(_maps([1.0, 2.0]), q=120.0)


def test_integer_maps_become_float_and_gradients_flow():
    out = minmax(torch.tensor([[[[0, 2, 4]]]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.5, 1.0]]]]))
    maps = torch.tensor([[[[1.0, 2.0, 4.0]]]], requires_grad=True)
    max_abs(maps).sum().backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all()


def test_metatensor_keeps_its_affine():
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    maps = MetaTensor(torch.arange(8.0).reshape(1, 1, 2, 4), affine=affine)
    out = relu_max(maps)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine.double())
    torch.testing.assert_close(out.as_tensor(), torch.arange(8.0).reshape(1, 1, 2, 4) / 7.0)


def test_minmax_within_scales_inside_the_mask_and_zeroes_outside():
    from medxai.explain.normalize import minmax_within

    maps = torch.tensor([[[[0.9, 0.5, 0.6, 0.7]]], [[[0.2, 0.2, 0.9, 0.9]]]])
    masks = torch.tensor([[[[0, 1, 1, 1]]], [[[1, 1, 0, 0]]]])
    out = minmax_within(maps, masks)
    # sample 0: inside values 0.5, 0.6, 0.7 -> 0, 0.5, 1; the 0.9 outside is dropped, not the maximum
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0]))
    # sample 1: constant inside the mask -> zeros everywhere
    torch.testing.assert_close(out[1].flatten(), torch.zeros(4))
    numpy_out = minmax_within(maps.numpy(), masks.numpy())
    assert isinstance(numpy_out, np.ndarray) and np.allclose(numpy_out, out.numpy())
    with pytest.raises(InputError, match="do not match"):
        minmax_within(maps, masks[:, :, :, :2])
