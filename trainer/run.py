"""``mmfeat train`` and ``mmfeat evaluate`` as library functions: cache in, metrics.json and checkpoint out."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from typing import Any, Optional

from trainer import checkpoint
from trainer.data import load_features
from trainer.plots import write_report_plots
from trainer.train import TrainConfig, cross_validate, evaluate, fit, infer_task

logger = logging.getLogger(__name__)


def train(
    cache: str,
    *,
    labels: list[str],
    config: TrainConfig,
    output: str,
    folds: int = 5,
    modalities: Optional[list[str]] = None,
    encoders: Optional[dict[str, str]] = None,
    task_type: str = "auto",
    init: Optional[str] = None,
) -> dict[str, Any]:
    """Cross-validate (when ``folds`` >= 2), then fit on every sample and save the checkpoint.

    Writes ``{output}/metrics.json`` (``folds``, ``mean``, ``std``, config, tasks, modalities) and the checkpoint.
    """
    if init:
        config = replace(config, init=init)
    data = load_features(cache, labels=labels, modalities=modalities, encoders=encoders)
    tasks = [infer_task(label, data.labels[label], task_type) for label in labels]
    logger.info("training %s on %d samples, modalities %s, tasks %s", config.fusion, len(data.sample_ids), data.modalities, labels)
    report: dict[str, Any] = cross_validate(data, tasks, config, folds) if folds >= 2 else {}
    fitted = fit(data, tasks, config)
    checkpoint.save(fitted, config, output)
    report |= {
        "modalities": data.modalities,
        "n_samples": len(data.sample_ids),
        "final_model": {"metrics_on_training_cache": evaluate(fitted, data), "history": fitted.history},
    }
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    write_report_plots(report, tasks, output)
    return report


def evaluate_checkpoint(model_dir: str, cache: str, *, encoders: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Metrics of a saved model on (another) cache, per task."""
    fitted, _ = checkpoint.load(model_dir)
    data = load_features(cache, labels=[t.label for t in fitted.tasks], modalities=fitted.model.modalities, encoders=encoders)
    return evaluate(fitted, data)
