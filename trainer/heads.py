"""Fusion heads: per-modality projections, a fusion module, one output head per task.

Every fusion takes projected modality vectors ``h`` of shape ``(batch, M, hidden)``
and a presence mask ``(batch, M)`` (absent modalities are zero and masked out)
and returns a fused vector ``(batch, fused_dim)``:

* ``concat``: early fusion, the concatenation ``(batch, M * hidden)``.
* ``weighted``: a learned softmax weight per modality (renormalised over the present ones).
* ``attention``: modality tokens through one self-attention layer, mean over present tokens.
* ``gated``: gated multimodal unit, ``sum_m g_m * tanh(W_m h_m)`` with gates from all modalities.
* ``tensor``: tensor fusion, the outer product of ``[t_m, 1]`` over modalities (``t_m`` of size 8).
* ``lowrank``: low-rank multimodal fusion, ``sum_r prod_m ([t_m, 1] W_m^r)``.
* ``late``: no fusion module; each modality has its own task heads, predictions averaged over present modalities.
* ``mult``: a cross-modal transformer over the modalities' step sequences (``trainer.mult``); every modality must be
  a sequence (``--sequence aligned``, or each named in ``--sequence``), and it replaces the per-modality encoders.

A modality given as a sequence is encoded by a ``SequenceEncoder`` (GRU or
transformer) instead of an MLP projection; the fusions see the same ``h``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from trainer.mult import MulTFusion
from trainer.names import FUSIONS
from trainer.sequence_encoders import SequenceEncoder

_SMALL = 8


def _masked_softmax(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~present, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # a sample with no modality at all gets zeros


class ConcatFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int) -> None:
        super().__init__()
        self.out_dim = n_modalities * hidden

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return (h * present.unsqueeze(-1)).flatten(1)


class WeightedFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_modalities))
        self.out_dim = hidden

    def weights(self, present: torch.Tensor) -> torch.Tensor:
        """The modality weights ``(batch, M)`` (reported after training)."""
        return _masked_softmax(self.logits.expand_as(present), present)

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return (self.weights(present).unsqueeze(-1) * h).sum(dim=1)


class AttentionFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int, heads: int = 2) -> None:
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.zeros(n_modalities, hidden))
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden
        self.last_weights: Optional[torch.Tensor] = None

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        tokens = h + self.modality_embedding
        # A sample with no modality would make every key masked; let it attend to its zeros instead.
        padding = ~present & present.any(dim=1, keepdim=True)
        attended, self.last_weights = self.attention(tokens, tokens, tokens, key_padding_mask=padding)
        tokens = self.norm(tokens + attended)
        weights = present.float().unsqueeze(-1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class GatedFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_modalities))
        self.gate = nn.Linear(n_modalities * hidden, n_modalities)
        self.out_dim = hidden

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        candidates = torch.stack([torch.tanh(t(h[:, i])) for i, t in enumerate(self.transforms)], dim=1)
        gates = _masked_softmax(self.gate((h * present.unsqueeze(-1)).flatten(1)), present)
        return (gates.unsqueeze(-1) * candidates).sum(dim=1)


class TensorFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(nn.Linear(hidden, _SMALL) for _ in range(n_modalities))
        self.out_dim = (_SMALL + 1) ** n_modalities

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        fused = torch.ones(h.shape[0], 1, device=h.device)
        for i, reduce in enumerate(self.reduce):
            small = reduce(h[:, i]) * present[:, i : i + 1]
            with_one = torch.cat([small, torch.ones_like(small[:, :1])], dim=1)
            fused = torch.einsum("bi,bj->bij", fused, with_one).flatten(1)
        return fused


class LowRankFusion(nn.Module):
    def __init__(self, n_modalities: int, hidden: int, rank: int = 4) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(nn.Linear(hidden, _SMALL) for _ in range(n_modalities))
        self.factors = nn.ParameterList(
            nn.Parameter(torch.randn(rank, _SMALL + 1, hidden) / math.sqrt(_SMALL + 1)) for _ in range(n_modalities)
        )
        self.out_dim = hidden

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        product = None
        for i, (reduce, factor) in enumerate(zip(self.reduce, self.factors)):
            small = reduce(h[:, i]) * present[:, i : i + 1]
            with_one = torch.cat([small, torch.ones_like(small[:, :1])], dim=1)
            term = torch.einsum("bi,rio->bro", with_one, factor)
            product = term if product is None else product * term
        return product.sum(dim=1)


_FUSION_MODULES = {
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
    "tensor": TensorFusion,
    "lowrank": LowRankFusion,
}


def projection(in_dim: int, hidden: int, *, dropout: float = 0.1, input_dropout: float = 0.0) -> nn.Sequential:
    """A modality's projection ``(batch, in_dim) -> (batch, hidden)``, shared by fusion models and contrastive pretraining."""
    return nn.Sequential(nn.Dropout(input_dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout))


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


