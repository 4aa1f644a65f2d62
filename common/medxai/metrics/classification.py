"""Patient-level (or image-level) classification metrics, ROC/PR curves and their plots.

:func:`classification_report` computes, from true labels and predicted scores, the metrics the papers
report (seed 004, Sec. 5.3, eqs. 1-5; seed 003, Table 2 and Figs. 11-12; seed 000, Table 3):

- accuracy ``(TP + TN) / N`` (eq. 1; for more than two classes, the fraction of correct argmax labels);
- precision (positive predictive value) ``TP / (TP + FP)`` (eq. 2) and negative predictive value
  ``TN / (TN + FN)``;
- sensitivity (recall) ``TP / (TP + FN)`` (eq. 3) and specificity ``TN / (TN + FP)`` (eq. 4);
- F1 ``2 precision recall / (precision + recall)`` (eq. 5);
- area under the ROC curve and average precision (area under the PR curve), from scikit-learn
  (:func:`sklearn.metrics.roc_auc_score`, :func:`sklearn.metrics.average_precision_score`);
- the confusion matrix (rows: true class, columns: predicted class), per-class one-vs-rest values and
  their macro averages, and an optional percentile-bootstrap confidence interval of the AUC (Efron and
  Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall 1993, ch. 13), resampling cases.

Classes are the integers ``0 .. K-1``. Scores are either ``(N,)``, the probability of the positive class of
a binary task, or ``(N, K)``, one score per class (probabilities, e.g. after softmax). A binary task
predicts the positive class where its score is at least ``threshold``; a task with ``K > 2`` predicts the
argmax. The top-level precision, sensitivity, specificity, F1, AUC and average precision always describe
``positive_class`` against the rest (e.g. COVID-19 against non-COVID); ``per_class`` and ``macro`` hold
every class's one-vs-rest values.

A value that is undefined on the given cases (AUC with one class present, precision with no positive
prediction, ...) is ``None`` in the report, and ``report["notes"]`` says which and why; macro averages
run over the defined per-class values. Nothing is silently set to 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from medxai.errors import InputError
from medxai.explain.writers import to_jsonable

__all__ = [
    "SCALAR_METRICS",
    "Curves",
    "check_classification_inputs",
    "predicted_classes",
    "classification_report",
    "bootstrap_auc_ci",
    "roc_pr_curves",
    "curves_as_dict",
    "plot_roc",
    "plot_pr",
    "plot_confusion",
    "save_report_json",
]

#: top-level scalar entries of :func:`classification_report` (positive class against the rest)
SCALAR_METRICS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "npv",
    "sensitivity",
    "specificity",
    "f1",
    "auc",
    "average_precision",
)
_PER_CLASS_METRICS: tuple[str, ...] = SCALAR_METRICS[1:]


class Curves(NamedTuple):
    """ROC and precision-recall curves of one class against the rest (arrays from scikit-learn).

    ``fpr``/``tpr``/``roc_thresholds`` are empty when the ROC curve is undefined (one class present);
    ``precision``/``recall``/``pr_thresholds`` are empty when the class has no case. ``roc_thresholds[0]``
    is ``inf`` (scikit-learn's point where nothing is called positive).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    roc_thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pr_thresholds: np.ndarray
    auc: float | None
    average_precision: float | None


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} cannot be read as an array: {error}") from error


def _class_index(entry: int | str, names: Sequence[str], name: str) -> int:
    """Index of a class given by index or by name."""
    if isinstance(entry, str):
        if entry not in names:
            raise InputError(f"{name} {entry!r} is not one of the class names {list(names)}.")
        return list(names).index(entry)
    index = int(entry)
    if not 0 <= index < len(names):
        raise InputError(f"{name} {entry} is outside the classes [0, {len(names)}).")
    return index


