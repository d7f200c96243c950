"""The caption head's model: its compact output ``Vocabulary`` and ``CaptionModel`` (modality memory tokens and a causal
transformer decoder). Training is ``trainer.generation``, decoding ``trainer.decoding``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from schemas.errors import ConfigError
from trainer.heads import projection
from trainer.sequence_encoders import step_mask

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")


@dataclass
class Vocabulary:
    """The compact output vocabulary: ids ``0..3`` are PAD, BOS, EOS, UNK; id ``4 + i`` is tokenizer id ``token_ids[i]``."""

    token_ids: list[int]

    def __post_init__(self) -> None:
        self._compact = {t: i + len(SPECIALS) for i, t in enumerate(self.token_ids)}

    @classmethod
    def build(cls, targets: Sequence[Sequence[int]]) -> "Vocabulary":
        """Every tokenizer id in ``targets``, in ascending order (so equal targets give an equal vocabulary)."""
        return cls(sorted({int(t) for target in targets for t in target}))

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.token_ids)

    def encode(self, ids: Sequence[int]) -> list[int]:
        """Tokenizer ids -> compact ids (UNK for ids not seen in training)."""
        return [self._compact.get(int(t), UNK) for t in ids]

    def decode(self, compact: Sequence[int]) -> list[int]:
        """Compact ids -> tokenizer ids, up to the first EOS; PAD, BOS and UNK are dropped."""
        ids = []
        for c in compact:
            c = int(c)
            if c == EOS:
                break
            if c >= len(SPECIALS):
                ids.append(self.token_ids[c - len(SPECIALS)])
        return ids


class CaptionModel(nn.Module):
    """Modality memory tokens and a causal transformer decoder over a compact vocabulary.

    Args:
        dims: input size per modality, in the column order of ``present``.
        vocab_size: output classes (``len(Vocabulary)``).
        hidden, layers, heads, dropout: see ``GenerateConfig``.
        max_length: most target tokens; the position table has ``max_length + 1`` rows (BOS and the tokens).
        sequences: modalities whose inputs are ``(batch, steps, dim)`` (one memory token per valid step).
        max_steps: the longest sequence (sizes the step position table).
        mask_inputs: the memory is the null token alone (prior-only baseline).
    """

    def __init__(self, dims: dict[str, int], vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, max_length: int = 32, sequences: tuple[str, ...] = (), max_steps: int = 1,
                 mask_inputs: bool = False) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.sequences = tuple(m for m in self.modalities if m in sequences)
        self.hidden, self.max_length, self.max_steps, self.mask_inputs = hidden, max_length, max_steps, mask_inputs
        self.projections = nn.ModuleDict({m: projection(d, hidden, dropout=dropout) for m, d in dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(dims), hidden) * 0.02)
        self.step_position = nn.Parameter(torch.zeros(max_steps, hidden)) if self.sequences else None
        self.null = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.position = nn.Parameter(torch.randn(max_length + 1, hidden) * 0.02)
        layer = nn.TransformerDecoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=layers, norm=nn.LayerNorm(hidden))
        self.output = nn.Linear(hidden, vocab_size)

    def encode(self, inputs: dict[str, torch.Tensor], present: torch.Tensor,
               lengths: Optional[dict[str, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory ``(batch, tokens, hidden)`` and its key padding mask ``(batch, tokens)`` (True: ignore).

        ``inputs``: per modality ``(batch, dim)`` or, for a sequence modality, ``(batch, steps, dim)`` with ``lengths``
        ``(batch,)`` or a step mask ``(batch, steps)``; ``present``: bool ``(batch, M)``. The first token is the null
        token, never masked.
        """
        batch = present.shape[0]
        tokens = [self.null.expand(batch, 1, self.hidden)]
        masks = [torch.zeros(batch, 1, dtype=torch.bool, device=present.device)]
        if not self.mask_inputs:
            for column, modality in enumerate(self.modalities):
                h = self.projections[modality](inputs[modality]) + self.modality_embedding[column]
                if modality in self.sequences:
                    if lengths is None or modality not in lengths:
                        raise ValueError(f"{modality} is a sequence input: its lengths are needed")
                    steps = h.shape[1]
                    if steps > self.max_steps:
                        raise ConfigError(f"{modality} has {steps} steps; the model was trained on at most {self.max_steps}")
                    tokens.append(h + self.step_position[:steps])
                    masks.append(~(step_mask(lengths[modality], steps) & present[:, column : column + 1]))
                else:
                    tokens.append(h.unsqueeze(1))
                    masks.append(~present[:, column : column + 1])
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def decode(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(batch, t, vocab)`` for compact ``tokens`` ``(batch, t)`` (BOS first, ``t <= max_length + 1``)."""
        t = tokens.shape[1]
        if t > self.max_length + 1:
            raise ConfigError(f"cannot decode {t} positions; the model has {self.max_length + 1}")
        x = self.embedding(tokens) + self.position[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device, dtype=x.dtype)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_mask)
        return self.output(h)

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor, tokens: torch.Tensor,
                lengths: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Teacher-forced logits ``(batch, t, vocab)`` for the decoder inputs ``tokens`` ``(batch, t)``."""
        memory, memory_mask = self.encode(inputs, present, lengths)
        return self.decode(tokens, memory, memory_mask)
