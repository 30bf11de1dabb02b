"""The core's metrics agree with scikit-learn's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.errors import TrainingError
from mlmule_core.metrics import balanced_accuracy, expected_calibration_error, macro_f1
from sklearn.calibration import calibration_curve
from sklearn.metrics import balanced_accuracy_score, f1_score

label_pairs = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(label_pairs)
def test_balanced_accuracy_matches_sklearn(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected = balanced_accuracy_score(y_true, y_pred)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(label_pairs)
def test_macro_f1_matches_sklearn(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = pair
    expected = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def _ece_from_sklearn(y_true: np.ndarray, confidence: np.ndarray, n_bins: int) -> float:
    """ECE from scikit-learn's reliability curve, weighting each non-empty bin by its count."""
    prob_true, prob_pred = calibration_curve(y_true, confidence, n_bins=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / y_true.size)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
@pytest.mark.parametrize("seed", range(4))
def test_binary_ece_matches_sklearn_reliability_curve(n_bins: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probability = rng.uniform(size=500)
    # Edges exactly on bin boundaries exercise the bin assignment.
    probability[:20] = np.linspace(0.0, 1.0, 20).round(1)
    y = (rng.uniform(size=500) < probability**1.5).astype(int)
    ours = expected_calibration_error(y, probability[:, None], n_bins=n_bins)
    assert ours == pytest.approx(_ece_from_sklearn(y, probability, n_bins), abs=1e-12)
    assert ours > 0.01  # miscalibrated on purpose


def test_multiclass_ece_is_top_label_reliability() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(400, 4)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, size=400)
    correct = (probabilities.argmax(axis=1) == y).astype(int)
    expected = _ece_from_sklearn(correct, probabilities.max(axis=1), 10)
    assert expected_calibration_error(y, probabilities) == pytest.approx(expected, abs=1e-12)


def test_perfectly_calibrated_predictions_have_small_ece() -> None:
    rng = np.random.default_rng(9)
    probability = rng.uniform(size=200_000)
    y = (rng.uniform(size=probability.size) < probability).astype(int)
    assert expected_calibration_error(y, probability) < 0.01


@pytest.mark.parametrize(
    ("y_true", "y_pred"), [([], []), ([0, 1], [0]), ([[0, 1]], [[0, 1]])], ids=str
)
def test_bad_label_vectors_are_refused(y_true: list[int], y_pred: list[int]) -> None:
    for metric in (balanced_accuracy, macro_f1):
        with pytest.raises(TrainingError) as caught:
            metric(y_true, y_pred)
        assert caught.value.reason == "metric_input"


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(TrainingError):
        expected_calibration_error([0, 1], np.zeros((2, 2, 2)))
    with pytest.raises(TrainingError):
        expected_calibration_error([0, 1, 1], [0.2, 0.4])
    with pytest.raises(TrainingError):
        expected_calibration_error([0, 1], [0.2, 0.4], n_bins=0)
