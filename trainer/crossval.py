"""k-fold cross-validation of fusion heads, folds trained in parallel processes (``trainer.folds``)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from schemas.errors import ConfigError
from trainer.evaluation import flatten_metrics
from trainer.feature_set import FeatureSet
from trainer.folds import FoldJob, Metrics, run_fold_jobs
from trainer.tasks import Task
from trainer.train import TrainConfig


def fold_splits(data: FeatureSet, tasks: list[Task], folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train rows, test rows) pairs, stratified on the first task when it is a classification.

    Raises:
        ConfigError: ``folds`` < 2.
    """
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2 (got {folds})")
    first = tasks[0]
    if first.kind == "classification":
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(data)), first.targets(data.labels[first.label])))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(data))))


def fold_jobs(data: FeatureSet, tasks: list[Task], config: TrainConfig, folds: int, *, name: Optional[str] = None) -> list[FoldJob]:
    """The fits of a ``folds``-fold cross-validation of ``config`` on ``data`` (named ``"<name> fold k/folds"``)."""
    name = name or config.fusion
    return [FoldJob(f"{name} fold {number}/{folds}", tuple(data.modalities), tasks, config, train, test)
            for number, (train, test) in enumerate(fold_splits(data, tasks, folds, config.seed), start=1)]


def summarise(per_fold: list[Metrics], tasks: list[Task], config: TrainConfig) -> dict[str, Any]:
    """``{"folds": per-fold metrics by task, "mean": {...}, "std": {...}, "config", "tasks"}`` (mean and std of the scalar
    metrics, keyed ``<task>/<metric>`` when there are several tasks)."""
    flat = [flatten_metrics(fold, len(tasks)) for fold in per_fold]
    keys = flat[0].keys()
    return {
        "folds": per_fold,
        "mean": {k: float(np.mean([f[k] for f in flat])) for k in keys},
        "std": {k: float(np.std([f[k] for f in flat])) for k in keys},
        "config": asdict(config),
        "tasks": [asdict(t) for t in tasks],
    }


def cross_validate(data: FeatureSet, tasks: list[Task], config: TrainConfig, folds: int, *, jobs: Optional[int] = None) -> dict[str, Any]:
    """``folds``-fold cross-validation (stratified on the first task when it is a classification), ``jobs`` folds at
    a time in worker processes (default: one per usable core; 1: in this process). Results do not depend on ``jobs``.

    Returns ``summarise``'s report.
    """
    per_fold = run_fold_jobs(data, fold_jobs(data, tasks, config, folds), jobs=jobs, title="cross-validation")
    return summarise(per_fold, tasks, config)