class FusionModel(nn.Module):
    """Projections, fusion and task heads.

    Args:
        dims: input dimension per modality (their order is the order of ``present``).
        fusion: one of ``FUSIONS``.
        outputs: output size per task (classes, or 1 for regression).
        hidden: projection size.
        dropout: dropout in projections and heads.
        input_dropout: dropout on the (standardised) input features, against overfitting wide embeddings.
        sequences: modalities whose inputs are sequences ``(batch, steps, dim)``, encoded by ``sequence_encoder``.
        sequence_encoder: ``gru`` or ``transformer``.
        max_steps: the longest sequence.
    """

    def __init__(
        self, dims: dict[str, int], fusion: str, outputs: dict[str, int], *, hidden: int = 32, dropout: float = 0.1, input_dropout: float = 0.0,
        sequences: tuple[str, ...] = (), sequence_encoder: str = "gru", max_steps: int = 64,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS} (got {fusion!r})")
        self.modalities = list(dims)
        self.sequences = tuple(m for m in self.modalities if m in sequences)
        self.fusion_name = fusion
        self.mult: Optional[MulTFusion] = None
        if fusion == "mult":
            if self.sequences != tuple(self.modalities):
                raise ValueError(f"fusion mult takes every modality as a sequence; {[m for m in dims if m not in sequences]} are vectors")
            self.projections = nn.ModuleDict()
            self.mult = MulTFusion(dims, d_model=hidden, max_steps=max_steps, dropout=dropout, input_dropout=input_dropout)
            self.heads = nn.ModuleDict({task: _mlp(self.mult.out_dim, hidden, size, dropout) for task, size in outputs.items()})
            return
        self.projections = nn.ModuleDict({
            m: SequenceEncoder(d, hidden, sequence_encoder, max_steps=max_steps, dropout=dropout, input_dropout=input_dropout)
            if m in self.sequences else projection(d, hidden, dropout=dropout, input_dropout=input_dropout)
            for m, d in dims.items()
        })
        if fusion == "late":
            self.late_heads = nn.ModuleDict(
                {m: nn.ModuleDict({task: _mlp(hidden, hidden, size, dropout) for task, size in outputs.items()}) for m in dims}
            )
        else:
            self.fusion = _FUSION_MODULES[fusion](len(dims), hidden)
            self.heads = nn.ModuleDict({task: _mlp(self.fusion.out_dim, hidden, size, dropout) for task, size in outputs.items()})

    def forward(
        self, inputs: dict[str, torch.Tensor], present: torch.Tensor, lengths: Optional[dict[str, torch.Tensor]] = None
    ) -> dict[str, torch.Tensor]:
        """``inputs``: per modality ``(batch, dim)``, or ``(batch, steps, dim)`` for a sequence modality, whose
        ``lengths`` are ``(batch,)`` (or step masks ``(batch, steps)``); ``present``: bool ``(batch, M)``. Returns per task ``(batch, out)``."""
        if self.mult is not None:
            if lengths is None or any(m not in lengths for m in self.modalities):
                raise ValueError("fusion mult needs every modality's lengths or step mask")
            fused = self.mult(inputs, lengths, present)
            return {task: head(fused) for task, head in self.heads.items()}
        h = torch.stack([self.encode(m, inputs[m], lengths) for m in self.modalities], dim=1)
        if self.fusion_name == "late":
            weights = present.float() / present.float().sum(dim=1, keepdim=True).clamp(min=1.0)
            outputs = {}
            for task in next(iter(self.late_heads.values())):
                per_modality = torch.stack([self.late_heads[m][task](h[:, i]) for i, m in enumerate(self.modalities)], dim=1)
                outputs[task] = (per_modality * weights.unsqueeze(-1)).sum(dim=1)
            return outputs
        fused = self.fusion(h, present)
        return {task: head(fused) for task, head in self.heads.items()}

    def encode(self, modality: str, x: torch.Tensor, lengths: Optional[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One modality's ``(batch, hidden)`` vector."""
        if modality in self.sequences:
            if lengths is None or modality not in lengths:
                raise ValueError(f"{modality} is a sequence input: its lengths are needed")
            return self.projections[modality](x, lengths[modality])
        return self.projections[modality](x)