def check_classification_inputs(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str] | None = None,
    positive_class: int | str = 1,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Validate labels and scores and bring them to one form.

    Parameters
    ----------
    y_true
        (N,) integer class indices in ``[0, K)`` (numpy, torch, list; integral floats and bools accepted).
    y_score
        (N,) probability of ``positive_class`` (binary task), or (N, K) scores of each class.
    class_names
        K names, default ``"0" .. "K-1"``.
    positive_class
        Index or name of the positive class.

    Returns
    -------
    labels : np.ndarray
        (N,) int64.
    scores : np.ndarray
        (N, K) float64; for (N,) input, column ``positive_class`` is the given score and the other column
        ``1 - score``.
    class_names : list of str
        K names.
    positive : int
        Index of the positive class.
    """
    labels = _to_numpy(y_true, "y_true")
    scores = _to_numpy(y_score, "y_score")
    if labels.ndim != 1 or labels.size == 0:
        raise InputError(f"y_true must be a non-empty 1D array of class indices, got shape {labels.shape}.")
    if scores.ndim not in (1, 2) or scores.shape[0] != labels.shape[0]:
        raise InputError(
            f"y_score must have shape (N,) or (N, K) with N = {labels.shape[0]} (the length of y_true), "
            f"got {scores.shape}."
        )
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_):
        raise InputError(f"y_score must be numeric, got dtype {scores.dtype}.")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores).reshape(scores.shape[0], -1).all(axis=1))[0])
        raise InputError(f"y_score of case {bad} is not finite: {scores[bad].tolist()}.")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise InputError(f"y_true must hold integer class indices, got dtype {labels.dtype}.")
    as_float = labels.astype(np.float64)
    integral = np.isfinite(as_float) & (as_float == np.round(as_float))
    if not integral.all():
        bad = int(np.flatnonzero(~integral)[0])
        raise InputError(f"y_true of case {bad} is {labels[bad].item()!r}, not an integer class index.")
    labels = as_float.astype(np.int64)

    n_classes = 2 if scores.ndim == 1 else scores.shape[1]
    if n_classes < 2:
        raise InputError(f"y_score must give scores of at least 2 classes, got shape {scores.shape}.")
    if class_names is None:
        names = [str(k) for k in range(n_classes)]
    else:
        names = [str(name) for name in class_names]
        if len(names) != n_classes:
            raise InputError(f"class_names has {len(names)} names but y_score has {n_classes} classes: {names}.")
        if len(set(names)) != len(names):
            raise InputError(f"class_names must be unique, got {names}.")
    outside = (labels < 0) | (labels >= n_classes)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise InputError(f"y_true of case {bad} is {labels[bad]}, outside the classes [0, {n_classes}).")

    positive = _class_index(positive_class, names, "positive_class")
    if scores.ndim == 1:
        column = scores
        scores = np.empty((labels.shape[0], 2), dtype=np.float64)
        scores[:, positive], scores[:, 1 - positive] = column, 1.0 - column
    return labels, scores, names, positive


def _defined(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _one_vs_rest_auc(is_class: np.ndarray, score: np.ndarray) -> float | None:
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, score))


def _one_vs_rest_ap(is_class: np.ndarray, score: np.ndarray) -> float | None:
    if not is_class.any():
        return None
    return float(average_precision_score(is_class, score))


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator) / float(denominator) if denominator > 0 else None


def bootstrap_auc_ci(
    is_positive: np.ndarray,
    score: np.ndarray,
    n_bootstrap: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Percentile-bootstrap confidence interval of the ROC AUC, resampling cases with replacement.

    Parameters
    ----------
    is_positive
        (N,) bool, the cases of the positive class.
    score
        (N,) score of the positive class.
    n_bootstrap
        Number of resamples (1000 or more for a reported interval).
    confidence
        Coverage of the interval, in (0, 1).
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same interval.

    Returns
    -------
    dict or None
        ``low``, ``high`` (percentiles of the resampled AUCs), ``confidence``, ``n_bootstrap``, ``n_valid``
        (resamples with both classes; the others are skipped) and ``seed``; ``None`` when no resample has
        both classes.
    """
    if int(n_bootstrap) < 1:
        raise InputError(f"n_bootstrap must be a positive integer, got {n_bootstrap}.")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}.")
    is_positive = np.asarray(is_positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, is_positive.shape[0], size=(int(n_bootstrap), is_positive.shape[0]))
    values = []
    for rows in samples:
        resampled = is_positive[rows]
        if resampled.all() or not resampled.any():
            continue
        values.append(roc_auc_score(resampled, score[rows]))
    if not values:
        return None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(np.asarray(values), [tail, 100.0 - tail])
    return {
        "low": float(low),
        "high": float(high),
        "confidence": float(confidence),
        "n_bootstrap": int(n_bootstrap),
        "n_valid": len(values),
        "seed": int(seed),
    }


