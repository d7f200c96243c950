"""Evaluation metrics: classification (accuracy, precision/recall/F1 macro and weighted, confusion matrix)
and regression (MAE, Pearson r), computed with scikit-learn."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as sk


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Metrics of class indices ``(n,)``; ``confusion_matrix`` rows are true classes."""
    labels = list(range(n_classes))
    result: dict[str, Any] = {"accuracy": float(sk.accuracy_score(truth, predicted))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = sk.precision_recall_fscore_support(truth, predicted, labels=labels, average=average, zero_division=0)
        result |= {f"precision_{average}": float(precision), f"recall_{average}": float(recall), f"f1_{average}": float(f1)}
    result["confusion_matrix"] = sk.confusion_matrix(truth, predicted, labels=labels).tolist()
    return result


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """MAE and Pearson r of real values ``(n,)`` (r is 0 when either side is constant)."""
    r = float(np.corrcoef(truth, predicted)[0, 1]) if np.std(truth) > 0 and np.std(predicted) > 0 else 0.0
    return {"mae": float(np.mean(np.abs(truth - predicted))), "pearson_r": r}


def sentiment_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The regression metrics MMSA reports for sentiment scores in [-3, 3], computed as MMSA does.

    * ``acc2_has0`` / ``f1_has0``: negative (< 0) against non-negative (>= 0), every sample;
    * ``acc2_non0`` / ``f1_non0``: negative against positive, samples whose true score is not 0;
    * ``acc5`` / ``acc7``: scores clipped to [-2, 2] / [-3, 3] and rounded to the nearest integer class;
    F1 values are weighted F1, as in MMSA's tables.
    """
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    result = regression_metrics(truth, predicted)
    has0_true, has0_pred = truth >= 0, predicted >= 0
    result["acc2_has0"] = float(np.mean(has0_true == has0_pred))
    result["f1_has0"] = float(sk.f1_score(has0_true, has0_pred, average="weighted"))
    nonzero = truth != 0
    non0_true, non0_pred = truth[nonzero] > 0, predicted[nonzero] > 0
    result["acc2_non0"] = float(np.mean(non0_true == non0_pred)) if nonzero.any() else 0.0
    result["f1_non0"] = float(sk.f1_score(non0_true, non0_pred, average="weighted")) if nonzero.any() else 0.0
    for name, bound in (("acc5", 2.0), ("acc7", 3.0)):
        result[name] = float(np.mean(np.round(np.clip(truth, -bound, bound)) == np.round(np.clip(predicted, -bound, bound))))
    return result
