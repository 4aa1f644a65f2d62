"""Classification metrics against values worked out by hand (seed 004 eqs. 1-5), the Mann-Whitney
definition of the AUC, and scikit-learn's multi-class reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_auc_score

from medxai.errors import InputError
from medxai.metrics.classification import (
    SCALAR_METRICS,
    Curves,
    bootstrap_auc_ci,
    check_classification_inputs,
    classification_report,
    plot_confusion,
    plot_pr,
    plot_roc,
    predicted_classes,
    roc_pr_curves,
    save_report_json,
)

# 8 patients, 5 COVID (class 1) and 3 normal (class 0); one COVID/normal pair tied at 0.6.
Y_TRUE = [1, 1, 1, 1, 1, 0, 0, 0]
Y_SCORE = [0.9, 0.8, 0.4, 0.65, 0.6, 0.7, 0.6, 0.2]
NAMES = ["normal", "covid"]


def mann_whitney_fraction(y_true, y_score) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), over all positive-negative pairs."""
    positives = [s for y, s in zip(y_true, y_score) if y == 1]
    negatives = [s for y, s in zip(y_true, y_score) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_binary_report_matches_hand_counts():
    report = classification_report(Y_TRUE, Y_SCORE, class_names=NAMES)
    # threshold 0.5: COVID 0.9, 0.8, 0.65, 0.6 called positive (TP 4), 0.4 missed (FN 1);
    # normal 0.7 and 0.6 called positive (FP 2), 0.2 negative (TN 1).
    assert report["counts"] == {
        "per_class": {"normal": 3, "covid": 5},
        "predicted_per_class": {"normal": 2, "covid": 6},
        "tp": 4, "fp": 2, "tn": 1, "fn": 1,
    }
    assert report["confusion_matrix"] == [[1, 2], [1, 4]]
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["precision"] == pytest.approx(4 / 6)
    assert report["npv"] == pytest.approx(1 / 2)
    assert report["sensitivity"] == pytest.approx(4 / 5)
    assert report["specificity"] == pytest.approx(1 / 3)
    assert report["f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    # AUC = Mann-Whitney U / (n+ n-): wins 3 + 3 + 1 + 2 + (1 + 0.5 tie) = 10.5 of 15 pairs.
    assert mann_whitney_fraction(Y_TRUE, Y_SCORE) == pytest.approx(10.5 / 15)
    assert report["auc"] == pytest.approx(10.5 / 15)
    # AP = sum over thresholds of (R_n - R_n-1) P_n = (1 + 1 + 3/4 + 4/6 + 5/7) / 5.
    assert report["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6 + 5 / 7) / 5)
    # The negative class one-vs-rest: its precision is the NPV, its sensitivity the specificity.
    normal = report["per_class"]["normal"]
    assert normal["precision"] == pytest.approx(1 / 2)
    assert normal["sensitivity"] == pytest.approx(1 / 3)
    assert normal["auc"] == pytest.approx(10.5 / 15)
    assert report["macro"]["sensitivity"] == pytest.approx((4 / 5 + 1 / 3) / 2)
    assert report["task"] == "binary" and report["positive_class"] == "covid" and report["notes"] == []


def test_threshold_and_two_column_scores_agree_with_one_column():
    high = classification_report(Y_TRUE, Y_SCORE, threshold=0.7)
    # >= 0.7: COVID 0.9, 0.8 (TP 2, FN 3); normal 0.7 (FP 1, TN 2).
    assert high["counts"]["tp"] == 2 and high["counts"]["fn"] == 3
    assert high["counts"]["fp"] == 1 and high["counts"]["tn"] == 2
    assert high["auc"] == pytest.approx(10.5 / 15)  # the ranking does not depend on the threshold
    two_columns = np.stack([1 - np.asarray(Y_SCORE), Y_SCORE], axis=1)
    from_columns = classification_report(torch.tensor(Y_TRUE), torch.from_numpy(two_columns), threshold=0.7)
    for metric in SCALAR_METRICS:
        assert from_columns[metric] == pytest.approx(high[metric])
    # class 0 as the positive class, with its own probability column
    flipped = classification_report(Y_TRUE, two_columns, positive_class=0, class_names=NAMES)
    assert flipped["positive_class"] == "normal"
    # normal probabilities 0.3, 0.4, 0.8 of the three normal cases: 1 of 3 reaches 0.5; COVID cases 0.6 once
    assert flipped["sensitivity"] == pytest.approx(1 / 3) and flipped["specificity"] == pytest.approx(4 / 5)
    assert flipped["auc"] == pytest.approx(10.5 / 15)


def test_multiclass_against_hand_counts_and_sklearn():
    y_true = [0, 0, 1, 1, 2, 2]
    y_score = np.array(  # class 2 is never the argmax
        [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.5, 0.4], [0.4, 0.35, 0.25]]
    )
    names = ["normal", "covid", "pneumonia"]
    report = classification_report(y_true, y_score, class_names=names, positive_class="covid")
    # argmax: 0, 1, 1, 0, 1, 0
    assert report["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert report["accuracy"] == pytest.approx(2 / 6)
    covid = report["per_class"]["covid"]
    assert covid["precision"] == pytest.approx(1 / 3) and covid["sensitivity"] == pytest.approx(1 / 2)
    assert covid["specificity"] == pytest.approx(2 / 4)
    assert report["sensitivity"] == covid["sensitivity"] and report["threshold"] is None
    pneumonia = report["per_class"]["pneumonia"]
    assert pneumonia["precision"] is None and pneumonia["sensitivity"] == 0.0 and pneumonia["f1"] == 0.0
    assert any("precision of class 'pneumonia'" in note for note in report["notes"])
    assert report["macro"]["precision"] == pytest.approx((1 / 3 + 1 / 3) / 2)  # over the two defined classes
    probabilities = y_score / y_score.sum(axis=1, keepdims=True)
    reference = roc_auc_score(y_true, probabilities, multi_class="ovr", average=None)
    for name, value in zip(["normal", "covid", "pneumonia"], reference):
        assert report["per_class"][name]["auc"] == pytest.approx(value)
    assert report["macro"]["auc"] == pytest.approx(roc_auc_score(y_true, probabilities, multi_class="ovr"))
    curves = roc_pr_curves(y_true, y_score, class_names=names)  # every class, one against the rest
    assert list(curves) == names and [c.auc for c in curves.values()] == pytest.approx(list(reference))


def test_one_class_present_gives_none_and_notes():
    report = classification_report([1, 1, 1], [0.2, 0.6, 0.9], n_bootstrap=20)
    assert report["auc"] is None and report["specificity"] is None and report["auc_ci"] is None
    assert report["sensitivity"] == pytest.approx(2 / 3)
    assert any(note.startswith("auc of class '1' is undefined") for note in report["notes"])
    assert any(note.startswith("auc_ci is undefined") for note in report["notes"])
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    assert "NaN" not in text


def test_bootstrap_ci_is_seeded_and_brackets_the_auc():
    first = classification_report(Y_TRUE, Y_SCORE, n_bootstrap=150, seed=3)["auc_ci"]
    second = classification_report(Y_TRUE, Y_SCORE, n_bootstrap=150, seed=3)["auc_ci"]
    other = classification_report(Y_TRUE, Y_SCORE, n_bootstrap=150, seed=4)["auc_ci"]
    assert first == second and first != other
    assert first["low"] <= 10.5 / 15 <= first["high"] and 0 < first["n_valid"] <= 150
    # perfectly separated cases: every resample has AUC 1
    perfect = bootstrap_auc_ci(np.array([0, 0, 0, 1, 1, 1], bool), np.arange(6.0), 100, seed=0)
    assert perfect["low"] == perfect["high"] == 1.0


def test_curves_match_the_report():
    curves = roc_pr_curves(Y_TRUE, Y_SCORE, class_names=NAMES)
    assert list(curves) == ["covid"]
    covid = curves["covid"]
    assert sklearn_auc(covid.fpr, covid.tpr) == pytest.approx(10.5 / 15) == covid.auc  # trapezoid area
    assert covid.fpr[0] == 0 and covid.tpr[-1] == 1 and math.isinf(covid.roc_thresholds[0])
    # PR end point at the lowest threshold: recall 1, precision 5/8... reached at score 0.2
    assert covid.recall[0] == 1.0 and covid.precision[0] == pytest.approx(5 / 8)
    one_class = roc_pr_curves([1, 1], [0.3, 0.4])["1"]
    assert one_class.fpr.size == 0 and one_class.auc is None and one_class.precision.size > 0


def test_report_json_with_curves(tmp_path):
    report = classification_report(Y_TRUE, Y_SCORE, class_names=NAMES, include_curves=True)
    path = save_report_json(report, tmp_path / "sub" / "evaluate.json")
    loaded = json.loads(path.read_text())
    roc = loaded["curves"]["covid"]["roc"]
    assert roc["thresholds"][0] is None and roc["thresholds"][1:] == [0.9, 0.8, 0.7, 0.65, 0.6, 0.4, 0.2]
    assert loaded["auc"] == pytest.approx(0.7) and loaded["confusion_matrix"] == [[1, 2], [1, 4]]


def test_predicted_classes():
    assert predicted_classes(Y_SCORE, 0.65).tolist() == [1, 1, 0, 1, 0, 1, 0, 0]
    assert predicted_classes([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]).tolist() == [1, 0]  # tie -> lower index


def test_plots_are_png_of_the_set_size_and_deterministic(tmp_path):
    curves = roc_pr_curves(Y_TRUE, Y_SCORE, class_names=NAMES)
    roc = plot_roc(curves, tmp_path / "roc.png")
    pr = plot_pr(curves["covid"], tmp_path / "pr.png", figsize=(4, 3), dpi=80)
    confusion = plot_confusion([[1, 2], [1, 4]], NAMES, tmp_path / "confusion.png")
    normalized = plot_confusion([[1, 2], [1, 4]], NAMES, tmp_path / "confusion_norm.png", normalize=True)
    for path, size in ((roc, (500, 500)), (pr, (320, 240)), (confusion, (500, 500)), (normalized, (500, 500))):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
    # the ROC line is drawn: the figure is not just the white background and the chance diagonal
    pixels = np.asarray(Image.open(roc).convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(axis=1) < 30).sum() > 200  # matplotlib C0 blue
    again = plot_roc(curves, tmp_path / "roc_again.png")
    assert again.read_bytes() == roc.read_bytes()
    assert confusion.read_bytes() != normalized.read_bytes()


def test_errors_name_the_case_and_value():
    with pytest.raises(InputError, match="case 2 is 0.5"):
        classification_report([0, 1, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="case 1 is 3, outside the classes"):
        classification_report([0, 3], [[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(InputError, match="case 1 is not finite"):
        classification_report([0, 1], [0.1, float("nan")])
    with pytest.raises(InputError, match="N = 3"):
        classification_report([0, 1, 1], [0.1, 0.2])
    with pytest.raises(InputError, match="'lung' is not one of the class names"):
        check_classification_inputs([0, 1], [0.1, 0.9], NAMES, "lung")
    with pytest.raises(InputError, match="must end in '.png'"):
        plot_roc(Curves(*[np.zeros(0)] * 6, None, None), "roc.jpg")
    with pytest.raises(InputError, match="one row per class name"):
        plot_confusion([[1, 2]], NAMES, "c.png")