def _decide(scores: np.ndarray, threshold: float, positive: int) -> np.ndarray:
    if scores.shape[1] == 2:
        return np.where(scores[:, positive] >= threshold, positive, 1 - positive)
    return np.argmax(scores, axis=1)


def predicted_classes(
    y_score: Any,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    positive_class: int | str = 1,
) -> np.ndarray:
    """Predicted class indices (N,) from scores (N,) or (N, K), as :func:`classification_report` decides:
    ``positive_class`` where its score is ``>= threshold`` (binary), else the argmax (``K > 2``; ties go to
    the lower index)."""
    scores = _to_numpy(y_score, "y_score")
    labels = np.zeros(scores.shape[0] if scores.ndim else 0, dtype=np.int64)
    _, scores, _, positive = check_classification_inputs(labels, scores, class_names, positive_class)
    if not math.isfinite(float(threshold)):
        raise InputError(f"threshold must be a finite number, got {threshold}.")
    return _decide(scores, float(threshold), positive)


def classification_report(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    class_names: Sequence[str] | None = None,
    positive_class: int | str = 1,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    include_curves: bool = False,
) -> dict[str, Any]:
    """Classification metrics of one set of cases (e.g. patients), as a JSON-ready dict.

    Parameters
    ----------
    y_true
        (N,) true class indices in ``[0, K)``.
    y_score
        (N,) probability of ``positive_class`` (binary) or (N, K) class scores.
    threshold
        Binary tasks: a case is called positive where the positive class's score is ``>= threshold``.
        Unused with ``K > 2`` (argmax).
    class_names
        K class names (default ``"0" .. "K-1"``), used as keys of ``per_class`` and ``counts``.
    positive_class
        Index or name of the class the top-level precision, sensitivity, ... describe.
    n_bootstrap
        If positive, add ``auc_ci``: a bootstrap interval of the positive class's AUC
        (:func:`bootstrap_auc_ci`) with ``confidence`` and ``seed``.
    include_curves
        Add ``curves``: ROC and PR arrays (:func:`roc_pr_curves`, :func:`curves_as_dict`) of the positive
        class (binary) or of every class (``K > 2``).

    Returns
    -------
    dict
        ``task`` ("binary"/"multiclass"), ``class_names``, ``positive_class`` (name), ``decision``,
        ``threshold``, ``n_cases``, the :data:`SCALAR_METRICS` of the positive class against the rest,
        ``confusion_matrix`` (K x K, rows true, columns predicted), ``counts`` (``per_class`` true counts,
        ``predicted_per_class``, and ``tp``/``fp``/``tn``/``fn`` of the positive class), ``per_class``
        (name -> precision, npv, sensitivity, specificity, f1, auc, average_precision, support),
        ``macro`` (means over the defined per-class values), ``auc_ci`` (or ``None``), optionally
        ``curves``, and ``notes`` (why any value is ``None``).
    """
    labels, scores, names, positive = check_classification_inputs(y_true, y_score, class_names, positive_class)
    if not math.isfinite(float(threshold)):
        raise InputError(f"threshold must be a finite number, got {threshold}.")
    n_cases, n_classes = scores.shape
    binary = n_classes == 2
    predicted = _decide(scores, float(threshold), positive)
    class_indices = list(range(n_classes))
    notes: list[str] = []

    matrix = confusion_matrix(labels, predicted, labels=class_indices)
    per_class_confusion = multilabel_confusion_matrix(labels, predicted, labels=class_indices)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=class_indices, average=None, zero_division=np.nan
    )
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        (tn, fp), (fn, tp) = per_class_confusion[k]
        is_class = labels == k
        values = {
            "precision": _defined(precision[k]),
            "npv": _ratio(tn, tn + fn),
            "sensitivity": _defined(recall[k]),
            "specificity": _ratio(tn, tn + fp),
            "f1": _defined(f1[k]),
            "auc": _one_vs_rest_auc(is_class, scores[:, k]),
            "average_precision": _one_vs_rest_ap(is_class, scores[:, k]),
            "support": int(support[k]),
        }
        per_class[name] = values
        reasons = {
            "precision": f"no case was predicted '{name}'",
            "npv": f"every case was predicted '{name}'",
            "sensitivity": f"no case is '{name}'",
            "specificity": f"every case is '{name}'",
            "f1": f"no case is or was predicted '{name}'",
            "auc": f"one class present ({int(is_class.sum())} of {n_cases} cases are '{name}')",
            "average_precision": f"no case is '{name}'",
        }
        for metric in _PER_CLASS_METRICS:
            if values[metric] is None:
                notes.append(f"{metric} of class '{name}' is undefined: {reasons[metric]}.")

    macro: dict[str, float | None] = {}
    for metric in _PER_CLASS_METRICS:
        defined = [per_class[name][metric] for name in names if per_class[name][metric] is not None]
        macro[metric] = float(np.mean(defined)) if defined else None
        if defined and len(defined) < n_classes:
            notes.append(f"macro {metric} averages the {len(defined)} of {n_classes} classes where it is defined.")

    (tn, fp), (fn, tp) = per_class_confusion[positive]
    report: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "class_names": names,
        "positive_class": names[positive],
        "decision": f"score of '{names[positive]}' >= threshold" if binary else "argmax",
        "threshold": float(threshold) if binary else None,
        "n_cases": int(n_cases),
        "accuracy": float(accuracy_score(labels, predicted)),
    }
    for metric in _PER_CLASS_METRICS:
        report[metric] = per_class[names[positive]][metric]
    report["confusion_matrix"] = matrix.astype(int).tolist()
    report["counts"] = {
        "per_class": {name: int(count) for name, count in zip(names, matrix.sum(axis=1))},
        "predicted_per_class": {name: int(count) for name, count in zip(names, matrix.sum(axis=0))},
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }
    report["per_class"] = per_class
    report["macro"] = macro
    report["auc_ci"] = None
    if n_bootstrap:
        report["auc_ci"] = bootstrap_auc_ci(labels == positive, scores[:, positive], n_bootstrap, confidence, seed)
        if report["auc_ci"] is None:
            notes.append(f"auc_ci is undefined: none of the {n_bootstrap} resamples has both classes.")
    if include_curves:
        curve_classes = [positive] if binary else class_indices
        curves = roc_pr_curves(labels, scores, class_names=names, classes=curve_classes)
        report["curves"] = {name: curves_as_dict(curve) for name, curve in curves.items()}
    report["notes"] = notes
    return report


