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
