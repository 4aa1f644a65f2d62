"""Latent-space Dice landscape (seed 003 sec. 3.3.3, Fig. 17): PCA, MLP fit, smoothing, save/load, plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from medxai.errors import InputError
from medxai.explain import (
    LatentLandscape,
    fit_latent_landscape,
    load_latent_landscape,
    plot_latent_landscape,
    save_latent_landscape,
)
from medxai.explain.embedding import extract_features, pca_embedding

_WIDTH = 20


def _direction() -> np.ndarray:
    u = np.random.default_rng(123).normal(size=_WIDTH)
    return u / np.linalg.norm(u)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features = 5 t u + small noise in 20-D; Dice = sigmoid(t): a smooth function of the first PC."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-3.0, 3.0, n)
    features = 5.0 * t[:, None] * _direction() + 0.1 * rng.normal(size=(n, _WIDTH))
    return features, 1.0 / (1.0 + np.exp(-t)), t


@pytest.fixture(scope="module")
def fitted() -> tuple[LatentLandscape, np.ndarray, np.ndarray, np.ndarray]:
    features, dice, t = _synthetic(200, seed=0)
    return fit_latent_landscape(features, dice, grid_size=60), features, dice, t


def _total_variation(grid: np.ndarray) -> float:
    return float(np.abs(np.diff(grid, axis=0)).sum() + np.abs(np.diff(grid, axis=1)).sum())


def test_pca_coordinates_equal_sklearn_and_project_reproduces_them(fitted):
    landscape, features, _, _ = fitted
    reference = PCA(n_components=2, svd_solver="full").fit_transform(features)
    np.testing.assert_allclose(landscape.coords, reference, atol=1e-9)
    np.testing.assert_allclose(landscape.coords, pca_embedding(features), atol=1e-9)
    np.testing.assert_allclose(landscape.project(features), landscape.coords, atol=1e-12)
    np.testing.assert_allclose(landscape.project(torch.from_numpy(features)), landscape.coords, atol=1e-12)
    assert landscape.pca_components.shape == (2, _WIDTH) and landscape.pca_mean.shape == (_WIDTH,)
    # the data lie along one direction: PC1 is it (up to sign) and carries almost all the variance
    assert abs(landscape.pca_components[0] @ _direction()) > 0.999
    assert landscape.explained_variance_ratio[0] > 0.95


def test_expected_dice_on_held_out_points_recovers_the_smooth_function(fitted):
    landscape, _, _, t = fitted
    assert landscape.fit_r2 > 0.9
    held_features, held_dice, _ = _synthetic(100, seed=1)
    expected = landscape.expected_dice(held_features)
    assert expected.shape == (100,) and expected.min() >= 0.0 and expected.max() <= 1.0
    assert np.abs(expected - held_dice).mean() < 0.05
    # grid layout: (G, G), rows follow PC2, columns PC1; Dice rises along PC1 once its sign matches t
    grid = landscape.dice_grid
    assert grid.shape == (60, 60) == (landscape.grid_y.size, landscape.grid_x.size)
    sign = np.sign(np.corrcoef(landscape.coords[:, 0], t)[0, 1])
    rho = spearmanr(sign * landscape.grid_x, grid.mean(axis=0)).statistic
    assert rho > 0.9
    # the grid spans the points plus a 10 % margin on each side
    span = np.ptp(landscape.coords[:, 0])
    assert landscape.grid_x[0] == pytest.approx(landscape.coords[:, 0].min() - 0.1 * span)
    assert landscape.grid_x[-1] == pytest.approx(landscape.coords[:, 0].max() + 0.1 * span)


def test_numpy_forward_equals_sklearn_predict(fitted):
    landscape, _, _, _ = fitted
    points = np.random.default_rng(5).normal(scale=10.0, size=(300, 2))
    standardised = (points - landscape.input_mean) / landscape.input_scale
    sklearn_prediction = landscape._estimator.predict(standardised)
    np.testing.assert_allclose(landscape.predict_dice(points, clip=False), sklearn_prediction, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(landscape.predict_dice(points), np.clip(sklearn_prediction, 0, 1))
    # an independent MLPRegressor with the same data, settings and seed gives the same function
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), activation="relu", solver="lbfgs", alpha=1e-2,
                       max_iter=2000, random_state=0)
    with threadpool_limits(limits=1, user_api="blas"):  # as fit_latent_landscape; many threads are slow here
        mlp.fit((landscape.coords - landscape.input_mean) / landscape.input_scale, landscape.dice)
    np.testing.assert_allclose(landscape.predict_dice(points, clip=False), mlp.predict(standardised), atol=1e-10)
    # other activations go through the same numpy forward pass
    small = fit_latent_landscape(landscape.coords @ np.eye(2, 4), landscape.dice, hidden_layer_sizes=(8,),
                                 grid_size=5, activation="tanh", max_iter=200)
    standardised = (points - small.input_mean) / small.input_scale
    np.testing.assert_allclose(small.predict_dice(points, clip=False), small._estimator.predict(standardised),
                               atol=1e-10)


def test_smoothing_zero_keeps_mlp_grid_and_positive_sigma_reduces_total_variation():
    rng = np.random.default_rng(3)
    features, dice, _ = _synthetic(80, seed=2)
    noisy = np.clip(dice + 0.1 * rng.normal(size=dice.size), 0, 1)
    raw = fit_latent_landscape(features, noisy, smoothing_sigma=0.0, grid_size=40)
    smooth = fit_latent_landscape(features, noisy, smoothing_sigma=3.0, grid_size=40)
    xx, yy = np.meshgrid(raw.grid_x, raw.grid_y)
    expected = raw.predict_dice(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(40, 40)
    np.testing.assert_array_equal(raw.dice_grid, expected)
    np.testing.assert_array_equal(raw.predicted_grid(), expected)
    # same data and seed: same MLP, only the grid is filtered
    np.testing.assert_array_equal(smooth.predicted_grid(), expected)
    assert smooth.smoothing_sigma == 3.0 and raw.smoothing_sigma == 0.0
    assert _total_variation(smooth.dice_grid) < _total_variation(raw.dice_grid)
    assert smooth.dice_grid.min() >= 0.0 and smooth.dice_grid.max() <= 1.0


def test_save_load_round_trip_and_bad_files(fitted, tmp_path):
    landscape, features, _, _ = fitted
    written = save_latent_landscape(landscape, tmp_path / "sub" / "landscape")
    assert written == tmp_path / "sub" / "landscape.npz" and written.is_file()
    loaded = load_latent_landscape(written)
    assert loaded == landscape and loaded._estimator is None
    held_features, _, _ = _synthetic(30, seed=7)
    np.testing.assert_array_equal(loaded.expected_dice(held_features), landscape.expected_dice(held_features))
    np.testing.assert_array_equal(loaded.dice_grid, landscape.dice_grid)
    assert loaded.mlp_activation == "relu" and [c.shape for c in loaded.mlp_coefs] == [(2, 64), (64, 64), (64, 1)]
    # the archive holds plain arrays only
    with np.load(written, allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)

    other = np.savez_compressed(tmp_path / "other.npz", pca_mean=np.zeros(3), format_version=np.asarray(1))
    assert other is None
    with pytest.raises(InputError, match=r"other\.npz.*'mlp_n_layers'"):
        load_latent_landscape(tmp_path / "other.npz")
    partial = dict(np.load(written, allow_pickle=False))
    del partial["dice_grid"]
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(InputError, match=r"partial\.npz.*'dice_grid'"):
        load_latent_landscape(tmp_path / "partial.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(InputError, match=r"text\.npz"):
        load_latent_landscape(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(InputError, match=r"single\.npy"):
        load_latent_landscape(tmp_path / "single.npy")
    with pytest.raises(InputError, match=r"missing\.npz"):
        load_latent_landscape(tmp_path / "missing.npz")


def test_bad_inputs_raise_input_error():
    features, dice, _ = _synthetic(10, seed=4)
    nan_features = features.copy()
    nan_features[2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_latent_landscape(nan_features, dice)
    with pytest.raises(InputError, match=r"\[0, 1\].*dice\[4\] = 1\.5"):
        fit_latent_landscape(features, np.where(np.arange(10) == 4, 1.5, dice))
    with pytest.raises(InputError, match=r"dice\[0\] = -0\.1"):
        fit_latent_landscape(features, np.r_[-0.1, dice[1:]])
    with pytest.raises(InputError, match="NaN"):
        fit_latent_landscape(features, np.r_[np.nan, dice[1:]])
    with pytest.raises(InputError, match=r"at least 3 samples.*\(2, 20\)"):
        fit_latent_landscape(features[:2], dice[:2])
    with pytest.raises(InputError, match=r"shape \(10,\).*\(9,\)"):
        fit_latent_landscape(features, dice[:9])
    with pytest.raises(InputError, match=r"\(10, 1\)"):
        fit_latent_landscape(features[:, :1], dice)
    with pytest.raises(InputError, match="grid_size"):
        fit_latent_landscape(features, dice, grid_size=1)
    with pytest.raises(InputError, match="smoothing_sigma"):
        fit_latent_landscape(features, dice, smoothing_sigma=-1.0)
    landscape = fit_latent_landscape(features, dice, hidden_layer_sizes=(4,), grid_size=4, max_iter=50)
    with pytest.raises(InputError, match=r"\(N, 20\).*\(10, 19\)"):
        landscape.project(features[:, :19])
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        landscape.predict_dice(np.zeros((3, 3)))


def test_features_from_extract_features_of_an_encoder():
    """The intended pipeline: encoder outputs by forward hook (embedding.extract_features), then the fit."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU())
    model = torch.nn.Sequential()
    model.add_module("encoder", encoder)
    model.add_module("head", torch.nn.Conv2d(6, 1, 1))
    images = torch.rand(12, 1, 8, 8) * torch.linspace(0.2, 2.0, 12)[:, None, None, None]
    features = extract_features(model.eval(), images, "encoder", pool="avg")
    dice = np.linspace(0.3, 0.9, 12)
    landscape = fit_latent_landscape(features, dice, hidden_layer_sizes=(16,), grid_size=20)
    assert landscape.coords.shape == (12, 2) and landscape.expected_dice(features).shape == (12,)
    assert landscape.fit_r2 > 0.5


