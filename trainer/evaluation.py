"""Predictions, metrics and modality weights of a fitted model on the rows of a ``FeatureSet``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from trainer.feature_set import FeatureSet
from trainer.heads import AttentionFusion, WeightedFusion
from trainer.metrics import classification_metrics, regression_metrics, sentiment_metrics
from trainer.tensors import Fitted, model_chunks

PREDICT_ROWS = 8192  # rows predicted at once (predictions do not depend on how rows are grouped)


@dataclass
class Predictions:
    """What a fitted model predicts on some rows, per task.

    Attributes:
        values: per task, class indices int64 ``(n,)`` (classification) or real values float32 ``(n,)`` (regression).
        probabilities: per classification task, float32 ``(n, n_classes)``: the softmax of the logits, columns in the
            order of ``Task.classes`` (each row sums to 1); regression tasks have none.
    """

    values: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]


def predict_with_probabilities(fitted: Fitted, data: FeatureSet, index: Optional[np.ndarray] = None) -> Predictions:
    """Per task, on the rows ``index`` (default: all, in that order): the predicted values and the class probabilities."""
    index = np.arange(len(data)) if index is None else np.asarray(index)
    order = np.argsort(index, kind="stable")  # chunks come in row order; predictions are put back in the order of index
    values: dict[str, list[np.ndarray]] = {t.label: [] for t in fitted.tasks}
    probabilities: dict[str, list[np.ndarray]] = {t.label: [] for t in fitted.tasks if t.kind == "classification"}
    with torch.no_grad():
        for tensors in model_chunks(data, index[order], fitted.standardiser, [], chunk_rows=fitted.chunk_rows or PREDICT_ROWS):
            outputs = fitted.model(tensors.inputs, tensors.present, tensors.lengths)
            for t in fitted.tasks:
                if t.kind == "classification":
                    values[t.label].append(outputs[t.label].argmax(dim=-1).numpy())
                    probabilities[t.label].append(torch.softmax(outputs[t.label].float(), dim=-1).numpy())
                else:
                    values[t.label].append(outputs[t.label].squeeze(-1).numpy())
    return Predictions({label: _in_index_order(parts, order) for label, parts in values.items()},
                       {label: _in_index_order(parts, order) for label, parts in probabilities.items()})


def _in_index_order(parts: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """Chunks predicted in row order (rows ``index[order]``), put back in the order of ``index`` (first axis)."""
    in_row_order = np.concatenate(parts)
    result = np.empty_like(in_row_order)
    result[order] = in_row_order
    return result


def predict(fitted: Fitted, data: FeatureSet, index: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Per task, on the rows ``index`` (default: all): class indices ``(n,)`` or real values ``(n,)``."""
    return predict_with_probabilities(fitted, data, index).values


def modality_weights(fitted: Fitted, data: FeatureSet) -> Optional[dict[str, float]]:
    """The weight each modality gets on ``data``, averaged over samples; ``None`` unless the fusion is ``weighted`` or ``attention``.

    ``weighted``: its softmax weights (renormalised over present modalities). ``attention``: the attention a
    modality's token receives from the present tokens (averaged over heads). Either way they sum to 1 per sample.
    """
    fusion = getattr(fitted.model, "fusion", None)
    if not isinstance(fusion, (WeightedFusion, AttentionFusion)):
        return None
    totals, count = np.zeros(len(data.modalities)), 0
    with torch.no_grad():
        for tensors in model_chunks(data, np.arange(len(data)), fitted.standardiser, [], chunk_rows=fitted.chunk_rows or PREDICT_ROWS):
            present = tensors.present
            if isinstance(fusion, WeightedFusion):
                weights = fusion.weights(present)
            else:
                fitted.model(tensors.inputs, present, tensors.lengths)
                queries = present.float().unsqueeze(-1)
                weights = (fusion.last_weights * queries).sum(dim=1) / queries.sum(dim=1).clamp(min=1.0)
            totals += weights.sum(dim=0).numpy()
            count += len(weights)
    return {m: float(total / max(count, 1)) for m, total in zip(data.modalities, totals)}


def evaluate(fitted: Fitted, data: FeatureSet, index: Optional[np.ndarray] = None) -> dict[str, dict[str, Any]]:
    """Metrics per task on the rows ``index`` of ``data`` (default: all)."""
    index = np.arange(len(data)) if index is None else np.asarray(index)
    predictions = predict(fitted, data, index)
    result = {}
    for task in fitted.tasks:
        truth = task.targets(data.labels[task.label][index])
        if task.kind == "classification":
            result[task.label] = classification_metrics(truth, predictions[task.label], task.outputs)
        elif task.sentiment:  # scores in [-3, 3]: also the metrics published tables use
            result[task.label] = sentiment_metrics(truth, predictions[task.label])
        else:
            result[task.label] = regression_metrics(truth, predictions[task.label])
    return result


def flatten_metrics(metrics: dict[str, dict[str, Any]], n_tasks: int) -> dict[str, float]:
    """The scalar metrics of ``evaluate``'s result, keyed ``<task>/<metric>`` when there are several tasks, ``<metric>`` otherwise."""
    flat = {}
    for task, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, float):
                flat[name if n_tasks == 1 else f"{task}/{name}"] = value
    return flat
