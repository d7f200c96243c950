"""Training fusion heads on a ``FeatureSet``: tasks, standardisation, early stopping, cross-validation.

Determinism: a fixed ``seed`` seeds every random choice (splits, initialisation,
batches, dropout), so a rerun gives identical metrics on the same machine.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch import nn

from schemas.errors import ConfigError
from trainer.data import FeatureSet
from trainer.heads import FUSIONS, FusionModel
from trainer.metrics import classification_metrics, regression_metrics, sentiment_metrics

logger = logging.getLogger(__name__)


@dataclass
class Task:
    """One label column: ``classification`` (with its ``classes``) or ``regression``; ``weight`` scales its loss.

    The kind (and, for regression, whether scores lie in [-3, 3]) is decided once from the whole
    column, so every fold reports the same metrics.
    """

    label: str
    kind: str
    classes: list[Any] = field(default_factory=list)
    weight: float = 1.0
    sentiment: bool = False  # a regression on scores in [-3, 3]: also report the MMSA sentiment metrics

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    def targets(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "classification":
            lookup = {c: i for i, c in enumerate(self.classes)}
            return np.array([lookup[v] for v in values], dtype=np.int64)
        return values.astype(np.float32)


def infer_task(label: str, values: np.ndarray, kind: str = "auto") -> Task:
    """``classification`` for strings, booleans or few integer values; ``regression`` for floats (unless ``kind`` says)."""
    if kind == "auto":
        numeric = values.dtype.kind in "iuf"
        kind = "regression" if numeric and (values.dtype.kind == "f" and len(np.unique(values)) > 10) else "classification"
    if kind == "classification":
        return Task(label, kind, classes=sorted(np.unique(values).tolist(), key=str))
    if kind == "regression":
        return Task(label, kind, sentiment=bool(np.all(np.abs(values.astype(np.float64)) <= 3.0)))
    raise ConfigError(f"--task-type must be auto, classification or regression (got {kind!r})")


@dataclass
class TrainConfig:
    """Hyper-parameters (all recorded in the checkpoint's config)."""

    fusion: str = "attention"
    hidden: int = 32
    dropout: float = 0.1
    input_dropout: float = 0.0
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 30
    validation_fraction: float = 0.2
    modality_dropout: float = 0.0
    seed: int = 0
    init: Optional[str] = None  # a pretrain folder whose projections start the model (hidden sizes must match)

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)} (got {self.fusion!r})")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"--modality-dropout must be in [0, 1) (got {self.modality_dropout})")


@dataclass
class Standardiser:
    """Per modality: the mean vector and one scale (the RMS distance to it), from present rows of the training fold only.

    One scale per modality rather than one per dimension keeps the geometry of
    an embedding: per-dimension z-scores would blow up near-constant, noisy
    dimensions to the same weight as the informative ones.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, data: FeatureSet) -> "Standardiser":
        mean, std = {}, {}
        for column, modality in enumerate(data.modalities):
            rows = data.features[modality][data.present[:, column]]
            if len(rows) == 0:
                rows = data.features[modality]
            mean[modality] = rows.mean(axis=0)
            scale = float(np.sqrt(((rows - mean[modality]) ** 2).sum(axis=1).mean())) if len(rows) else 1.0
            std[modality] = np.full_like(mean[modality], max(scale, 1e-6))
        return cls(mean, std)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready statistics (for checkpoints)."""
        return {"mean": {m: v.tolist() for m, v in self.mean.items()}, "std": {m: v.tolist() for m, v in self.std.items()}}

    @classmethod
    def from_json(cls, statistics: dict[str, Any]) -> "Standardiser":
        return cls(
            mean={m: np.asarray(v, np.float32) for m, v in statistics["mean"].items()},
            std={m: np.asarray(v, np.float32) for m, v in statistics["std"].items()},
        )

    def apply(self, data: FeatureSet) -> dict[str, torch.Tensor]:
        return {
            m: torch.from_numpy(((data.features[m] - self.mean[m]) / self.std[m]) * data.present[:, i : i + 1]).float()
            for i, m in enumerate(data.modalities)
        }


def _loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "classification":
        return nn.functional.cross_entropy(output, target)
    return nn.functional.mse_loss(output.squeeze(-1), target)


def _total_loss(model: FusionModel, inputs, present, targets, tasks: list[Task], index) -> torch.Tensor:
    outputs = model({m: x[index] for m, x in inputs.items()}, present[index])
    return sum(task.weight * _loss(task, outputs[task.label], targets[task.label][index]) for task in tasks)


@dataclass
class Fitted:
    """A trained model with everything needed to predict on new data."""

    model: FusionModel
    standardiser: Standardiser
    tasks: list[Task]
    history: list[dict[str, float]]


