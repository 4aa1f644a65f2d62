from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medxai.errors import InputError
from medxai.explain.superpixels import (
    SlicSuperpixels,
    baseline_image,
    compose,
    paint,
    relabel_segments,
    slic_superpixels,
)


def _quadrants(height: int = 32, width: int = 32) -> torch.Tensor:
    """(1, H, W) image of four constant quadrants 0, 1, 2, 3."""
    image = torch.zeros(1, height, width)
    image[:, : height // 2, width // 2 :] = 1.0
    image[:, height // 2 :, : width // 2] = 2.0
    image[:, height // 2 :, width // 2 :] = 3.0
    return image


def _labels_respect(regions: np.ndarray, labels: np.ndarray) -> bool:
    """True when no superpixel spans two regions."""
    return all(len(np.unique(regions[labels == k])) == 1 for k in np.unique(labels))


def test_slic_2d_grayscale_follows_intensity_edges_and_labels_from_zero():
    image = _quadrants()
    labels = slic_superpixels(image, n_segments=4, compactness=0.01, sigma=0)
    assert labels.shape == (32, 32) and labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    regions = image[0].numpy()
    assert _labels_respect(regions, labels)
    # each quadrant is exactly one superpixel
    assert len({int(labels[r, c]) for r, c in [(0, 0), (0, 31), (31, 0), (31, 31)]}) == 4


def test_slic_is_invariant_to_intensity_units():
    """Min-max scaling before SLIC: Hounsfield units and [0, 1] intensities give the same superpixels."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 24, 24))).float()
    hu = image * 1400.0 - 1000.0
    assert np.array_equal(slic_superpixels(image, n_segments=12), slic_superpixels(hu, n_segments=12))


def test_slic_3d_supervoxels_respect_the_boundary_between_two_halves():
    volume = torch.zeros(1, 12, 16, 16)
    volume[:, 6:] = 1.0
    labels = slic_superpixels(volume, n_segments=8, compactness=0.01, sigma=0)
    assert labels.shape == (12, 16, 16)
    assert _labels_respect(volume[0].numpy(), labels)
    assert len(np.unique(labels[:6])) >= 1 and len(np.unique(labels[6:])) >= 1
    assert set(np.unique(labels[:6])).isdisjoint(np.unique(labels[6:]))


def test_slic_spacing_changes_supervoxels_of_anisotropic_volumes():
    volume = torch.from_numpy(np.random.default_rng(1).random((1, 8, 16, 16))).float()
    iso = slic_superpixels(volume, n_segments=16, compactness=1.0)
    thick = slic_superpixels(volume, n_segments=16, compactness=1.0, spacing=(5.0, 1.0, 1.0))
    assert not np.array_equal(iso, thick)


def test_segmenter_batches_multichannel_and_is_deterministic():
    x = torch.stack([_quadrants(), _quadrants().flip(-1)])  # (2, 1, 32, 32)
    x2 = torch.cat([x, x * 2], dim=1)  # two channels
    seg = SlicSuperpixels(n_segments=4, compactness=0.01, sigma=0)
    labels = seg(x)
    assert labels.shape == (2, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(labels, seg(x))
    assert torch.equal(seg(x2), labels)  # second channel proportional: same edges
    # the flipped sample has the flipped partition
    assert _labels_respect(labels[0].flip(-1).numpy(), labels[1].numpy())


def test_relabel_segments_keeps_order():
    assert relabel_segments(torch.tensor([[5, 5], [9, 2]])).tolist() == [[1, 1], [2, 0]]


def test_mean_baseline_fills_each_superpixel_with_its_channel_means():
    image = torch.tensor([[[1.0, 3.0], [10.0, 20.0]], [[0.0, 2.0], [4.0, 8.0]]])  # (2, 2, 2)
    segments = torch.tensor([[0, 0], [1, 1]])
    filled = baseline_image(image, segments, "mean")
    expected = torch.tensor([[[2.0, 2.0], [15.0, 15.0]], [[1.0, 1.0], [6.0, 6.0]]])
    assert torch.equal(filled, expected)


def test_blur_baseline_keeps_constants_and_smooths():
    constant = torch.full((1, 9, 9), -1000.0)
    segments = torch.zeros(9, 9, dtype=torch.long)
    assert torch.allclose(baseline_image(constant, segments, "blur", blur_sigma=2.0), constant)  # replicate padding
    spike = torch.zeros(1, 11, 11, 11)  # the kernel (radius 4 sigma) stays inside: mass is conserved
    spike[0, 5, 5, 5] = 1.0
    blurred = baseline_image(spike, torch.zeros(11, 11, 11, dtype=torch.long), "blur", blur_sigma=1.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    # the centre keeps three 1D centre weights; MONAI's "erf" kernel integrates the Gaussian over each
    # voxel: erf(0.5 / (sigma sqrt 2)) per axis
    assert float(blurred[0, 5, 5, 5]) == pytest.approx(math.erf(0.5 / math.sqrt(2)) ** 3, rel=1e-4)
    # symmetric in all three axes
    assert blurred[0, 4, 5, 5] == pytest.approx(float(blurred[0, 5, 4, 5])) == pytest.approx(float(blurred[0, 5, 5, 4]))


def test_constant_baselines_and_errors():
    image = torch.rand(1, 4, 4)
    segments = torch.zeros(4, 4, dtype=torch.long)
    assert torch.equal(baseline_image(image, segments, "zero"), torch.zeros_like(image))
    assert torch.equal(baseline_image(image, segments, -1000), torch.full_like(image, -1000.0))
    with pytest.raises(InputError, match="baseline"):
        baseline_image(image, segments, "inpaint")
    with pytest.raises(InputError, match="blur_sigma"):
        baseline_image(image, segments, "blur", blur_sigma=0)


def test_compose_switches_superpixels_and_keeps_the_rest_exact():
    image = torch.tensor([[[1.5, 2.5], [3.5, 4.5]]])
    baseline = torch.full_like(image, -7.0)
    segments = torch.tensor([[0, 1], [2, 2]])
    masks = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out = compose(image, baseline, segments, masks)
    assert out.shape == (3, 1, 2, 2)
    assert out[0, 0].tolist() == [[1.5, -7.0], [3.5, 4.5]]
    assert out[1, 0].tolist() == [[-7.0, -7.0], [-7.0, -7.0]]
    assert torch.equal(out[2], image)


def test_paint_puts_weights_on_their_superpixels():
    segments = torch.tensor([[0, 1], [2, 1]])
    assert paint(torch.tensor([0.5, -1.0, 2.0]), segments).tolist() == [[0.5, -1.0], [2.0, -1.0]]


def test_bad_inputs_name_the_problem():
    with pytest.raises(InputError, match="shape"):
        slic_superpixels(np.zeros((4, 4)))
    with pytest.raises(InputError, match="n_segments"):
        SlicSuperpixels(n_segments=0)
