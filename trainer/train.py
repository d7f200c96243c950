"""Training one fusion head on a ``FeatureSet``: standardisation, early stopping, threads, progress.

Determinism: a fixed ``seed`` seeds every random choice (splits, initialisation,
batches, dropout), so a rerun gives identical metrics on the same machine, in
this process or in a worker process (``trainer.folds``).

Speed: the rows are standardised and turned into tensors once per fit (training
and validation rows alike); an epoch draws a permutation and indexes those
tensors batch by batch, so it costs what a bare torch loop over the same tensors
costs. Small heads train with one torch thread (``trainer.threads``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from schemas.errors import ConfigError
from schemas.tables import MODALITIES
from trainer.evaluation import PREDICT_ROWS, evaluate, modality_weights, predict
from trainer.feature_set import FeatureSet
from trainer.heads import FusionModel
from trainer.names import ALIGNED_SEQUENCES, FUSIONS, SEQUENCE_ENCODERS, SEQUENCE_FUSIONS
from trainer.pretrain import start_from_pretrained
from trainer.progress import EpochCallback, Progress
from trainer.standardise import Standardiser
from trainer.tasks import Task, infer_task
from trainer.tensors import Fitted, ModelTensors, model_chunks
from trainer.threads import threads_for, torch_threads

logger = logging.getLogger(__name__)

__all__ = ["PREDICT_ROWS", "Fitted", "Task", "TrainConfig", "evaluate", "fit", "infer_task", "modality_weights", "predict"]


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
    sequences: tuple[str, ...] = ()  # modalities read as sequences (see trainer.sequences), or ("aligned",) (trainer.aligned)
    aligned_set: Optional[str] = None  # with sequences ("aligned",): the aligned/<on>-<fingerprint> table (default: the newest)
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
        if self.sequences == (ALIGNED_SEQUENCES,):
            unknown = []
        if unknown:
            raise ConfigError(f"--sequence must name modalities among {', '.join(MODALITIES)}, or be {ALIGNED_SEQUENCES} alone (got {unknown})")
        if self.fusion in SEQUENCE_FUSIONS and not self.sequences:
            raise ConfigError(f"--fusion {self.fusion} takes every modality as a sequence: add --sequence {ALIGNED_SEQUENCES} "
                              "(an aligned set, mmfeat align) or --sequence MODALITIES")
        if self.aligned_set and self.sequences != (ALIGNED_SEQUENCES,):
            raise ConfigError(f"--aligned-set {self.aligned_set} needs --sequence {ALIGNED_SEQUENCES}")
        if self.sequence_encoder not in SEQUENCE_ENCODERS:
            raise ConfigError(f"--sequence-encoder must be one of {', '.join(SEQUENCE_ENCODERS)} (got {self.sequence_encoder!r})")
        if self.max_steps < 1 or self.audio_step_s <= 0:
            raise ConfigError(f"--max-steps must be >= 1 and --audio-step-s > 0 (got {self.max_steps}, {self.audio_step_s})")
        if self.chunk_rows is not None and self.chunk_rows < self.batch_size:
            raise ConfigError(f"--chunk-rows must be at least --batch-size {self.batch_size} (got {self.chunk_rows})")

    def build_model(self, dims: dict[str, int], outputs: dict[str, int]) -> FusionModel:
        """The fusion model these hyper-parameters describe, for inputs of ``dims`` and task ``outputs``."""
        sequences = tuple(dims) if self.sequences == (ALIGNED_SEQUENCES,) else self.sequences
        if self.fusion in SEQUENCE_FUSIONS and any(m not in sequences for m in dims):
            raise ConfigError(f"--fusion {self.fusion} takes every modality as a sequence: add --sequence {ALIGNED_SEQUENCES} "
                              f"(an aligned set, mmfeat align) or --sequence {','.join(dims)}")
        return FusionModel(dims, self.fusion, outputs, hidden=self.hidden, dropout=self.dropout, input_dropout=self.input_dropout,
                           sequences=sequences, sequence_encoder=self.sequence_encoder, max_steps=self.max_steps)


def _split(data: FeatureSet, index: np.ndarray, tasks: list[Task], config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of ``index`` (stratified on the first task when it is a classification and can be)."""
    stratify = data.labels[tasks[0].label][index] if tasks[0].kind == "classification" else None
    try:
        return train_test_split(index, test_size=config.validation_fraction, random_state=config.seed, stratify=stratify)
    except ValueError:  # too few samples of a class to stratify
        return train_test_split(index, test_size=config.validation_fraction, random_state=config.seed)


def _in_memory(data: FeatureSet, index: np.ndarray, standardiser: Standardiser, tasks: list[Task],
               chunk_rows: Optional[int]) -> Optional[ModelTensors]:
    """The rows ``index`` as one ``ModelTensors`` when they fit in a chunk, else ``None`` (they are read chunk by chunk)."""
    if chunk_rows is not None and len(index) > chunk_rows:
        return None
    return ModelTensors.of(data.subset(index), standardiser, tasks)


