"""LIME on superpixels (Ribeiro et al., KDD 2016), as seed 000 sec. 3.3 applies it to CT slices.

Seed 000, eq. 7: the explanation is the linear model ``g(z) = sum_i w_i z_i`` over superpixel indicators
``z`` that minimises

    sum_{(x, x')} exp(-(x - x')^2 / sigma^2) (f(x') - g(x'))^2 + ||w||_1,   sigma = 2,

solved with the Lasso. Here ``(x - x')^2`` is read in the interpretable space the sum runs over: the squared
Euclidean distance between the all-on vector of the original image and the sample's vector, i.e. the number
of superpixels switched off (``distance="euclidean"``, default). LIME's own image default, the cosine
distance (``distance="cosine"``), is available too.

What comes from the ``lime`` package and what does not:

- the fit is ``lime.lime_base.LimeBase.explain_instance_with_data`` (kernel weights, optional feature
  selection, weighted regression, R^2), with an ``sklearn.linear_model.Lasso`` regressor as the paper says
  (``lime`` defaults to Ridge) and the paper's kernel ``exp(-d^2 / sigma^2)`` (``lime`` defaults to its
  square root with width 0.25);
- the samples are drawn exactly as ``lime_image`` draws them (``RandomState(seed).randint(0, 2)``, first
  row all on), so with the same segmentation, seed, kernel and regressor the weights equal
  ``lime_image.LimeImageExplainer(random_state=seed).explain_instance``'s;
- ``lime_image`` itself is not used: it takes 2D RGB images only (a grayscale slice becomes three
  channels, a volume is impossible) and calls the classifier on 10 images at a time after building each
  perturbed image in numpy. Here perturbed images are built on the model's device in large batches
  (:func:`medxai.explain.superpixels.compose`), in 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
import torch
from lime.lime_base import LimeBase
from sklearn.linear_model import Lasso, LinearRegression
from sklearn.metrics import pairwise_distances

from medxai.errors import InputError
from medxai.explain.occlusion import OutputKind
from medxai.explain.registry import register_explainer
from medxai.explain.superpixels import Segmenter, SuperpixelExplainer, SurrogateFit

__all__ = ["LIME", "lime_kernel", "sample_lime_masks"]

FEATURE_SELECTIONS = ("none", "auto", "forward_selection", "highest_weights", "lasso_path")


def lime_kernel(distances: np.ndarray, kernel_width: float) -> np.ndarray:
    """Seed 000 eq. 7 locality kernel ``pi(d) = exp(-d^2 / sigma^2)`` (``lime``'s default is its square root)."""
    return np.exp(-(np.asarray(distances, dtype=np.float64) ** 2) / kernel_width**2)


def sample_lime_masks(num_samples: int, num_superpixels: int, seed: int) -> np.ndarray:
    """Binary masks (num_samples, M) int64 drawn as ``lime_image.data_labels`` does; row 0 is all on."""
    masks = np.random.RandomState(seed).randint(0, 2, num_samples * num_superpixels)
    masks = masks.reshape(num_samples, num_superpixels)
    masks[0, :] = 1
    return masks


@register_explainer("lime")
class LIME(SuperpixelExplainer):
    """LIME over superpixels, 2D and 3D: Lasso surrogate with the seed 000 kernel (eq. 7).

    Parameters
    ----------
    model, segmenter, baseline, blur_sigma, num_samples, output, batch_size, seed
        See :class:`medxai.explain.superpixels.SuperpixelExplainer` (``num_samples`` includes the
        unperturbed image, as in ``lime_image``).
    kernel_width
        sigma of the locality kernel; 2 as in seed 000.
    distance
        ``"euclidean"`` (default: ``d^2`` = number of superpixels switched off) or ``"cosine"`` (``lime_image``'s
        default), between each mask and the all-on mask.
    alpha
        Lasso penalty (scikit-learn scale: ``1/(2 n) sum_i pi_i r_i^2 + alpha ||w||_1`` with weights
        rescaled to mean 1); a coefficient shrinks by about ``4 alpha`` (z_i has variance 1/4), so the
        default 1e-4 removes effects below about 4e-4 of the score and leaves the rest nearly unbiased.
    feature_selection, num_features
        Passed to ``LimeBase``: ``"none"`` (default) fits all superpixels; ``"highest_weights"`` etc. keep
        ``num_features`` of them.
    kernel
        Optional kernel ``(distances, kernel_width) -> weights`` replacing :func:`lime_kernel`.

    Examples
    --------
    >>> explainer = LIME(model, segmenter=SlicSuperpixels(n_segments=50))   # doctest: +SKIP
    >>> maps = explainer(x, target=1)                                       # (B, 1, H, W)
    >>> explainer.last_explanation.weights[0]                               # (M,) one weight per superpixel
    """

    def __init__(
        self,
        model: torch.nn.Module,
        segmenter: Segmenter | None = None,
        baseline: float | str = "mean",
        blur_sigma: float = 5.0,
        num_samples: int = 1000,
        output: OutputKind = "probability",
        batch_size: int = 64,
        seed: int = 0,
        kernel_width: float = 2.0,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        alpha: float = 1e-4,
        feature_selection: str = "none",
        num_features: int | None = None,
        kernel: Callable[[np.ndarray, float], np.ndarray] | None = None,
    ) -> None:
        super().__init__(model, segmenter, baseline, blur_sigma, num_samples, output, batch_size, seed)
        if distance not in ("euclidean", "cosine"):
            raise InputError(f"distance must be 'euclidean' or 'cosine', got {distance!r}.")
        if kernel_width <= 0:
            raise InputError(f"kernel_width must be > 0, got {kernel_width}.")
        if alpha < 0:
            raise InputError(f"alpha must be >= 0, got {alpha}.")
        if feature_selection not in FEATURE_SELECTIONS:
            raise InputError(f"feature_selection must be one of {FEATURE_SELECTIONS}, got {feature_selection!r}.")
        self.kernel_width = kernel_width
        self.distance = distance
        self.alpha = alpha
        self.feature_selection = feature_selection
        self.num_features = num_features
        self.kernel = kernel if kernel is not None else lime_kernel

    def regressor(self) -> Lasso | LinearRegression:
        """A fresh Lasso for one fit (seed 000: "By applying the Lasso algorithm, we can solve Equation 7").

        ``alpha=0`` gives ordinary weighted least squares (scikit-learn advises against Lasso with alpha 0).
        """
        if self.alpha == 0:
            return LinearRegression(fit_intercept=True)
        return Lasso(alpha=self.alpha, fit_intercept=True, max_iter=100_000, tol=1e-8, random_state=self.seed)

    def fit_surrogate(
        self,
        score: Callable[[torch.Tensor], torch.Tensor],
        num_superpixels: int,
        device: torch.device,
    ) -> SurrogateFit:
        masks = sample_lime_masks(self.num_samples, num_superpixels, self.seed)
        labels = score(torch.from_numpy(masks).to(device).bool()).double().cpu().numpy()
        distances = pairwise_distances(masks, np.ones((1, num_superpixels)), metric=self.distance).ravel()
        base = LimeBase(partial(self.kernel, kernel_width=self.kernel_width), random_state=self.seed)
        intercept, pairs, fit_score, _ = base.explain_instance_with_data(
            masks,
            labels[:, None],
            distances,
            0,
            self.num_features if self.num_features is not None else num_superpixels,
            feature_selection=self.feature_selection,
            model_regressor=self.regressor(),
        )
        weights = np.zeros(num_superpixels, dtype=np.float64)
        for feature, weight in pairs:
            weights[int(feature)] = float(weight)
        return SurrogateFit(weights=weights, intercept=float(intercept), fit_score=float(fit_score))
