"""Classification metrics the trainers, model cards and benchmarks report.

Numpy only (the HA side has no scikit-learn); the tests check each one against scikit-learn.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .errors import TrainingError

IntArray = npt.NDArray[np.int64]


def _labels(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.ndim != 1 or true.shape != pred.shape or true.size == 0:
        raise TrainingError(
            f"metrics need two equal-length, non-empty label vectors, got {true.shape} and "
            f"{pred.shape}",
            reason="metric_input",
        )
    return true.astype(np.int64), pred.astype(np.int64)


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, classes: npt.ArrayLike
) -> IntArray:
    """Counts `[i, j]` of samples of class `classes[i]` predicted as `classes[j]`."""
    true, pred = _labels(y_true, y_pred)
    class_ids = np.asarray(classes, dtype=np.int64)
    n = class_ids.size
    true_index = np.searchsorted(class_ids, true)
    pred_index = np.searchsorted(class_ids, pred)
    counts = np.bincount(true_index * n + pred_index, minlength=n * n)
    return counts.reshape(n, n).astype(np.int64)


def balanced_accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Mean recall over the classes that occur in `y_true` (scikit-learn's definition)."""
    true, pred = _labels(y_true, y_pred)
    classes = np.union1d(true, pred)
    matrix = confusion_matrix(true, pred, classes)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Unweighted mean F1 over the classes seen in either vector (scikit-learn's default)."""
    true, pred = _labels(y_true, y_pred)
    classes = np.union1d(true, pred)
    matrix = confusion_matrix(true, pred, classes)
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # = 2 tp + fp + fn
    f1 = np.divide(
        2.0 * true_positive,
        denominator,
        out=np.zeros_like(true_positive),
        where=denominator > 0,
    )
    return float(np.mean(f1))


def expected_calibration_error(
    y_true: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = 10
) -> float:
    """Sample-weighted mean gap between confidence and accuracy over equal-width bins.

    Binary models pass the positive-class probability (shape `[N]` or `[N, 1]`) and the gap is
    between the mean predicted probability and the positive rate per bin, as in a reliability
    diagram. Multi-class models pass `[N, K]` probabilities and the top-label confidence is
    compared with top-label accuracy.
    """
    true = np.asarray(y_true).astype(np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    if n_bins < 1:
        raise TrainingError("n_bins must be at least 1", reason="metric_input")
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        confidence, outcome = probs, (true == 1).astype(np.float64)
    elif probs.ndim == 2:
        confidence = probs.max(axis=1)
        outcome = (probs.argmax(axis=1) == true).astype(np.float64)
    else:
        raise TrainingError("probabilities must be [N] or [N, K]", reason="metric_input")
    if true.ndim != 1 or confidence.shape != true.shape or true.size == 0:
        raise TrainingError(
            "labels and probabilities must describe the same non-empty batch",
            reason="metric_input",
        )
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins, the last one including 1.0: the binning scikit-learn's reliability
    # curve uses, so the two agree bin by bin.
    bin_index = np.searchsorted(edges[1:-1], confidence)
    confidence_sum = np.bincount(bin_index, weights=confidence, minlength=n_bins)
    outcome_sum = np.bincount(bin_index, weights=outcome, minlength=n_bins)
    return float(np.sum(np.abs(confidence_sum - outcome_sum)) / true.size)
