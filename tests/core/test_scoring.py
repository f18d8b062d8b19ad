"""Metrics against values worked out by hand."""

import math

import pytest

from adalora_core import scoring

PRED = [1, 1, 0, 0, 1]
REF = [1, 0, 0, 1, 1]  # TP=2, FP=1, FN=1, TN=1


def test_accuracy() -> None:
    assert scoring.accuracy(PRED, REF) == pytest.approx(3 / 5)


def test_binary_f1_is_f1_of_the_positive_class() -> None:
    assert scoring.f1(PRED, REF) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_macro_f1_skips_a_class_absent_from_predictions_and_references() -> None:
    """As scikit-learn's f1_score(average="macro"): class 2 never occurs, so the mean is over
    classes 0 and 1 (F1 2/3 each), not (2/3 + 2/3 + 0) / 3."""
    assert scoring.f1([0, 0, 1], [0, 1, 1], num_classes=3) == pytest.approx(2 / 3)


def test_macro_f1_for_three_classes() -> None:
    # class 0: F1 1; class 1: no true positive, 0; class 2: TP 1, FP 1, FN 1 -> 0.5
    assert scoring.f1([0, 1, 2, 2], [0, 2, 2, 1], num_classes=3) == pytest.approx(0.5)


def test_matthews_binary() -> None:
    expected = (2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2)
    assert scoring.matthews_corrcoef(PRED, REF) == pytest.approx(expected)


def test_matthews_perfect_inverse_and_constant() -> None:
    assert scoring.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert scoring.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert scoring.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0


def test_pearson_and_spearman() -> None:
    assert scoring.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert scoring.spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)
    # rank differences -2, 1, 1: rho = 1 - 6 * 6 / (3 * (9 - 1))
    assert scoring.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)


def test_regression_metrics_mse() -> None:
    assert scoring.regression_metrics([1.0, 2.0], [2.0, 4.0])["mse"] == pytest.approx(2.5)


def test_perplexity() -> None:
    assert scoring.perplexity(math.log(7.0)) == pytest.approx(7.0)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        scoring.accuracy([1, 0], [1, 0, 1])
