"""Kernel SHAP on superpixels (Lundberg & Lee, NeurIPS 2017), as seed 000 sec. 3.4 applies it to CT slices.

Seed 000, eq. 8: the SHAP values are the weights of the linear model over superpixel indicators that
minimises ``sum pi(z) (f(z) - g(z))^2`` with the Shapley kernel

    pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|)),

under the efficiency constraint ``sum_i phi_i = f(x) - f(all off)``. The coalitions, their weights and the
constrained weighted least squares are ``shap.KernelExplainer``'s own: it runs in the indicator space
(background: one all-off row; instance: the all-on row) with a model function that turns a matrix of masks
into perturbed images on the model's device and scores them in large batches
(:func:`medxai.explain.superpixels.compose`, :func:`medxai.explain.perturbation.batched_forward`).

Why not shap's image path: ``shap.maskers.Image`` works on (H, W, C) numpy images and its inpainting modes
cast the image to ``uint8`` (Hounsfield units and [0, 1] intensities are destroyed), its partition explainer
is 2D only, and it evaluates the model through numpy. Kernel SHAP on superpixel indicators has none of
these problems and works for supervoxels of 3D volumes.

``shap.KernelExplainer`` draws its random coalitions from numpy's global generator; it is seeded with
``seed`` for each explanation and restored afterwards, so results are reproducible and the caller's random
state is untouched. With ``num_samples >= 2^M - 2`` every coalition is enumerated and the values are the
exact Shapley values of the superpixel game.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from scipy.special import comb

from medxai.errors import InputError
from medxai.explain.occlusion import OutputKind
from medxai.explain.registry import register_explainer
from medxai.explain.superpixels import Segmenter, SuperpixelExplainer, SurrogateFit

__all__ = ["KernelSHAP", "shapley_kernel", "seeded_numpy"]


def shapley_kernel(num_features: int, coalition_size: int | np.ndarray) -> np.ndarray:
    """Seed 000 eq. 8 / Lundberg & Lee Theorem 2: ``(M - 1) / (C(M, s) s (M - s))``, infinite at s = 0 and M."""
    s = np.asarray(coalition_size, dtype=np.float64)
    m = float(num_features)
    with np.errstate(divide="ignore"):
        return (m - 1.0) / (comb(m, s) * s * (m - s))


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block and restore its previous state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@register_explainer("kernel_shap")
class KernelSHAP(SuperpixelExplainer):
    """Kernel SHAP over superpixels, 2D and 3D, through ``shap.KernelExplainer`` on the indicator space.

    Parameters
    ----------
    model, segmenter, baseline, blur_sigma, num_samples, output, batch_size, seed
        See :class:`medxai.explain.superpixels.SuperpixelExplainer`. ``num_samples`` is shap's
        ``nsamples`` (coalitions; shap adds two evaluations: all off and all on).
    l1_reg
        shap's feature selection before the constrained fit; ``False`` (default) is seed 000 eq. 8 as
        written (no penalty); ``"num_features(10)"``, ``"aic"``, ``"bic"`` or a float as in shap.

    Notes
    -----
    ``last_explanation.intercepts`` holds the base value f(all superpixels off) and the weights sum to
    ``model_outputs - intercepts`` (efficiency).
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
        l1_reg: bool | float | str = False,
    ) -> None:
        super().__init__(model, segmenter, baseline, blur_sigma, num_samples, output, batch_size, seed)
        if l1_reg is True:
            raise InputError("l1_reg=True is ambiguous; use False, a float, 'aic', 'bic' or 'num_features(k)'.")
        self.l1_reg = l1_reg

    def fit_surrogate(
        self,
        score: Callable[[torch.Tensor], torch.Tensor],
        num_superpixels: int,
        device: torch.device,
    ) -> SurrogateFit:
        def indicator_model(masks: np.ndarray) -> np.ndarray:
            """shap's model: masks (n, M) in {0, 1} -> target scores (n,)."""
            on = torch.from_numpy(np.asarray(masks) > 0.5).to(device)
            return score(on).double().cpu().numpy()

        import shap  # imported here: shap takes seconds to import (matplotlib, numba, ...)

        with seeded_numpy(self.seed):
            explainer = shap.KernelExplainer(indicator_model, np.zeros((1, num_superpixels)))
            values = explainer.shap_values(
                np.ones((1, num_superpixels)), nsamples=self.num_samples, l1_reg=self.l1_reg, silent=True
            )
        weights = np.asarray(values, dtype=np.float64).reshape(-1)
        return SurrogateFit(weights=weights, intercept=float(np.asarray(explainer.expected_value).reshape(-1)[0]))
