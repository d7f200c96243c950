"""Per-modality encoders for sequence inputs: ``(batch, steps, dim)`` and lengths -> ``(batch, hidden)``.

They take the place of a modality's MLP projection, so every fusion head works
on sequences unchanged:

* ``gru``: a linear map to ``hidden``, then a GRU over the valid steps; its last state
  (the CNN-features -> RNN pattern).
* ``transformer``: a linear map, learned step positions, one pre-norm transformer
  encoder layer with padding masked, then the mean over the valid steps.

A modality's valid steps are given as lengths ``(batch,)`` (the first ``length``
steps) or as a step mask ``(batch, steps)`` bool (an aligned set, ``trainer.aligned``,
where any step may lack a modality): masked steps are moved behind the valid ones
(``compact``) before encoding, so they count neither in the GRU nor in the pooling.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from trainer.names import SEQUENCE_ENCODERS


def step_mask(valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Lengths ``(batch,)`` or a mask ``(batch, steps)`` -> the bool mask ``(batch, steps)`` of valid steps."""
    if valid.dim() == 2:
        return valid.bool()
    return torch.arange(steps, device=valid.device)[None, :] < valid[:, None]


def compact(steps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` ``(batch, t, dim)`` with their valid steps first (in order, masked ones zeroed after them) and the
    lengths ``(batch,)``: a step mask ``(batch, t)`` turned into what length-based encoders take."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    moved = torch.gather(steps * mask.unsqueeze(-1).to(steps.dtype), 1, order.unsqueeze(-1).expand_as(steps))
    return moved, mask.sum(dim=1)


class SequenceEncoder(nn.Module):
    """Encode one modality's sequences.

    Args:
        in_dim: size of one step's features.
        hidden: output size (and the model width inside).
        kind: ``gru`` or ``transformer``.
        max_steps: the longest sequence (sizes the transformer's position table).
        dropout: dropout inside and on the output.
        input_dropout: dropout on the (standardised) input features.
    """

    def __init__(self, in_dim: int, hidden: int, kind: str, *, max_steps: int, dropout: float = 0.1, input_dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in SEQUENCE_ENCODERS:
            raise ValueError(f"sequence encoder must be one of {SEQUENCE_ENCODERS} (got {kind!r})")
        self.kind = kind
        self.input = nn.Sequential(nn.Dropout(input_dropout), nn.Linear(in_dim, hidden))
        if kind == "gru":
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
        else:
            self.position = nn.Parameter(torch.zeros(max_steps, hidden))
            layer = nn.TransformerEncoderLayer(hidden, nhead=2, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True, norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.output = nn.Sequential(nn.GELU(), nn.Dropout(dropout))

    def forward(self, steps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``steps`` ``(batch, max_steps, in_dim)``, ``lengths`` ``(batch,)`` (0 for an absent modality) or a step mask
        ``(batch, max_steps)`` -> ``(batch, hidden)``."""
        if lengths.dim() == 2:
            steps, lengths = compact(steps, lengths.bool())
        lengths = lengths.clamp(min=1)  # an absent modality is all zeros; the fusion masks it out
        longest = int(lengths.max()) if len(lengths) else 1
        h = self.input(steps[:, :longest])
        if self.kind == "gru":
            packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, last = self.gru(packed)
            return self.output(last[-1])
        valid = torch.arange(longest, device=h.device)[None, :] < lengths[:, None]
        h = self.transformer(h + self.position[:longest], src_key_padding_mask=~valid)
        weights = valid.to(h.dtype).unsqueeze(-1)
        return self.output((h * weights).sum(dim=1) / weights.sum(dim=1))