def _validation_loss(model: FusionModel, tasks: list[Task], held: Optional[ModelTensors], data: FeatureSet, index: np.ndarray,
                     standardiser: Standardiser, chunk_rows: Optional[int]) -> float:
    """Mean loss on the validation rows: on ``held`` (built once) or, for rows that do not fit in memory, chunk by chunk."""
    with torch.no_grad():
        if held is not None:
            return float(held.loss(model, tasks))
        total = 0.0
        for tensors in model_chunks(data, index, standardiser, tasks, chunk_rows=chunk_rows):
            total += float(tensors.loss(model, tasks)) * len(tensors)
    return total / max(len(index), 1)


def _train_epoch(model: FusionModel, optimiser: torch.optim.Optimizer, tensors: ModelTensors, tasks: list[Task], config: TrainConfig,
                 generator: torch.Generator) -> tuple[float, int]:
    """One pass over ``tensors`` in shuffled batches: the summed loss (times batch sizes) and the rows seen."""
    order = torch.randperm(len(tensors), generator=generator)
    total, seen = 0.0, 0
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
        total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
    return total, seen


def fit(data: FeatureSet, tasks: list[Task], config: TrainConfig, index: Optional[np.ndarray] = None, *,
        on_epoch: Optional[EpochCallback] = None, concurrent_fits: int = 1) -> Fitted:
    """Train on the rows ``index`` of ``data`` (default: all), holding out ``validation_fraction`` for early stopping.

    The weights with the best validation loss are kept. With ``config.chunk_rows`` the rows are read chunk by
    chunk (block-shuffled each epoch), so ``data`` may be memory-mapped and larger than memory.

    Args:
        on_epoch: called after each epoch with the epochs done and the validation loss (default: INFO log lines
            every few seconds, ``trainer.progress``).
        concurrent_fits: fits running at once on this machine (``trainer.folds``): a large head's torch threads
            are its share of the cores; a small head always gets one thread (``trainer.threads.threads_for``).
    """
    index = np.arange(len(data)) if index is None else np.asarray(index)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_index, val_index = _split(data, index, tasks, config)
    standardiser = Standardiser.fit(data, train_index, chunk_rows=config.chunk_rows)
    model = config.build_model(data.dims(), {t.label: t.outputs for t in tasks})
    if config.init:
        start_from_pretrained(model, config.init, config.hidden)
    progress = None
    if on_epoch is None:
        progress = Progress([config.fusion], config.epochs, title="training", bar=False)
        on_epoch = progress.callback(config.fusion)
    threads = threads_for(model, config.batch_size, steps=config.max_steps if data.lengths else 1, jobs=concurrent_fits)
    with torch_threads(threads):
        history = _epochs(model, data, tasks, config, train_index, val_index, standardiser, generator, on_epoch)
    if progress is not None:
        progress.finish(config.fusion)
    return Fitted(model, standardiser, tasks, history, config.chunk_rows)


def make_optimiser(model: FusionModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with ``config``'s learning rate and weight decay, as its fused kernel where torch has one for the parameters'
    device (CPU too, since torch 2.4): the same update in one call instead of a dozen small ops per parameter tensor,
    which for heads this small is a third of an epoch."""
    options = dict(lr=config.learning_rate, weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(model.parameters(), **options, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(model.parameters(), **options)


def _epochs(model: FusionModel, data: FeatureSet, tasks: list[Task], config: TrainConfig, train_index: np.ndarray, val_index: np.ndarray,
            standardiser: Standardiser, generator: torch.Generator, on_epoch: EpochCallback) -> list[dict[str, float]]:
    """The epoch loop of ``fit``: trains ``model`` in place (ending with its best weights, in eval mode); the history."""
    optimiser = make_optimiser(model, config)
    train_held = _in_memory(data, train_index, standardiser, tasks, config.chunk_rows)
    val_held = _in_memory(data, val_index, standardiser, tasks, config.chunk_rows)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_loss, since_best, history = float("inf"), 0, []
    for epoch in range(config.epochs):
        model.train()
        chunks = [train_held] if train_held is not None else model_chunks(data, train_index, standardiser, tasks,
                                                                          chunk_rows=config.chunk_rows, generator=generator)
        train_loss, seen = 0.0, 0
        for tensors in chunks:
            total, rows = _train_epoch(model, optimiser, tensors, tasks, config, generator)
            train_loss, seen = train_loss + total, seen + rows
        model.eval()
        val_loss = _validation_loss(model, tasks, val_held, data, val_index, standardiser, config.chunk_rows)
        history.append({"epoch": epoch, "train_loss": train_loss / max(seen, 1), "val_loss": val_loss})
        on_epoch(epoch + 1, val_loss)
        if val_loss < best_loss - 1e-6:
            best_state, best_loss, since_best = {k: v.detach().clone() for k, v in model.state_dict().items()}, val_loss, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history
