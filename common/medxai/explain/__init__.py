"""Explainers with one interface, and the post-processing every bundle shares.

Every explainer is built with a model (and a target layer where the method needs one) and called as
``explainer(x, target)`` on a 2D or 3D batch; it returns maps (B, 1, *spatial) with no hidden
normalisation. Pick one by name with :func:`create_explainer` (importing this package registers them all)::

    from medxai.explain import create_explainer
    gradcam = create_explainer("gradcam", model, target_layer="layer4")
    maps = gradcam(x, target)                      # (B, 1, H, W)
"""

from __future__ import annotations

from medxai.explain import (  # noqa: F401  (importing registers the explainers)
    anatomy,
    boxes,
    cam,
    embedding,
    gradients,
    kernel_shap,
    latent_space,
    lime,
    lrp,
    normalize,
    occlusion,
    reconstruction,
    text,
    writers,
)
from medxai.explain.base import Explainer, check_batch, resolve_targets
from medxai.explain.boxes import boxes_from_map, boxes_from_maps
from medxai.explain.cam import CAM, EDMActivationMap, GradCAM, GradCAMPlusPlus
from medxai.explain.gradients import Saliency, SmoothGrad
from medxai.explain.kernel_shap import KernelSHAP
from medxai.explain.latent_space import (
    LatentLandscape,
    cross_validated_error,
    fit_latent_landscape,
    latent_features,
    load_latent_landscape,
    plot_latent_landscape,
    save_latent_landscape,
)
from medxai.explain.lime import LIME
from medxai.explain.lrp import LRP
from medxai.explain.occlusion import Occlusion
from medxai.explain.reconstruction import RepresentationImage
from medxai.explain.registry import create_explainer, list_explainers, register_explainer
from medxai.explain.text import describe, describe_batch

__all__ = [
    "Explainer",
    "check_batch",
    "resolve_targets",
    "create_explainer",
    "list_explainers",
    "register_explainer",
    "CAM",
    "EDMActivationMap",
    "GradCAM",
    "GradCAMPlusPlus",
    "Saliency",
    "SmoothGrad",
    "Occlusion",
    "LIME",
    "KernelSHAP",
    "LRP",
    "RepresentationImage",
    "boxes_from_map",
    "boxes_from_maps",
    "describe",
    "describe_batch",
    "LatentLandscape",
    "fit_latent_landscape",
    "cross_validated_error",
    "latent_features",
    "save_latent_landscape",
    "load_latent_landscape",
    "plot_latent_landscape",
]
