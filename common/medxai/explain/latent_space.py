"""Latent-space explanation of a segmentation model: a Dice landscape over the PCA plane of encoder features.

Seed 003 sec. 3.3.3, Fig. 17: the outputs of the model's encoder are decomposed into a two-dimensional
space by Principal Component Analysis; a multi-layer perceptron is fitted to the decomposed samples and
their Dice scores, which estimates the Dice score over the whole plane, also where there is no data; the
plane is smoothed and drawn with the samples on top (images with similar characteristics cluster
together), and example slices from low-Dice and high-Dice regions are shown on either side.

Typical use, with the encoder features taken by :func:`medxai.explain.embedding.extract_features`::

    features = extract_features(model.eval(), images, layer="encoder", pool="avg")   # (N, F)
    landscape = fit_latent_landscape(features, dice)                                 # dice: (N,)
    plot_latent_landscape(landscape, "latent_dice.png", images=slices, groups=slice_thickness)
    save_latent_landscape(landscape, "latent_dice.npz")
    expected = load_latent_landscape("latent_dice.npz").expected_dice(new_features)  # (M,)

The fitted landscape keeps plain arrays only (PCA mean and axes, the MLP weights, the grid), so
:meth:`LatentLandscape.expected_dice` runs in numpy and a saved landscape loads without pickle.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import PCA
from sklearn.metrics import r2_score
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from medxai.errors import InputError
from medxai.explain.embedding import _MARKERS, _check_features, extract_features

__all__ = [
    "LatentLandscape",
    "latent_features",
    "cross_validated_error",
    "fit_latent_landscape",
    "save_latent_landscape",
    "load_latent_landscape",
    "plot_latent_landscape",
]

_FORMAT_VERSION = 1
_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


def latent_features(
    network: torch.nn.Module, slices: torch.Tensor, layer: str, pool: str = "avg", batch_size: int = 32
) -> np.ndarray:
    """Bottleneck features (S, F) of 2D slices (S, C, H, W) with ``network`` in eval mode (its mode is restored).

    A forward hook on ``layer`` (:func:`~medxai.explain.embedding.extract_features`), on the network's device,
    pooled by ``pool``: what :func:`fit_latent_landscape` is fitted on and :meth:`LatentLandscape.expected_dice`
    reads.
    """
    was_training = network.training
    network.eval()
    try:
        first = next(iter(network.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        return extract_features(network, slices, layer, batch_size, device, pool)
    finally:
        network.train(was_training)


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    """The hidden-layer activation of scikit-learn's MLP (``sklearn.neural_network._base.ACTIVATIONS``)."""
    if activation == "relu":
        return np.maximum(values, 0.0)
    if activation == "tanh":
        return np.tanh(values)
    if activation == "logistic":
        return 1.0 / (1.0 + np.exp(-values))
    if activation == "identity":
        return values
    raise InputError(f"unknown MLP activation '{activation}'; expected one of {_ACTIVATIONS}.")


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass(eq=False)
class LatentLandscape:
    """A Dice landscape over the 2D PCA plane of encoder features (seed 003 sec. 3.3.3, Fig. 17).

    Attributes
    ----------
    pca_mean : (F,)
        Mean feature, subtracted before projecting.
    pca_components : (2, F)
        The two principal axes (rows, unit length, scikit-learn's sign convention).
    explained_variance_ratio : (2,)
        Fraction of the feature variance along each axis.
    mlp_coefs : list of (in_i, out_i)
        Weight matrices of the MLP regressor (``MLPRegressor.coefs_``), from (2, h1) to (h_last, 1).
    mlp_intercepts : list of (out_i,)
        Its biases (``MLPRegressor.intercepts_``).
    mlp_activation : str
        Hidden-layer activation (``"relu"``, ``"tanh"``, ``"logistic"`` or ``"identity"``); the output
        layer is linear, as in ``MLPRegressor``.
    input_mean : (2,)
        Mean of the training coordinates, subtracted before the MLP.
    input_scale : (2,)
        Divisor of the centred coordinates before the MLP. Both entries are the same number (the largest
        standard deviation of the two coordinates), so the scaling is isotropic and the MLP sees the
        plane with the PCA geometry (a low-variance PC2 is not blown up to the size of PC1).
    coords : (N, 2)
        PCA coordinates of the training samples.
    dice : (N,)
        Their Dice scores.
    grid_x : (G,)
        PC1 values of the grid columns.
    grid_y : (G,)
        PC2 values of the grid rows.
    dice_grid : (G, G)
        Smoothed predicted Dice; ``dice_grid[i, j]`` is at ``(grid_x[j], grid_y[i])`` (rows follow PC2, so
        ``imshow(dice_grid, origin="lower")`` draws it the right way up).
    fit_r2 : float
        Coefficient of determination of the (clipped) MLP predictions on the training points.
    smoothing_sigma : float
        Standard deviation, in grid cells, of the Gaussian filter applied to the predicted grid (0: none).
    """

    pca_mean: np.ndarray
    pca_components: np.ndarray
    explained_variance_ratio: np.ndarray
    mlp_coefs: list[np.ndarray]
    mlp_intercepts: list[np.ndarray]
    mlp_activation: str
    input_mean: np.ndarray
    input_scale: np.ndarray
    coords: np.ndarray
    dice: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    dice_grid: np.ndarray
    fit_r2: float
    smoothing_sigma: float
    _estimator: MLPRegressor | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        """Equal when every array is equal element-wise and the scalars match (the fitted estimator kept
        by :func:`fit_latent_landscape` is not compared)."""
        if not isinstance(other, LatentLandscape):
            return NotImplemented
        arrays = ("pca_mean", "pca_components", "explained_variance_ratio", "input_mean", "input_scale",
                  "coords", "dice", "grid_x", "grid_y", "dice_grid")
        return (
            all(np.array_equal(getattr(self, name), getattr(other, name)) for name in arrays)
            and len(self.mlp_coefs) == len(other.mlp_coefs)
            and all(np.array_equal(a, b) for a, b in zip(self.mlp_coefs, other.mlp_coefs))
            and len(self.mlp_intercepts) == len(other.mlp_intercepts)
            and all(np.array_equal(a, b) for a, b in zip(self.mlp_intercepts, other.mlp_intercepts))
            and self.mlp_activation == other.mlp_activation
            and float(self.fit_r2) == float(other.fit_r2)
            and float(self.smoothing_sigma) == float(other.smoothing_sigma)
        )

    __hash__ = None  # type: ignore[assignment]  (mutable arrays)

    @property
    def n_features(self) -> int:
        """F, the feature width the PCA was fitted on."""
        return int(self.pca_mean.shape[0])

    def project(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """PCA coordinates of features.

        Parameters
        ----------
        features : (N, F)
            Encoder features, extracted the same way as the training features.

        Returns
        -------
        (N, 2)
            ``(features - pca_mean) @ pca_components.T`` (``PCA.transform`` without whitening).
        """
        array = _as_array(features)
        if array.ndim == 1 and array.shape[0] == self.n_features:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.n_features:
            raise InputError(f"features must be (N, {self.n_features}), got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise InputError(f"features contain {int((~np.isfinite(array)).sum())} NaN or Inf values.")
        return (array - self.pca_mean) @ self.pca_components.T

    def predict_dice(self, coords: np.ndarray | torch.Tensor, clip: bool = True) -> np.ndarray:
        """MLP estimate of the Dice score at points of the PCA plane (not smoothed).

        Parameters
        ----------
        coords : (N, 2)
            PCA coordinates (from :meth:`project`).
        clip
            Clip to [0, 1] (default). ``False`` gives the raw MLP output, equal to ``MLPRegressor.predict``
            on the standardised coordinates.

        Returns
        -------
        (N,)
            Forward pass of the stored weights in numpy.
        """
        points = _as_array(coords)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"coords must be (N, 2), got shape {points.shape}.")
        if not np.all(np.isfinite(points)):
            raise InputError(f"coords contain {int((~np.isfinite(points)).sum())} NaN or Inf values.")
        hidden = (points - self.input_mean) / self.input_scale
        last = len(self.mlp_coefs) - 1
        for index, (weights, bias) in enumerate(zip(self.mlp_coefs, self.mlp_intercepts)):
            hidden = hidden @ weights + bias
            if index != last:
                hidden = _activate(hidden, self.mlp_activation)
        out = hidden[:, 0]
        return np.clip(out, 0.0, 1.0) if clip else out

    def expected_dice(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Expected Dice of samples from their encoder features: ``predict_dice(project(features))``.

        Parameters
        ----------
        features : (N, F)

        Returns
        -------
        (N,)
            In [0, 1].
        """
        return self.predict_dice(self.project(features))

    def predicted_grid(self) -> np.ndarray:
        """The MLP prediction on the grid before smoothing, (G, G), laid out as :attr:`dice_grid`."""
        xx, yy = np.meshgrid(self.grid_x, self.grid_y)
        return self.predict_dice(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(xx.shape)


def _check_dice(dice: Any, n: int) -> np.ndarray:
    array = _as_array(dice)
    if array.shape != (n,):
        raise InputError(f"dice must have shape ({n},) to match the features, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"dice contains {int((~np.isfinite(array)).sum())} NaN or Inf values.")
    outside = (array < 0.0) | (array > 1.0)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"dice must lie in [0, 1]; {int(outside.sum())} values do not, e.g. dice[{first}] = {array[first]:.6g}."
        )
    return array


def fit_latent_landscape(
    features: np.ndarray | torch.Tensor,
    dice: np.ndarray | torch.Tensor | Sequence[float],
    hidden_layer_sizes: Sequence[int] = (64, 64),
    grid_size: int = 100,
    smoothing_sigma: float = 2.0,
    margin: float = 0.1,
    seed: int = 0,
    max_iter: int = 2000,
    *,
    activation: str = "relu",
    alpha: float = 1e-2,
    solver: str = "lbfgs",
) -> LatentLandscape:
    """PCA of encoder features to 2D, an MLP fitted to the Dice scores there, and the smoothed Dice plane.

    Seed 003 sec. 3.3.3, Fig. 17.

    Parameters
    ----------
    features : (N, F)
        Encoder outputs of N samples (N >= 3, F >= 2), e.g. from
        :func:`medxai.explain.embedding.extract_features`.
    dice : (N,)
        Their Dice scores, in [0, 1].
    hidden_layer_sizes
        Widths of the MLP's hidden layers.
    grid_size
        G: the plane is evaluated on a G x G grid.
    smoothing_sigma
        Standard deviation, in grid cells, of the Gaussian filter (``scipy.ndimage.gaussian_filter``, edges
        extended with ``mode="nearest"``) applied to the predicted grid; 0 keeps the MLP prediction.
    margin
        Fraction of each coordinate's range added on both sides of the points (an axis with no spread
        gets a range of 1).
    seed
        ``random_state`` of the MLP (weight initialisation); the PCA is exact and deterministic.
    max_iter
        Maximum iterations of the MLP solver.
    activation, alpha, solver
        Hidden activation, L2 penalty and solver of ``MLPRegressor``. The default ``"lbfgs"`` (full-batch)
        fits the few hundred points of a validation set closely; ``"adam"`` with scikit-learn's default
        tolerance stops early and under-fits such small sets.

    Returns
    -------
    LatentLandscape
        Its private ``_estimator`` holds the fitted ``MLPRegressor`` (not saved by
        :func:`save_latent_landscape`).

    Notes
    -----
    The two coordinates are centred and divided by one common scale (the larger standard deviation)
    before the MLP. The fit and the grid prediction run with one BLAS thread (``threadpoolctl``): the
    matrices are small and thread start-up dominates on shared CPUs.
    """
    array = _check_features(features)
    n, width = array.shape
    if n < 3:
        raise InputError(f"fit_latent_landscape needs at least 3 samples, got features of shape {array.shape}.")
    if width < 2:
        raise InputError(f"features need at least 2 columns for a 2D PCA, got shape {array.shape}.")
    target = _check_dice(dice, n)
    sizes = tuple(int(s) for s in hidden_layer_sizes)
    if not sizes or any(s < 1 for s in sizes):
        raise InputError(f"hidden_layer_sizes must be positive integers, got {tuple(hidden_layer_sizes)}.")
    if int(grid_size) < 2:
        raise InputError(f"grid_size must be >= 2, got {grid_size}.")
    if not (np.isfinite(smoothing_sigma) and smoothing_sigma >= 0):
        raise InputError(f"smoothing_sigma must be a finite number >= 0, got {smoothing_sigma}.")
    if not (np.isfinite(margin) and margin >= 0):
        raise InputError(f"margin must be a finite number >= 0, got {margin}.")
    if activation not in _ACTIVATIONS:
        raise InputError(f"activation must be one of {_ACTIVATIONS}, got '{activation}'.")

    pca = PCA(n_components=2, svd_solver="full").fit(array)
    coords = pca.transform(array)
    input_mean = coords.mean(axis=0)
    scale = float(coords.std(axis=0).max())
    input_scale = np.full(2, scale if scale > 0 else 1.0)
    regressor = MLPRegressor(
        hidden_layer_sizes=sizes, activation=activation, solver=solver, alpha=alpha, max_iter=int(max_iter),
        random_state=seed,
    )
    with threadpool_limits(limits=1, user_api="blas"):
        regressor.fit((coords - input_mean) / input_scale, target)

        low, high = coords.min(axis=0), coords.max(axis=0)
        span = np.where(high - low > 0, high - low, 1.0)
        axes = [np.linspace(low[k] - margin * span[k], high[k] + margin * span[k], int(grid_size)) for k in (0, 1)]
        landscape = LatentLandscape(
            pca_mean=pca.mean_.astype(np.float64),
            pca_components=pca.components_.astype(np.float64),
            explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
            mlp_coefs=[np.asarray(c, dtype=np.float64) for c in regressor.coefs_],
            mlp_intercepts=[np.asarray(b, dtype=np.float64) for b in regressor.intercepts_],
            mlp_activation=activation,
            input_mean=input_mean,
            input_scale=input_scale,
            coords=coords,
            dice=target,
            grid_x=axes[0],
            grid_y=axes[1],
            dice_grid=np.empty((0, 0)),
            fit_r2=0.0,
            smoothing_sigma=float(smoothing_sigma),
            _estimator=regressor,
        )
        raw = landscape.predicted_grid()
        landscape.fit_r2 = float(r2_score(target, landscape.predict_dice(coords)))
    landscape.dice_grid = gaussian_filter(raw, sigma=smoothing_sigma, mode="nearest") if smoothing_sigma > 0 else raw
    return landscape


_ARRAY_KEYS = ("pca_mean", "pca_components", "explained_variance_ratio", "input_mean", "input_scale", "coords",
               "dice", "grid_x", "grid_y", "dice_grid")


def cross_validated_error(
    features: np.ndarray | torch.Tensor, dice: Any, folds: int = 5, seed: int = 0, **fit_kwargs: Any
) -> dict[str, float]:
    """How well the landscape predicts the Dice of slices it was not fitted on (k-fold over slices).

    For each fold, :func:`fit_latent_landscape` (PCA and MLP) is refitted on the other folds and its
    :meth:`LatentLandscape.expected_dice` is compared with the held-out slices' Dice.

    Returns
    -------
    ``{"cv_mae": ..., "mean_predictor_mae": ..., "folds": k}``: the mean absolute error of the landscape and,
    for reference, of predicting each fold by the mean Dice of the others.
    """
    array = _check_features(features)
    values = _check_dice(dice, array.shape[0])
    if not 2 <= int(folds) <= array.shape[0] // 2:
        raise InputError(f"folds must be in [2, N/2 = {array.shape[0] // 2}], got {folds}.")
    fold_of = np.random.default_rng(seed).permutation(array.shape[0]) % int(folds)
    errors, baseline = np.zeros(array.shape[0]), np.zeros(array.shape[0])
    for fold in range(int(folds)):
        test, train = fold_of == fold, fold_of != fold
        landscape = fit_latent_landscape(array[train], values[train], seed=seed, **fit_kwargs)
        errors[test] = np.abs(landscape.expected_dice(array[test]) - values[test])
        baseline[test] = np.abs(values[train].mean() - values[test])
    return {"cv_mae": float(errors.mean()), "mean_predictor_mae": float(baseline.mean()), "folds": int(folds)}


def save_latent_landscape(landscape: LatentLandscape, path: str | Path) -> Path:
    """Write a landscape to one compressed ``.npz`` of plain arrays (no pickled objects).

    Keys: the array attributes of :class:`LatentLandscape` under their names, ``mlp_coef_<i>`` and
    ``mlp_intercept_<i>`` for each layer, and 0-d arrays ``mlp_n_layers``, ``mlp_activation`` (a unicode
    string), ``fit_r2``, ``smoothing_sigma`` and ``format_version``.

    Parameters
    ----------
    path
        Output file; ``.npz`` is appended when missing (as ``numpy.savez_compressed`` does) and parent
        folders are created.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {key: np.asarray(getattr(landscape, key)) for key in _ARRAY_KEYS}
    for index, (weights, bias) in enumerate(zip(landscape.mlp_coefs, landscape.mlp_intercepts)):
        arrays[f"mlp_coef_{index}"] = np.asarray(weights)
        arrays[f"mlp_intercept_{index}"] = np.asarray(bias)
    arrays["mlp_n_layers"] = np.asarray(len(landscape.mlp_coefs), dtype=np.int64)
    arrays["mlp_activation"] = np.asarray(str(landscape.mlp_activation))
    arrays["fit_r2"] = np.asarray(float(landscape.fit_r2))
    arrays["smoothing_sigma"] = np.asarray(float(landscape.smoothing_sigma))
    arrays["format_version"] = np.asarray(_FORMAT_VERSION, dtype=np.int64)
    np.savez_compressed(path, **arrays)
    return path


def load_latent_landscape(path: str | Path) -> LatentLandscape:
    """Read a landscape written by :func:`save_latent_landscape` (``np.load(allow_pickle=False)``).

    Raises
    ------
    InputError
        The file is missing, is not an ``.npz`` archive, or lacks one of the keys (the message names the
        path and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"latent landscape file {path} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"{path} is not a latent landscape .npz archive ({error}).") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array, not a latent landscape .npz archive.")
    with archive:
        names = set(archive.files)

        def get(key: str) -> np.ndarray:
            if key not in names:
                raise InputError(f"{path} is not a latent landscape archive: key '{key}' is missing.")
            try:
                return archive[key]
            except ValueError as error:  # an object array, which would need pickle
                raise InputError(f"{path}: key '{key}' cannot be read without pickle ({error}).") from error

        version = int(get("format_version"))
        if version != _FORMAT_VERSION:
            raise InputError(f"{path} has latent landscape format {version}; this medxai reads {_FORMAT_VERSION}.")
        n_layers = int(get("mlp_n_layers"))
        return LatentLandscape(
            **{key: np.asarray(get(key), dtype=np.float64) for key in _ARRAY_KEYS},
            mlp_coefs=[np.asarray(get(f"mlp_coef_{i}"), dtype=np.float64) for i in range(n_layers)],
            mlp_intercepts=[np.asarray(get(f"mlp_intercept_{i}"), dtype=np.float64) for i in range(n_layers)],
            mlp_activation=str(get("mlp_activation")),
            fit_r2=float(get("fit_r2")),
            smoothing_sigma=float(get("smoothing_sigma")),
        )


def _check_images(images: Any, n: int) -> np.ndarray:
    array = _as_array(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] != n:
        raise InputError(f"images must be ({n}, H, W) slices, one per point, got shape {array.shape}.")
    return array


def plot_latent_landscape(
    landscape: LatentLandscape,
    path: str | Path,
    images: np.ndarray | torch.Tensor | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_examples: int = 3,
    title: str | None = None,
    dpi: int = 120,
    *,
    figsize: tuple[float, float] | None = None,
    cmap: str = "RdYlGn",
    vmin: float | None = None,
    vmax: float | None = None,
    orient: bool = True,
) -> Path:
    """Draw the smoothed Dice plane with the samples on top, and example slices at either side; save a PNG.

    Seed 003 sec. 3.3.3, Fig. 17: the plane (colour: smoothed Dice, with a colour bar "Dice"), the training
    points coloured by their own Dice (black edge, marker per group), and, when ``images`` are given, the
    ``n_examples`` lowest-Dice samples on the left and the highest-Dice samples on the right, each titled
    with its number and Dice and linked to its point by a dashed line (the point carries the same number).

    Parameters
    ----------
    landscape
        From :func:`fit_latent_landscape` or :func:`load_latent_landscape`.
    path
        Output PNG; parent folders are created.
    images : (N, H, W) or (N, 1, H, W), optional
        The slice of each training point (same order as the features), shown in grey.
    groups : (N,), optional
        A label per point (e.g. ``"thick"`` / ``"thin"`` slice thickness) drawn as the marker, with a legend.
    n_examples
        Examples per side; at most N // 2, so the two sides never share a sample.
    title
        Title above the plane.
    dpi
        The PNG is ``figsize * dpi`` pixels.
    figsize
        Default (7.5, 6) without images, (13, 6) with them.
    cmap, vmin, vmax
        Colour map and range of the Dice colours; by default the range of the grid and the points.
    orient
        The sign of a principal axis is arbitrary: when Dice falls along PC1 (negative correlation over
        the points), draw the PC1 axis reversed (values decreasing to the right) so that low Dice is on
        the left, next to the low-Dice examples. The coordinates themselves are not changed.

    Returns
    -------
    Path
        The written file.
    """
    coords, dice = landscape.coords, landscape.dice
    n = coords.shape[0]
    thumbnails = None if images is None else _check_images(images, n)
    group_array = None if groups is None else np.asarray(groups)
    if group_array is not None and group_array.shape != (n,):
        raise InputError(f"groups must have one value per point, shape ({n},), got shape {group_array.shape}.")
    group_values = [None] if group_array is None else list(dict.fromkeys(group_array.tolist()))
    if len(group_values) > len(_MARKERS):
        raise InputError(f"at most {len(_MARKERS)} groups can be told apart by marker, got {len(group_values)}.")
    if n_examples < 0:
        raise InputError(f"n_examples must be >= 0, got {n_examples}.")
    shown = min(int(n_examples), n // 2) if thumbnails is not None else 0
    if figsize is None:
        figsize = (13.0, 6.0) if shown else (7.5, 6.0)
    low = float(min(landscape.dice_grid.min(), dice.min())) if vmin is None else float(vmin)
    high = float(max(landscape.dice_grid.max(), dice.max())) if vmax is None else float(vmax)
    if high <= low:
        low, high = low - 0.05, high + 0.05
    norm = Normalize(vmin=low, vmax=high)
    colours = colormaps[cmap]

    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    if shown:
        grid = figure.add_gridspec(
            shown, 4, width_ratios=[1.0, 4.0, 1.0, 0.12], left=0.02, right=0.95, bottom=0.09, top=0.9,
            wspace=0.3, hspace=0.35,
        )
        main = figure.add_subplot(grid[:, 1])
        colour_axes = figure.add_subplot(grid[:, 3])
    else:
        grid = figure.add_gridspec(1, 2, width_ratios=[4.0, 0.15], left=0.1, right=0.9, bottom=0.1, top=0.9,
                                   wspace=0.05)
        main = figure.add_subplot(grid[0, 0])
        colour_axes = figure.add_subplot(grid[0, 1])

    extent = (landscape.grid_x[0], landscape.grid_x[-1], landscape.grid_y[0], landscape.grid_y[-1])
    plane = main.imshow(landscape.dice_grid, origin="lower", extent=extent, aspect="auto", cmap=colours, norm=norm,
                        interpolation="bilinear")
    if np.ptp(landscape.dice_grid) > 1e-6:
        main.contour(landscape.grid_x, landscape.grid_y, landscape.dice_grid, levels=8, colors="k",
                     linewidths=0.4, alpha=0.4)
    for g, group in enumerate(group_values):
        selected = np.ones(n, dtype=bool) if group_array is None else group_array == group
        main.scatter(coords[selected, 0], coords[selected, 1], c=dice[selected], cmap=colours, norm=norm,
                     marker=_MARKERS[g], s=28, edgecolors="black", linewidths=0.6, zorder=3)
    if group_array is not None:
        handles = [Line2D([], [], linestyle="", marker=_MARKERS[g], markerfacecolor="white",
                          markeredgecolor="black", label=str(group)) for g, group in enumerate(group_values)]
        main.legend(handles=handles, loc="best", fontsize="small", framealpha=0.8)
    colour_bar = figure.colorbar(plane, cax=colour_axes)
    colour_bar.set_label("Dice")
    ratio = landscape.explained_variance_ratio
    main.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    main.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    flip = orient and np.ptp(coords[:, 0]) > 0 and np.ptp(dice) > 0 and np.corrcoef(coords[:, 0], dice)[0, 1] < 0
    main.set_xlim((extent[1], extent[0]) if flip else (extent[0], extent[1]))
    main.set_ylim(extent[2], extent[3])
    if title:
        main.set_title(title)

    if shown:
        order = np.argsort(dice, kind="stable")
        sides = [(order[:shown], 0, (1.0, 0.5)), (order[::-1][:shown], 2, (0.0, 0.5))]
        number = 0
        for chosen, column, anchor in sides:
            chosen = chosen[np.argsort(-coords[chosen, 1], kind="stable")]  # top thumbnail: highest point
            for row, index in enumerate(chosen):
                number += 1
                thumb = figure.add_subplot(grid[row, column])
                thumb.imshow(thumbnails[index], cmap="gray", interpolation="nearest")
                thumb.set_xticks([])
                thumb.set_yticks([])
                thumb.set_title(f"{number}: Dice {dice[index]:.2f}", fontsize="small")
                point = (coords[index, 0], coords[index, 1])
                figure.add_artist(ConnectionPatch(
                    xyA=anchor, coordsA=thumb.transAxes, xyB=point, coordsB=main.transData, color="0.15",
                    linewidth=0.8, linestyle="--", alpha=0.8, zorder=4,
                ))
                main.annotate(str(number), point, xytext=(4, 4), textcoords="offset points", fontsize="small",
                              zorder=5, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8,
                                              "linewidth": 0})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path