def test_plot_writes_a_png_of_the_expected_size(fitted, tmp_path):
    landscape, features, dice, _ = fitted
    path = plot_latent_landscape(landscape, tmp_path / "plain" / "latent.png", title="Dice over the PCA plane",
                                 dpi=50)
    assert path.is_file()
    pixels = imread(path)
    assert pixels.shape[:2] == (6 * 50, round(7.5 * 50))
    assert pixels[..., :3].std() > 0
    # orient: PC1 is drawn so that low Dice is on the left (red in RdYlGn) and high Dice on the right (green),
    # whichever sign the PCA gave it (negated features: Dice falls along PC1, the axis is drawn reversed)
    mirrored = fit_latent_landscape(-features, dice, grid_size=30)
    assert np.corrcoef(landscape.coords[:, 0], dice)[0, 1] * np.corrcoef(mirrored.coords[:, 0], dice)[0, 1] < 0
    for case, orient, low_left in ((landscape, True, True), (mirrored, True, True), (mirrored, False, False)):
        pixels = imread(plot_latent_landscape(case, tmp_path / "orient.png", dpi=50, orient=orient))
        left = np.median(pixels[100:200, 45:60, :3], axis=(0, 1))
        right = np.median(pixels[100:200, 270:285, :3], axis=(0, 1))
        assert (left[0] > left[1] and right[1] > right[0]) == low_left

    rng = np.random.default_rng(0)
    images = rng.random((dice.size, 16, 16)) * dice[:, None, None]
    groups = np.where(np.arange(dice.size) % 2 == 0, "thick", "thin")
    path = plot_latent_landscape(landscape, tmp_path / "examples.png", images=images, groups=groups, n_examples=3,
                                 dpi=60)
    pixels = imread(path)
    assert pixels.shape[:2] == (6 * 60, 13 * 60)
    assert pixels[..., :3].std() > 0
    # (N, 1, H, W) tensors, an explicit figsize, and more examples than points allow (capped at N // 2)
    few = fit_latent_landscape(landscape.coords[:5] @ np.eye(2, 3), dice[:5], hidden_layer_sizes=(4,),
                               grid_size=10, max_iter=50)
    path = plot_latent_landscape(few, tmp_path / "few.png", images=torch.rand(5, 1, 8, 8), n_examples=4,
                                 figsize=(8.0, 4.0), dpi=40)
    assert imread(path).shape[:2] == (160, 320)
    with pytest.raises(InputError, match=r"images must be \(200, H, W\)"):
        plot_latent_landscape(landscape, tmp_path / "bad.png", images=images[:5])
    with pytest.raises(InputError, match="groups"):
        plot_latent_landscape(landscape, tmp_path / "bad.png", groups=groups[:5])


def test_cross_validated_error_beats_the_mean_when_dice_follows_the_features() -> None:
    from medxai.explain.latent_space import cross_validated_error

    rng = np.random.default_rng(0)
    t = rng.uniform(-3, 3, 120)
    direction = rng.normal(size=16)
    features = 5 * t[:, None] * direction[None] / np.linalg.norm(direction) + 0.1 * rng.normal(size=(120, 16))
    dice = 1 / (1 + np.exp(-t))
    result = cross_validated_error(features, dice, folds=4)
    assert result["folds"] == 4
    assert result["cv_mae"] < 0.05 < result["mean_predictor_mae"]
    # unrelated Dice: the landscape does no better than the mean (within noise)
    shuffled = cross_validated_error(features, rng.permutation(dice), folds=4)
    assert shuffled["cv_mae"] > 0.8 * shuffled["mean_predictor_mae"]
    with pytest.raises(InputError, match="folds"):
        cross_validated_error(features, dice, folds=1)