def roc_pr_curves(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str] | None = None,
    positive_class: int | str = 1,
    classes: Sequence[int | str] | None = None,
) -> dict[str, Curves]:
    """ROC and precision-recall curves, one class against the rest (scikit-learn's ``roc_curve`` and
    ``precision_recall_curve``, the curves of seed 003, Figs. 11-12).

    Parameters
    ----------
    y_true, y_score, class_names, positive_class
        As in :func:`classification_report`.
    classes
        Indices or names of the classes to compute; default: ``positive_class`` for a binary task, every
        class for ``K > 2``.

    Returns
    -------
    dict
        Class name -> :class:`Curves`, in the order of ``classes``.
    """
    labels, scores, names, positive = check_classification_inputs(y_true, y_score, class_names, positive_class)
    if classes is None:
        classes = [positive] if scores.shape[1] == 2 else list(range(scores.shape[1]))
    curves: dict[str, Curves] = {}
    for entry in classes:
        k = _class_index(entry, names, "class")
        is_class = labels == k
        empty = np.zeros(0, dtype=np.float64)
        fpr = tpr = roc_thresholds = precision = recall = pr_thresholds = empty
        if is_class.any() and not is_class.all():
            fpr, tpr, roc_thresholds = roc_curve(is_class, scores[:, k])
        if is_class.any():
            precision, recall, pr_thresholds = precision_recall_curve(is_class, scores[:, k])
        curves[names[k]] = Curves(
            fpr=fpr,
            tpr=tpr,
            roc_thresholds=roc_thresholds,
            precision=precision,
            recall=recall,
            pr_thresholds=pr_thresholds,
            auc=_one_vs_rest_auc(is_class, scores[:, k]),
            average_precision=_one_vs_rest_ap(is_class, scores[:, k]),
        )
    return curves


