"""A sequence-to-sequence caption head: text generated from cached modality features.

``CaptionModel`` (``trainer.caption_model``) turns a sample's modalities into memory tokens and decodes a caption with a transformer decoder:

* every modality goes through ``projection(dim, hidden)`` (``trainer.heads``, the module contrastive pretraining
  trains, so ``--init`` can start it): a vector modality gives one memory token, a sequence modality one token per
  valid step (the projection runs on each step, plus a learned step position);
* each token gets its modality's learned embedding; one learned *null* token is always in the memory, so a sample
  with no modality at all still decodes (from the caption prior);
* absent modalities and steps past a sequence's end are masked out of the cross-attention (``present``, lengths);
* a causal ``nn.TransformerDecoder`` (pre-norm) reads the target embeddings plus learned positions and predicts the
  next token over a compact ``Vocabulary``: the few hundred tokenizer ids seen in the training targets, not the
  tokenizer's tens of thousands.

``GenerateConfig(mask_inputs=True)`` is the prior-only baseline: the same architecture whose memory is the null token
alone, so its captions can use no modality input.

``fit_generator`` trains with teacher forcing (token cross-entropy, padding ignored), early stopping on a seeded
validation split, and keeps the best weights. ``trainer.generation_checkpoint`` writes and reads the checkpoint
folder (``model.pt``, ``model.json`` with ``"task": "generate"``). Decoding is in ``trainer.decoding``, metrics in
``trainer.text_metrics``. Targets are lists of tokenizer ids without special tokens; the caller encodes and decodes
text with its tokenizer (this package does not import ``transforms``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from schemas.errors import ConfigError
from trainer.caption_model import BOS, EOS, PAD, CaptionModel, Vocabulary
from trainer.feature_set import FeatureSet
from trainer.pretrain import start_from_pretrained
from trainer.progress import EpochCallback, Progress
from trainer.standardise import Standardiser
from trainer.threads import threads_for, torch_threads

logger = logging.getLogger(__name__)

WEIGHTS, CONFIG = "model.pt", "model.json"
TASK = "generate"



@dataclass
class GenerateConfig:
    """Hyper-parameters of a caption head (all recorded in the checkpoint).

    Attributes:
        hidden: model width (memory tokens, decoder); must equal a pretrain folder's ``hidden`` with ``init``.
        layers: decoder layers.
        heads: attention heads (must divide ``hidden``).
        dropout: dropout in projections and decoder.
        epochs: most epochs; ``patience`` epochs without a better validation loss stop training.
        batch_size: rows per optimiser step.
        learning_rate, weight_decay: AdamW's.
        max_length: most target tokens (without EOS); longer targets are cut.
        validation_fraction: share of the rows held out for early stopping (at least one row).
        seed: seeds the split, initialisation, batch order and dropout.
        mask_inputs: the prior-only baseline: the decoder sees only the null memory token.
        init: a pretrain folder (``trainer.pretrain``) whose projections start the model's.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 30
    max_length: int = 32
    validation_fraction: float = 0.2
    seed: int = 0
    mask_inputs: bool = False
    init: Optional[str] = None

    def __post_init__(self) -> None:
        positive = {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "epochs": self.epochs,
                    "batch_size": self.batch_size, "patience": self.patience, "max_length": self.max_length}
        bad = {k: v for k, v in positive.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"generation settings must be integers >= 1 (got {bad})")
        if self.hidden % self.heads:
            raise ConfigError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1) (got {self.validation_fraction})")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError(f"--learning-rate must be > 0 and --weight-decay >= 0 (got {self.learning_rate}, {self.weight_decay})")


@dataclass
class FittedGenerator:
    """A trained caption head with everything needed to generate on new data.

    ``metadata``: what ``save_generator`` recorded (``target`` column, ``tokenizer`` path, ``cache`` source); empty
    after ``fit_generator``.
    """

    model: CaptionModel
    standardiser: Standardiser
    vocab: Vocabulary
    history: list[dict[str, float]]
    config: GenerateConfig
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rows:
    """Rows of a ``FeatureSet`` ready for the model: standardised ``inputs``, ``present`` ``(n, M)``, ``lengths``."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    lengths: dict[str, torch.Tensor]

    @classmethod
    def of(cls, data: FeatureSet, standardiser: Standardiser) -> "Rows":
        lengths = {m: torch.from_numpy(np.asarray(v)) for m, v in data.lengths.items()}
        return cls(standardiser.apply(data), torch.from_numpy(np.asarray(data.present, dtype=bool)), lengths)

    def take(self, batch: torch.Tensor) -> "Rows":
        return Rows({m: x[batch] for m, x in self.inputs.items()}, self.present[batch], {m: v[batch] for m, v in self.lengths.items()})

    def __len__(self) -> int:
        return int(self.present.shape[0])


def target_tensors(targets: Sequence[Sequence[int]], vocab: Vocabulary, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs ``[BOS] + target`` and outputs ``target + [EOS]``, both ``(n, longest + 1)`` int64 padded with PAD
    (targets cut to ``max_length`` tokens)."""
    encoded = [vocab.encode(t)[:max_length] for t in targets]
    width = max((len(e) for e in encoded), default=0) + 1
    inputs = torch.full((len(encoded), width), PAD, dtype=torch.int64)
    outputs = torch.full((len(encoded), width), PAD, dtype=torch.int64)
    for row, e in enumerate(encoded):
        inputs[row, : len(e) + 1] = torch.tensor([BOS] + e, dtype=torch.int64)
        outputs[row, : len(e) + 1] = torch.tensor(e + [EOS], dtype=torch.int64)
    return inputs, outputs


