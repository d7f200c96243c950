"""Training fusion heads on a ``FeatureSet``: tasks, standardisation, early stopping, cross-validation.

Determinism: a fixed ``seed`` seeds every random choice (splits, initialisation,
batches, dropout), so a rerun gives identical metrics on the same machine.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch import nn

from schemas.errors import ConfigError
from schemas.tables import MODALITIES
from trainer.chunks import iter_chunks
from trainer.data import FeatureSet
from trainer.heads import FUSIONS, AttentionFusion, FusionModel, WeightedFusion
from trainer.metrics import classification_metrics, regression_metrics, sentiment_metrics
from trainer.sequence_encoders import SEQUENCE_ENCODERS
from trainer.standardise import Standardiser

logger = logging.getLogger(__name__)

PREDICT_ROWS = 8192  # rows predicted at once (predictions do not depend on how rows are grouped)


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
    sequences: tuple[str, ...] = ()  # modalities read as sequences (see trainer.sequences)
    sequence_encoder: str = "gru"
    max_steps: int = 64
    audio_step_s: float = 0.1
    chunk_rows: Optional[int] = None  # rows held in memory at once (None: every row; set for memory-mapped caches)

    def __post_init__(self) -> None:
        self.sequences = tuple(self.sequences)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)} (got {self.fusion!r})")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"--modality-dropout must be in [0, 1) (got {self.modality_dropout})")
        unknown = [m for m in self.sequences if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"--sequence must name modalities among {', '.join(MODALITIES)} (got {unknown})")
        if self.sequence_encoder not in SEQUENCE_ENCODERS:
            raise ConfigError(f"--sequence-encoder must be one of {', '.join(SEQUENCE_ENCODERS)} (got {self.sequence_encoder!r})")
        if self.max_steps < 1 or self.audio_step_s <= 0:
            raise ConfigError(f"--max-steps must be >= 1 and --audio-step-s > 0 (got {self.max_steps}, {self.audio_step_s})")
        if self.chunk_rows is not None and self.chunk_rows < self.batch_size:
            raise ConfigError(f"--chunk-rows must be at least --batch-size {self.batch_size} (got {self.chunk_rows})")

    def build_model(self, dims: dict[str, int], outputs: dict[str, int]) -> FusionModel:
        """The fusion model these hyper-parameters describe, for inputs of ``dims`` and task ``outputs``."""
        return FusionModel(dims, self.fusion, outputs, hidden=self.hidden, dropout=self.dropout, input_dropout=self.input_dropout,
                           sequences=self.sequences, sequence_encoder=self.sequence_encoder, max_steps=self.max_steps)


def _loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "classification":
        return nn.functional.cross_entropy(output, target)
    return nn.functional.mse_loss(output.squeeze(-1), target)


@dataclass
class Fitted:
    """A trained model with everything needed to predict on new data."""

    model: FusionModel
    standardiser: Standardiser
    tasks: list[Task]
    history: list[dict[str, float]]
    chunk_rows: Optional[int] = None


@dataclass
class _Tensors:
    """One chunk ready for the model: standardised inputs, presence, sequence lengths and targets per task."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    lengths: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    @classmethod
    def of(cls, chunk: FeatureSet, standardiser: Standardiser, tasks: list[Task]) -> "_Tensors":
        return cls(standardiser.apply(chunk), torch.from_numpy(chunk.present), {m: torch.from_numpy(v) for m, v in chunk.lengths.items()},
                   {t.label: torch.from_numpy(t.targets(chunk.labels[t.label])) for t in tasks})

    def __len__(self) -> int:
        return len(self.present)

    def loss(self, model: FusionModel, tasks: list[Task], index: Any = slice(None), present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weighted task loss on rows ``index``; a given ``present`` overrides the mask and zeroes the inputs it drops
        (modality dropout; absent modalities are already zero)."""
        inputs = {m: x[index] for m, x in self.inputs.items()}
        if present is None:
            present = self.present[index]
        else:
            inputs = {m: x * present[:, i].reshape((-1,) + (1,) * (x.ndim - 1)) for i, (m, x) in enumerate(inputs.items())}
        outputs = model(inputs, present, {m: v[index] for m, v in self.lengths.items()})
        return sum(t.weight * _loss(t, outputs[t.label], self.targets[t.label][index]) for t in tasks)


def _chunks(data: FeatureSet, index: np.ndarray, standardiser: Standardiser, tasks: list[Task], *, chunk_rows: Optional[int],
            generator: Optional[torch.Generator] = None) -> Iterator[_Tensors]:
    """The rows ``index`` as model-ready chunks (see ``trainer.chunks.iter_chunks``)."""
    for chunk in iter_chunks(data, index, chunk_rows=chunk_rows, generator=generator):
        yield _Tensors.of(chunk, standardiser, tasks)


def _mean_loss(model: FusionModel, data: FeatureSet, index: np.ndarray, standardiser: Standardiser, tasks: list[Task],
               chunk_rows: Optional[int]) -> float:
    total = 0.0
    with torch.no_grad():
        for tensors in _chunks(data, index, standardiser, tasks, chunk_rows=chunk_rows):
            total += float(tensors.loss(model, tasks)) * len(tensors)
    return total / max(len(index), 1)


def fit(data: FeatureSet, tasks: list[Task], config: TrainConfig, index: Optional[np.ndarray] = None) -> Fitted:
    """Train on the rows ``index`` of ``data`` (default: all), holding out ``validation_fraction`` for early stopping.

    The weights with the best validation loss are kept. With ``config.chunk_rows`` the rows are read chunk by
    chunk (block-shuffled each epoch), so ``data`` may be memory-mapped and larger than memory.
    """
    index = np.arange(len(data)) if index is None else np.asarray(index)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    stratify = data.labels[tasks[0].label][index] if tasks[0].kind == "classification" else None
    try:
        train_index, val_index = train_test_split(index, test_size=config.validation_fraction, random_state=config.seed, stratify=stratify)
    except ValueError:  # too few samples of a class to stratify
        train_index, val_index = train_test_split(index, test_size=config.validation_fraction, random_state=config.seed)
    standardiser = Standardiser.fit(data, train_index, chunk_rows=config.chunk_rows)
    model = config.build_model(data.dims(), {t.label: t.outputs for t in tasks})
    if config.init:
        _start_from_pretrained(model, config.init, config.hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    chunked = config.chunk_rows is not None and len(train_index) > config.chunk_rows
    in_memory = None if chunked else [_Tensors.of(data.subset(train_index), standardiser, tasks)]
    best_state, best_loss, since_best, history = copy.deepcopy(model.state_dict()), float("inf"), 0, []
    for epoch in range(config.epochs):
        model.train()
        seen, train_loss = 0, 0.0
        chunks = in_memory or _chunks(data, train_index, standardiser, tasks, chunk_rows=config.chunk_rows, generator=generator)
        for tensors in chunks:
            order = torch.randperm(len(tensors), generator=generator)
            for start in range(0, len(tensors), config.batch_size):
                batch = order[start : start + config.batch_size]
                present = None
                if config.modality_dropout:
                    present = tensors.present[batch]
                    kept = present & ~(torch.rand(present.shape, generator=generator) < config.modality_dropout)
                    present = torch.where(kept.any(dim=1, keepdim=True), kept, present)
                loss = tensors.loss(model, tasks, batch, present)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                seen, train_loss = seen + len(batch), train_loss + float(loss.detach()) * len(batch)
        model.eval()
        val_loss = _mean_loss(model, data, val_index, standardiser, tasks, config.chunk_rows)
        history.append({"epoch": epoch, "train_loss": train_loss / max(seen, 1), "val_loss": val_loss})
        if epoch % 25 == 0:
            logger.info("epoch %d: train loss %.4f, validation loss %.4f", epoch, history[-1]["train_loss"], val_loss)
        if val_loss < best_loss - 1e-6:
            best_state, best_loss, since_best = copy.deepcopy(model.state_dict()), val_loss, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return Fitted(model, standardiser, tasks, history, config.chunk_rows)


def _start_from_pretrained(model: FusionModel, directory: str, hidden: int) -> None:
    from trainer.pretrain import load

    pretrained, _, pretrain_config = load(directory)
    missing = [m for m in model.modalities if m not in pretrained.projections]
    if missing or pretrain_config.hidden != hidden or model.sequences:
        raise ConfigError(f"--init {directory}: pretrained vectors of {list(pretrained.projections)} with hidden {pretrain_config.hidden}; "
                          f"the model needs vectors of {model.modalities} with hidden {hidden}"
                          + (f" (sequence inputs {list(model.sequences)} cannot start from pretraining)" if model.sequences else ""))
    for modality in model.modalities:
        model.projections[modality].load_state_dict(pretrained.projections[modality].state_dict())


def predict(fitted: Fitted, data: FeatureSet, index: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Per task, on the rows ``index`` (default: all): class indices ``(n,)`` or real values ``(n,)``."""
    index = np.arange(len(data)) if index is None else np.asarray(index)
    order = np.argsort(index, kind="stable")  # chunks come in row order; predictions are put back in the order of index
    parts: dict[str, list[np.ndarray]] = {t.label: [] for t in fitted.tasks}
    with torch.no_grad():
        for tensors in _chunks(data, index[order], fitted.standardiser, [], chunk_rows=fitted.chunk_rows or PREDICT_ROWS):
            outputs = fitted.model(tensors.inputs, tensors.present, tensors.lengths)
            for t in fitted.tasks:
                parts[t.label].append((outputs[t.label].argmax(dim=-1) if t.kind == "classification" else outputs[t.label].squeeze(-1)).numpy())
    predictions = {}
    for label, values in parts.items():
        in_row_order = np.concatenate(values)
        predictions[label] = np.empty_like(in_row_order)
        predictions[label][order] = in_row_order
    return predictions


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
        for tensors in _chunks(data, np.arange(len(data)), fitted.standardiser, [], chunk_rows=fitted.chunk_rows or PREDICT_ROWS):
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
        splits = splitter.split(np.zeros(len(data)), first.targets(data.labels[first.label]))
    else:
        splits = KFold(n_splits=folds, shuffle=True, random_state=config.seed).split(np.zeros(len(data)))
    per_fold = []
    for number, (train_index, test_index) in enumerate(splits):
        fitted = fit(data, tasks, config, train_index)
        per_fold.append(evaluate(fitted, data, test_index))
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