def curves_as_dict(curves: Curves) -> dict[str, Any]:
    """:class:`Curves` as nested lists: ``{"roc": {"fpr", "tpr", "thresholds", "auc"}, "pr": {"precision",
    "recall", "thresholds", "average_precision"}}``. The infinite first ROC threshold is kept as ``inf`` here
    and becomes ``null`` in JSON (:func:`save_report_json`)."""
    return {
        "roc": {
            "fpr": curves.fpr.tolist(),
            "tpr": curves.tpr.tolist(),
            "thresholds": curves.roc_thresholds.tolist(),
            "auc": curves.auc,
        },
        "pr": {
            "precision": curves.precision.tolist(),
            "recall": curves.recall.tolist(),
            "thresholds": curves.pr_thresholds.tolist(),
            "average_precision": curves.average_precision,
        },
    }


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save_figure(figure: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"plots are written as PNG: the path must end in '.png', got '{path.name}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" text chunk: the bytes depend only on the figure (and the matplotlib/FreeType build).
    figure.savefig(path, dpi=dpi, format="png", metadata={"Software": None})
    return path


def _as_curve_dict(curves: Curves | Mapping[str, Curves]) -> Mapping[str, Curves]:
    if isinstance(curves, Curves):
        return {"": curves}
    if not isinstance(curves, Mapping) or not all(isinstance(c, Curves) for c in curves.values()):
        raise InputError(f"curves must be a Curves or a mapping of names to Curves, got {type(curves).__name__}.")
    return curves


def _label(name: str, metric: str, value: float | None) -> str:
    shown = "undefined" if value is None else f"{value:.3f}"
    return f"{name} ({metric} {shown})" if name else f"{metric} {shown}"


def plot_roc(
    curves: Curves | Mapping[str, Curves],
    path: str | Path,
    title: str = "ROC curve",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
) -> Path:
    """Plot ROC curves (one per entry, labelled with its AUC) and the chance diagonal to a PNG.

    The image is ``figsize * dpi`` pixels (default 500 x 500). Undefined curves (empty arrays) are listed
    in the legend as undefined. Returns ``path``.
    """
    figure, axes = _figure(figsize)
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, curve in _as_curve_dict(curves).items():
        axes.plot(curve.fpr, curve.tpr, linewidth=2, label=_label(name, "AUC", curve.auc))
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)", title=title)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return _save_figure(figure, path, dpi)


def plot_pr(
    curves: Curves | Mapping[str, Curves],
    path: str | Path,
    title: str = "Precision-recall curve",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
) -> Path:
    """Plot precision-recall curves (one per entry, labelled with its average precision) to a PNG of
    ``figsize * dpi`` pixels. Returns ``path``."""
    figure, axes = _figure(figsize)
    for name, curve in _as_curve_dict(curves).items():
        axes.step(curve.recall, curve.precision, where="post", linewidth=2,
                  label=_label(name, "AP", curve.average_precision))
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return _save_figure(figure, path, dpi)


def plot_confusion(
    matrix: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = False,
    title: str = "Confusion matrix",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
    cmap: str = "Blues",
) -> Path:
    """Plot a confusion matrix (K x K, rows true class, columns predicted class) with each cell's value.

    Parameters
    ----------
    normalize
        Show each row divided by its total (the fraction of each true class given each prediction; the
        diagonal is then the per-class sensitivity). A row without cases stays 0.

    Returns
    -------
    Path
        ``path``, a PNG of ``figsize * dpi`` pixels.
    """
    counts = _to_numpy(matrix, "matrix").astype(np.float64)
    names = [str(name) for name in class_names]
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(names):
        raise InputError(
            f"matrix must be square with one row per class name ({len(names)} names), got shape {counts.shape}."
        )
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise InputError("matrix must hold finite non-negative counts.")
    shown = counts
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    figure, axes = _figure(figsize)
    top = 1.0 if normalize else max(float(shown.max()), 1.0)
    axes.imshow(shown, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
    for row in range(shown.shape[0]):
        for col in range(shown.shape[1]):
            text = f"{shown[row, col]:.2f}" if normalize else f"{int(round(shown[row, col]))}"
            colour = "white" if shown[row, col] > top / 2 else "black"
            axes.text(col, row, text, ha="center", va="center", color=colour)
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, labels=names)
    axes.set_yticks(ticks, labels=names)
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.tight_layout()
    return _save_figure(figure, path, dpi)


def save_report_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write a report (:func:`classification_report`) as indented, strict JSON (NaN and infinities become
    ``null``). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n")
    return path
