"""Evaluation metrics (GLUE conventions) on plain sequences of predictions and references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    pred, ref = _pair(predictions, references)
    return float(np.mean(pred == ref))


def f1(predictions: Sequence[int], references: Sequence[int], num_classes: int = 2) -> float:
    """Binary F1 of class 1 for two classes; otherwise macro F1, the unweighted mean over the
    classes that occur in the predictions or the references (scikit-learn's ``average="macro"``:
    a class absent from both is skipped, not counted as 0)."""
    pred, ref = _pair(predictions, references)
    if num_classes <= 2:
        return _f1_of_class(pred, ref, 1)
    return float(np.mean([_f1_of_class(pred, ref, c) for c in np.union1d(pred, ref)]))


def matthews_corrcoef(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined, as scikit-learn."""
    pred, ref = _pair(predictions, references)
    classes = np.union1d(pred, ref)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, r in zip(pred, ref, strict=True):
        confusion[index[r], index[p]] += 1
    t_k = confusion.sum(axis=1)
    p_k = confusion.sum(axis=0)
    c = np.trace(confusion)
    s = confusion.sum()
    denominator = math.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    if denominator == 0:
        return 0.0
    return float((c * s - t_k @ p_k) / denominator)


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    pred, ref = _pair(predictions, references, dtype=np.float64)
    if np.std(pred) == 0 or np.std(ref) == 0:
        return 0.0
    return float(stats.pearsonr(pred, ref)[0])


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    pred, ref = _pair(predictions, references, dtype=np.float64)
    if np.std(pred) == 0 or np.std(ref) == 0:
        return 0.0
    return float(stats.spearmanr(pred, ref)[0])


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean per-token cross-entropy, capped so JSON never sees infinity."""
    return float(math.exp(min(mean_token_loss, 50.0)))


def classification_metrics(
    predictions: Sequence[int], references: Sequence[int], num_classes: int
) -> dict[str, float]:
    return {
        "accuracy": accuracy(predictions, references),
        "f1": f1(predictions, references, num_classes),
        "matthews": matthews_corrcoef(predictions, references),
    }


def regression_metrics(
    predictions: Sequence[float], references: Sequence[float]
) -> dict[str, float]:
    pred, ref = _pair(predictions, references, dtype=np.float64)
    return {
        "mse": float(np.mean((pred - ref) ** 2)),
        "pearson": pearson(pred, ref),
        "spearman": spearman(pred, ref),
    }


def _f1_of_class(pred: np.ndarray, ref: np.ndarray, positive: int) -> float:
    tp = float(np.sum((pred == positive) & (ref == positive)))
    fp = float(np.sum((pred == positive) & (ref != positive)))
    fn = float(np.sum((pred != positive) & (ref == positive)))
    if tp == 0:
        return 0.0
    return 2 * tp / (2 * tp + fp + fn)


def _pair(
    predictions: Sequence[float], references: Sequence[float], dtype: type = np.int64
) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(predictions, dtype=dtype)
    ref = np.asarray(references, dtype=dtype)
    if pred.shape != ref.shape:
        raise ValueError(f"{len(pred)} predictions for {len(ref)} references")
    if pred.size == 0:
        raise ValueError("no predictions to score")
    return pred, ref
