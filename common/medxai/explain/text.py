"""Plain-language explanations: class, score, method, and where the map points, named anatomically.

Seed 002 (DeepCOVIDExplainer, Figs. 2-4) pairs each heatmap with a sentence such as "The radiograph is
classified to contain COVID-19 positive with a probability of 58% ... Grad-CAM has localized the upper
left lung and throat to be critical", and, for LRP, reports a relevance (classification) score instead of
a probability. Here the regions come from a lung mask (:mod:`medxai.explain.anatomy`) instead of a reader,
and the sentence reads, e.g.::

    COVID-19 (probability 0.93). Grad-CAM points mainly to the lower zone of the left lung and the lower
    zone of the right lung.

How the regions are chosen (all shares are of the map's positive mass, see
:func:`medxai.explain.anatomy.region_shares`):

* no positive mass: "<method> highlights no region (the map has no positive values)."
* more than half of the mass outside the lungs: "<method> points mainly outside the lungs."
* otherwise the lung regions, largest first, until they hold ``coverage`` of the mass inside the lungs,
  at most ``max_regions``, each (after the first) holding at least ``min_share`` of that mass. A lung whose
  three zones each hold at least ``even_share`` of that lung's mass counts as one region, "the <side>
  lung". A region with at least ``dominance`` of its mass in its lateral third is "peripheral", one with
  at least ``dominance`` in the medial two thirds "central".
  When at least ``outside_note`` of the whole mass lies outside the lungs, ", and partly outside the
  lungs" is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medxai.errors import InputError
from medxai.explain.anatomy import lung_zones, region_shares

__all__ = ["METHOD_NAMES", "RELEVANCE_METHODS", "TextExplanation", "describe_shares", "describe", "describe_batch"]

#: display names of explainer registry names
METHOD_NAMES: dict[str, str] = {
    "cam": "CAM",
    "edm": "the EDM activation map",
    "gradcam": "Grad-CAM",
    "grad_cam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "gradcampp": "Grad-CAM++",
    "gradcam_pp": "Grad-CAM++",
    "gradcamplusplus": "Grad-CAM++",
    "lrp": "LRP",
    "saliency": "the saliency map",
    "gradient": "the gradient map",
    "smoothgrad": "SmoothGrad",
    "occlusion": "occlusion sensitivity",
    "lime": "LIME",
    "kernel_shap": "Kernel SHAP",
    "kernelshap": "Kernel SHAP",
    "shap": "Kernel SHAP",
    "cxrnet": "the CXRNet representation image",
}

#: methods whose score is a relevance (logit) score rather than a probability (seed 002, Fig. 4)
RELEVANCE_METHODS = frozenset({"lrp"})


@dataclass
class TextExplanation:
    """A sentence and the structured facts it was written from (JSON-ready through :meth:`as_dict`)."""

    sentence: str
    class_name: str
    score: float
    score_kind: str
    method: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    outside_share: float = 0.0
    true_class: str | None = None

    @property
    def probability(self) -> float | None:
        """The class probability, or ``None`` when the score is a relevance score."""
        return self.score if self.score_kind == "probability" else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probability"] = self.probability
        return out


def _method_name(method: str) -> str:
    return METHOD_NAMES.get(method.lower(), method)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _score_text(score: float, score_kind: str) -> str:
    if score_kind == "probability":
        return f"probability {score:.2f}"
    return f"{score_kind} {score:.3g}"


def _candidates(regions: list[dict[str, Any]], even_share: float) -> list[dict[str, Any]]:
    """Zone regions, with each evenly covered lung merged into one ``zone="whole"`` region; by share."""
    out: list[dict[str, Any]] = []
    for side in ("right", "left"):
        zones = [r for r in regions if r["side"] == side]
        mass = sum(z["share"] for z in zones)
        if mass > 0 and len(zones) == 3 and all(z["share"] >= even_share * mass for z in zones):
            peripheral = sum(z["share"] * z["peripheral_share"] for z in zones) / mass
            out.append({"side": side, "zone": "whole", "share": mass, "peripheral_share": peripheral})
        else:
            out.extend(zones)
    return sorted(out, key=lambda r: -r["share"])  # stable: right before left on ties


def _region_phrase(region: dict[str, Any], dominance: float) -> str:
    """'the lower zone of the left lung', 'the peripheral upper zone of the right lung', 'the left lung'."""
    depth = _depth(region["peripheral_share"], dominance)
    if region["zone"] == "whole":
        return f"the {depth}{region['side']} lung"
    return f"the {depth}{region['zone']} zone of the {region['side']} lung"


def _depth(peripheral_share: float, dominance: float) -> str:
    if peripheral_share >= dominance:
        return "peripheral "
    if 1.0 - peripheral_share >= dominance:
        return "central "
    return ""


def describe_shares(
    shares: dict[str, Any],
    class_name: str,
    score: float,
    method: str,
    score_kind: str | None = None,
    true_class: str | None = None,
    coverage: float = 0.6,
    max_regions: int = 3,
    min_share: float = 0.1,
    outside_note: float = 0.25,
    dominance: float = 0.75,
    even_share: float = 0.25,
) -> TextExplanation:
    """Write the sentence for precomputed region shares (the output of ``region_shares``).

    Parameters
    ----------
    shares
        ``{"total_mass", "outside", "regions"}`` from :func:`medxai.explain.anatomy.region_shares`.
    class_name, score
        The explained class and its score (a probability in [0, 1] unless ``score_kind`` says otherwise).
    method
        Explainer registry name ("gradcam", "lrp", ...) or a display name.
    score_kind
        ``"probability"`` or e.g. ``"relevance score"``; default: ``"relevance score"`` for LRP (seed 002
        reports LRP with a classification score), ``"probability"`` for every other method.
    true_class
        Adds "true class <name>" to the score clause, as seed 002's figures do.
    coverage, max_regions, min_share, outside_note, dominance, even_share
        Selection rules of the module docstring.
    """
    if score_kind is None:
        score_kind = "relevance score" if method.lower() in RELEVANCE_METHODS else "probability"
    score = float(score)
    if not np.isfinite(score):
        raise InputError(f"score of class '{class_name}' must be finite, got {score}.")
    if score_kind == "probability" and not 0.0 <= score <= 1.0:
        raise InputError(f"probability of class '{class_name}' must be in [0, 1], got {score}.")
    if not 0.0 < coverage <= 1.0 or max_regions < 1 or not 0.5 < dominance <= 1.0:
        raise InputError(
            f"need 0 < coverage <= 1, max_regions >= 1 and 0.5 < dominance <= 1; got {coverage}, {max_regions}, "
            f"{dominance}."
        )
    name = _method_name(method)
    clause = _score_text(score, score_kind) + (f", true class {true_class}" if true_class is not None else "")
    head = f"{class_name} ({clause})."
    outside = float(shares["outside"])
    selected: list[dict[str, Any]] = []
    if float(shares["total_mass"]) <= 0.0:
        tail = f"{_capitalise(name)} highlights no region (the map has no positive values)."
    elif outside > 0.5:
        tail = f"{_capitalise(name)} points mainly outside the lungs."
    else:
        inside = 1.0 - outside
        cumulative = 0.0
        for region in _candidates(shares["regions"], even_share):
            relative = region["share"] / inside if inside > 0 else 0.0
            if selected and (relative < min_share or len(selected) >= max_regions or cumulative >= coverage):
                break
            if relative <= 0.0:
                break
            selected.append(region)
            cumulative += relative
        phrases = [_region_phrase(region, dominance) for region in selected]
        tail = f"{_capitalise(name)} points mainly to {_join(phrases)}"
        tail += ", and partly outside the lungs." if outside >= outside_note else "."
    return TextExplanation(
        sentence=f"{head} {tail}",
        class_name=class_name,
        score=score,
        score_kind=score_kind,
        method=name,
        regions=[dict(r) for r in selected],
        outside_share=outside,
        true_class=true_class,
    )


def describe(
    saliency: np.ndarray | torch.Tensor,
    lung_mask: np.ndarray | torch.Tensor,
    class_name: str,
    score: float,
    method: str,
    score_kind: str | None = None,
    true_class: str | None = None,
    mask_kwargs: dict[str, Any] | None = None,
    **rules: Any,
) -> TextExplanation:
    """Sentence for one map (H, W) / (X, Y, Z) (or with a channel of 1) and its lung mask of the same shape.

    ``mask_kwargs`` go to :func:`medxai.explain.anatomy.lung_zones` (labels, ``labelled``, ``affine``,
    ``axcodes``); ``rules`` (``coverage``, ``max_regions``, ...) to :func:`describe_shares`.
    """
    zones = lung_zones(lung_mask, **(mask_kwargs or {}))
    return describe_shares(region_shares(saliency, zones), class_name, score, method, score_kind, true_class, **rules)


def describe_batch(
    maps: torch.Tensor | np.ndarray,
    lung_masks: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    method: str,
    targets: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    score_kind: str | None = None,
    mask_kwargs: dict[str, Any] | None = None,
    **rules: Any,
) -> list[TextExplanation]:
    """One :class:`TextExplanation` per sample of an explainer batch.

    Parameters
    ----------
    maps
        (B, 1, *spatial) explainer output.
    lung_masks
        (B, *spatial) or (B, 1, *spatial).
    scores
        (B, K) class probabilities (or relevance scores for LRP), one row per sample.
    class_names
        K names.
    targets
        Explained class per sample; default: the highest-scoring class.
    """
    scores_np = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if scores_np.ndim != 2 or scores_np.shape[1] != len(class_names):
        raise InputError(
            f"scores must be (B, {len(class_names)}) for {len(class_names)} classes, got {scores_np.shape}."
        )
    if maps.shape[0] != scores_np.shape[0] or lung_masks.shape[0] != scores_np.shape[0]:
        raise InputError(
            f"batch sizes differ: maps {maps.shape[0]}, lung masks {lung_masks.shape[0]}, scores {scores_np.shape[0]}."
        )
    chosen = scores_np.argmax(axis=1) if targets is None else np.asarray(
        targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets
    ).reshape(-1)
    if chosen.shape[0] != scores_np.shape[0]:
        raise InputError(f"got {chosen.shape[0]} targets for a batch of {scores_np.shape[0]} samples.")
    out = []
    for b in range(scores_np.shape[0]):
        k = int(chosen[b])
        if not 0 <= k < len(class_names):
            raise InputError(f"target class {k} of sample {b} is outside [0, {len(class_names)}).")
        out.append(
            describe(
                maps[b], lung_masks[b], class_names[k], float(scores_np[b, k]), method, score_kind,
                mask_kwargs=mask_kwargs, **rules,
            )
        )
    return out