def check_inputs(model: CaptionModel, standardiser: Standardiser, data: FeatureSet) -> None:
    """A ``ConfigError`` unless ``data`` has the model's modalities, in order, with its input sizes and sequence kinds."""
    dims = {m: int(standardiser.mean[m].shape[0]) for m in model.modalities}
    if data.modalities != model.modalities or data.dims() != dims:
        raise ConfigError(f"the model was trained on modalities {dims} (name: input size); the data has {data.dims()}")
    sequences = tuple(m for m in data.modalities if m in data.lengths)
    if sequences != model.sequences:
        raise ConfigError(f"the model reads {list(model.sequences) or 'no modality'} as sequences; the data has {list(sequences) or 'none'}")


def _split(index: np.ndarray, config: GenerateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded training and validation rows of ``index`` (``validation_fraction`` of them, at least one)."""
    shuffled = np.random.default_rng(config.seed).permutation(index)
    held = min(max(1, int(round(config.validation_fraction * len(index)))), len(index) - 1)
    return np.sort(shuffled[held:]), np.sort(shuffled[:held])


def _token_loss(model: CaptionModel, rows: Rows, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per target token (PAD ignored)."""
    logits = model(rows.inputs, rows.present, inputs, rows.lengths)
    return nn.functional.cross_entropy(logits.flatten(0, 1), outputs.flatten(), ignore_index=PAD)


def _validation_loss(model: CaptionModel, rows: Rows, inputs: torch.Tensor, outputs: torch.Tensor, batch_rows: int = 256) -> float:
    """Mean cross-entropy per target token over all the validation tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_rows):
            batch = torch.arange(start, min(start + batch_rows, len(rows)))
            tokens = int((outputs[batch] != PAD).sum())
            total += float(_token_loss(model, rows.take(batch), inputs[batch], outputs[batch])) * tokens
            count += tokens
    return total / max(count, 1)


def build_model(config: GenerateConfig, dims: dict[str, int], vocab_size: int, sequences: tuple[str, ...], max_steps: int) -> CaptionModel:
    """The caption model ``config`` describes."""
    return CaptionModel(dims, vocab_size, hidden=config.hidden, layers=config.layers, heads=config.heads, dropout=config.dropout,
                        max_length=config.max_length, sequences=sequences, max_steps=max_steps, mask_inputs=config.mask_inputs)


def fit_generator(data: FeatureSet, targets: Sequence[Sequence[int]], config: GenerateConfig, index: Optional[np.ndarray] = None, *,
                  on_epoch: Optional[EpochCallback] = None) -> FittedGenerator:
    """Train a caption head on the rows ``index`` of ``data`` (default: all), holding some out for early stopping.

    Args:
        data: the features; ``targets[i]`` is row ``i``'s caption as tokenizer ids (no special tokens).
        config: hyper-parameters; the same ``seed`` gives the same model on the same machine.
        index: the rows to train on (validation rows are drawn from them); the standardiser and the vocabulary
            come from these rows only (the standardiser from the training part).
        on_epoch: called after each epoch with the epochs done and the validation loss (default: INFO log lines).

    Returns the model with the weights of its best validation loss (mean token cross-entropy, nats), in eval mode.
    """
    if len(targets) != len(data):
        raise ConfigError(f"{len(targets)} targets for {len(data)} rows: give one target (a list of token ids) per row")
    index = np.arange(len(data)) if index is None else np.asarray(index, dtype=np.int64)
    if len(index) < 2:
        raise ConfigError(f"a caption head needs at least 2 rows to train and validate on (got {len(index)})")
    if sum(len(targets[i]) for i in index) == 0:
        raise ConfigError("every training target is empty: there is no caption to learn")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_index, val_index = _split(index, config)
    vocab = Vocabulary.build([targets[i] for i in index])
    standardiser = Standardiser.fit(data, train_index)
    sequences = tuple(m for m in data.modalities if m in data.lengths)
    max_steps = max((int(data.features[m].shape[1]) for m in sequences), default=1)
    model = build_model(config, data.dims(), len(vocab), sequences, max_steps)
    if config.init:
        start_from_pretrained(model, config.init, config.hidden)
    train_rows, val_rows = Rows.of(data.subset(train_index), standardiser), Rows.of(data.subset(val_index), standardiser)
    train_targets = target_tensors([targets[i] for i in train_index], vocab, config.max_length)
    val_targets = target_tensors([targets[i] for i in val_index], vocab, config.max_length)
    progress = None
    if on_epoch is None:
        progress = Progress([TASK], config.epochs, title="training", bar=False)
        on_epoch = progress.callback(TASK)
    # Each op's matrices are as small as a fusion head's whatever the caption length (measured on 2 cores: 2 threads fit
    # the test head 10 times slower than 1), so the threads are sized as for one step.
    threads = threads_for(model, config.batch_size)
    with torch_threads(threads):
        history = _epochs(model, config, train_rows, train_targets, val_rows, val_targets, generator, on_epoch)
    if progress is not None:
        progress.finish(TASK)
    return FittedGenerator(model, standardiser, vocab, history, config)


def _epochs(model: CaptionModel, config: GenerateConfig, train_rows: Rows, train_targets: tuple[torch.Tensor, torch.Tensor],
            val_rows: Rows, val_targets: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator,
            on_epoch: EpochCallback) -> list[dict[str, float]]:
    """The epoch loop: trains ``model`` in place, ending with its best weights in eval mode; the history."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_loss, since_best, history = float("inf"), 0, []
    inputs, outputs = train_targets
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train_rows), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            width = int((outputs[batch] != PAD).sum(dim=1).max())  # this batch's longest target, EOS included
            loss = _token_loss(model, train_rows.take(batch), inputs[batch, :width], outputs[batch, :width])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
        model.eval()
        val_loss = _validation_loss(model, val_rows, *val_targets)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss})
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
