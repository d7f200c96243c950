"""``--fusion mult``: a small cross-modal transformer over step sequences (the MulT idea, Tsai et al. 2019).

Every modality is a sequence ``(batch, steps, dim)`` with its valid steps (lengths or a step mask, e.g. an aligned
set from ``mmfeat align``, ``trainer.aligned``). Each is mapped to ``d_model`` with learned step positions (shared by
the modalities: on an aligned set step ``k`` is one time span for all of them). Then, for each target modality:

* one cross-modal block per other (source) modality: the target's steps query the source's steps (pre-norm
  multi-head attention, keys of masked source steps ignored, then a feed-forward), ``layers`` deep;
* the blocks' outputs concatenated, mapped back to ``d_model`` and passed through ``layers`` self-attention layers
  over the target's steps (masked steps are padding);
* the mean over the target's valid steps.

The target vectors are concatenated, ``(batch, M * d_model)``, zero for a modality a sample lacks. Masked steps
never reach the output: they are padding keys in every attention and left out of every mean, so their values do
not matter. Sized for CPUs: ``d_model`` = the head's ``hidden`` (32 by default), 2 heads, 1 layer.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.sequence_encoders import step_mask


def _usable(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` ``(batch, steps)`` with rows of no valid step made all-valid (attention over zeros instead of NaN; those
    rows are zeroed afterwards)."""
    return mask | ~mask.any(dim=1, keepdim=True)


class CrossModalBlock(nn.Module):
    """Target steps ``(batch, t, d)`` attend to source steps ``(batch, s, d)``; pre-norm, residual, feed-forward."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_query, self.norm_source, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """``source_mask`` ``(batch, s)`` bool, true on valid source steps (each row has at least one) -> ``(batch, t, d)``."""
        source = self.norm_source(source)
        attended, _ = self.attention(self.norm_query(target), source, source, key_padding_mask=~source_mask, need_weights=False)
        target = target + self.dropout(attended)
        return target + self.dropout(self.feed_forward(self.norm_ff(target)))


class MulTFusion(nn.Module):
    """Cross-modal transformer fusion of sequence inputs.

    Args:
        dims: step size per modality (their order is the order of ``present``).
        d_model: the width inside, and of each modality's output vector.
        max_steps: the longest sequence (sizes the position table).
        heads: attention heads (must divide ``d_model``).
        layers: cross-modal blocks per (target, source) pair, and self-attention layers per target.
        dropout: inside the blocks.
        input_dropout: on the (standardised) input steps.
    """

    def __init__(self, dims: dict[str, int], *, d_model: int = 32, max_steps: int = 64, heads: int = 2, layers: int = 1,
                 dropout: float = 0.1, input_dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"mult: d_model {d_model} must be a multiple of heads {heads}")
        self.modalities = list(dims)
        self.inputs = nn.ModuleDict({m: nn.Sequential(nn.Dropout(input_dropout), nn.Linear(d, d_model)) for m, d in dims.items()})
        self.position = nn.Parameter(torch.zeros(max_steps, d_model))
        self.modality_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(d_model)) for m in dims})
        self.cross = nn.ModuleDict({
            f"{source}>{target}": nn.ModuleList(CrossModalBlock(d_model, heads, dropout) for _ in range(layers))
            for target in dims for source in dims if source != target
        })
        n_sources = max(len(dims) - 1, 1)
        self.merge = nn.ModuleDict({m: nn.Linear(n_sources * d_model, d_model) for m in dims})
        self.self_attention = nn.ModuleDict({
            m: nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True),
                num_layers=layers, enable_nested_tensor=False)
            for m in dims
        })
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = len(dims) * d_model

    def forward(self, inputs: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """``inputs`` per modality ``(batch, steps, dim)``; ``valid`` per modality lengths ``(batch,)`` or a step mask
        ``(batch, steps)``; ``present`` bool ``(batch, M)``. Returns ``(batch, M * d_model)``."""
        masks, steps = {}, {}
        for i, m in enumerate(self.modalities):
            x = inputs[m]
            mask = step_mask(valid[m], x.shape[1]) & present[:, i : i + 1]
            masks[m] = mask
            steps[m] = self.inputs[m](x) + self.position[: x.shape[1]] + self.modality_embedding[m]
        pooled = []
        for m in self.modalities:
            target = steps[m]
            crossed = []
            for source in self.modalities:
                if source == m:
                    continue
                has_source = masks[source].any(dim=1).to(target.dtype)[:, None, None]
                h = target
                for block in self.cross[f"{source}>{m}"]:
                    h = block(h, steps[source], _usable(masks[source]))
                crossed.append(target + (h - target) * has_source)  # a sample without the source keeps the target as it was
            h = self.merge[m](torch.cat(crossed, dim=-1)) if crossed else target
            h = self.norm(self.self_attention[m](h, src_key_padding_mask=~_usable(masks[m])))
            weights = masks[m].to(h.dtype).unsqueeze(-1)
            pooled.append((h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
        return torch.cat(pooled, dim=1)