def fit(data: FeatureSet, tasks: list[Task], config: TrainConfig) -> Fitted:
    """Train on ``data``, holding out ``validation_fraction`` for early stopping (best validation loss kept)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    stratify = data.labels[tasks[0].label] if tasks[0].kind == "classification" else None
    try:
        train_index, val_index = train_test_split(
            np.arange(len(data.sample_ids)), test_size=config.validation_fraction, random_state=config.seed, stratify=stratify
        )
    except ValueError:  # too few samples of a class to stratify
        train_index, val_index = train_test_split(np.arange(len(data.sample_ids)), test_size=config.validation_fraction, random_state=config.seed)
    train, val = data.subset(train_index), data.subset(val_index)
    standardiser = Standardiser.fit(train)
    model = FusionModel({m: data.features[m].shape[1] for m in data.modalities}, config.fusion, {t.label: t.outputs for t in tasks},
                        hidden=config.hidden, dropout=config.dropout, input_dropout=config.input_dropout)
    if config.init:
        _start_from_pretrained(model, config.init, data.modalities)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    tensors = {}
    for name, part in (("train", train), ("val", val)):
        tensors[name] = (standardiser.apply(part), torch.from_numpy(part.present),
                         {t.label: torch.from_numpy(t.targets(part.labels[t.label])) for t in tasks})
    best_state, best_loss, since_best, history = copy.deepcopy(model.state_dict()), float("inf"), 0, []
    n_train = len(train.sample_ids)
    for epoch in range(config.epochs):
        model.train()
        inputs, present, targets = tensors["train"]
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, config.batch_size):
            index = order[start : start + config.batch_size]
            batch_present = present[index]
            if config.modality_dropout:
                dropped = torch.rand(batch_present.shape, generator=generator) < config.modality_dropout
                kept = batch_present & ~dropped
                batch_present = torch.where(kept.any(dim=1, keepdim=True), kept, batch_present)
            outputs = model({m: x[index] * batch_present[:, i : i + 1] for i, (m, x) in enumerate(inputs.items())}, batch_present)
            loss = sum(t.weight * _loss(t, outputs[t.label], targets[t.label][index]) for t in tasks)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            train_loss = float(_total_loss(model, *tensors["train"], tasks, slice(None)))
            val_loss = float(_total_loss(model, *tensors["val"], tasks, slice(None)))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if epoch % 25 == 0:
            logger.info("epoch %d: train loss %.4f, validation loss %.4f", epoch, train_loss, val_loss)
        if val_loss < best_loss - 1e-6:
            best_state, best_loss, since_best = copy.deepcopy(model.state_dict()), val_loss, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return Fitted(model, standardiser, tasks, history)


def _start_from_pretrained(model: FusionModel, directory: str, modalities: list[str]) -> None:
    from trainer.pretrain import load

    pretrained, _, pretrain_config = load(directory)
    missing = [m for m in modalities if m not in pretrained.projections]
    if missing or pretrain_config.hidden != model.projections[modalities[0]][1].out_features:
        raise ConfigError(f"--init {directory}: pretrained on {list(pretrained.projections)} with hidden {pretrain_config.hidden}; "
                          f"the model needs {modalities} with hidden {model.projections[modalities[0]][1].out_features}")
    for modality in modalities:
        model.projections[modality].load_state_dict(pretrained.projections[modality].state_dict())


def predict(fitted: Fitted, data: FeatureSet) -> dict[str, np.ndarray]:
    """Per task: class indices ``(n,)`` or real values ``(n,)``."""
    with torch.no_grad():
        outputs = fitted.model(fitted.standardiser.apply(data), torch.from_numpy(data.present))
    return {
        t.label: (outputs[t.label].argmax(dim=-1) if t.kind == "classification" else outputs[t.label].squeeze(-1)).numpy()
        for t in fitted.tasks
    }


def evaluate(fitted: Fitted, data: FeatureSet) -> dict[str, dict[str, Any]]:
    """Metrics per task on ``data``."""
    predictions = predict(fitted, data)
    result = {}
    for task in fitted.tasks:
        truth = task.targets(data.labels[task.label])
        if task.kind == "classification":
            result[task.label] = classification_metrics(truth, predictions[task.label], task.outputs)
        elif task.sentiment:  # scores in [-3, 3]: also the metrics published tables use
            result[task.label] = sentiment_metrics(truth, predictions[task.label])
        else:
            result[task.label] = regression_metrics(truth, predictions[task.label])
    return result


def cross_validate(data: FeatureSet, tasks: list[Task], config: TrainConfig, folds: int) -> dict[str, Any]:
    """``folds``-fold cross-validation (stratified on the first task when it is a classification).

    Returns ``{"folds": [per-fold metrics by task], "mean": {...}, "std": {...}}``; mean and std cover
    the scalar metrics, keyed ``<task>/<metric>`` when there are several tasks, ``<metric>`` otherwise.
    """
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2 (got {folds})")
    first = tasks[0]
    if first.kind == "classification":
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        splits = splitter.split(np.zeros(len(data.sample_ids)), first.targets(data.labels[first.label]))
    else:
        splits = KFold(n_splits=folds, shuffle=True, random_state=config.seed).split(np.zeros(len(data.sample_ids)))
    per_fold = []
    for number, (train_index, test_index) in enumerate(splits):
        fitted = fit(data.subset(train_index), tasks, config)
        per_fold.append(evaluate(fitted, data.subset(test_index)))
        logger.info("fold %d/%d: %s", number + 1, folds, _flatten(per_fold[-1], len(tasks)))
    flat = [_flatten(fold, len(tasks)) for fold in per_fold]
    keys = flat[0].keys()
    return {
        "folds": per_fold,
        "mean": {k: float(np.mean([f[k] for f in flat])) for k in keys},
        "std": {k: float(np.std([f[k] for f in flat])) for k in keys},
        "config": asdict(config),
        "tasks": [asdict(t) for t in tasks],
    }


def _flatten(fold: dict[str, dict[str, Any]], n_tasks: int) -> dict[str, float]:
    flat = {}
    for task, values in fold.items():
        for name, value in values.items():
            if isinstance(value, float):
                flat[name if n_tasks == 1 else f"{task}/{name}"] = value
    return flat
