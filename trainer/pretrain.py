"""Contrastive alignment of modality projections on unlabelled cached features, and cross-modal retrieval.

``pretrain`` trains one projection per modality (the same module fusion models
use) with a symmetric InfoNCE loss, as in CLIP: for every pair of modalities
present in a batch, a sample's two projections must be closer (cosine / temperature)
to each other than to the other samples'. ``retrieval_recall`` measures
recall@K of finding a sample's ``target`` modality from its ``query`` modality.
``mmfeat train --init`` starts a fusion model from pretrained projections.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import torch
from torch import nn

from schemas.errors import ConfigError
from trainer.feature_set import FeatureSet
from trainer.heads import projection
from trainer.standardise import Standardiser

WEIGHTS, CONFIG = "pretrain.pt", "pretrain.json"


@dataclass
class PretrainConfig:
    hidden: int = 32
    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    temperature: float = 0.1
    seed: int = 0


class Projections(nn.Module):
    """One projection per modality, ``(batch, dim) -> (batch, hidden)``."""

    def __init__(self, dims: dict[str, int], hidden: int) -> None:
        super().__init__()
        self.projections = nn.ModuleDict({m: projection(d, hidden) for m, d in dims.items()})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: nn.functional.normalize(self.projections[m](x), dim=-1) for m, x in inputs.items()}


def _info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


def pretrain(data: FeatureSet, config: PretrainConfig) -> tuple[Projections, Standardiser, list[float]]:
    """Align every pair of modalities on ``data`` (labels unused); returns the projections, statistics and loss per epoch."""
    if len(data.modalities) < 2:
        raise ConfigError("pretraining aligns modalities: it needs at least two")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    standardiser = Standardiser.fit(data)
    inputs, present = standardiser.apply(data), torch.from_numpy(data.present)
    model = Projections({m: data.features[m].shape[1] for m in data.modalities}, config.hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    pairs = list(combinations(range(len(data.modalities)), 2))
    history = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(len(data.sample_ids), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            embedded = model({m: x[index] for m, x in inputs.items()})
            losses = []
            for i, j in pairs:
                both = present[index, i] & present[index, j]
                if both.sum() >= 2:
                    a, b = data.modalities[i], data.modalities[j]
                    losses.append(_info_nce(embedded[a][both], embedded[b][both], config.temperature))
            if not losses:
                continue
            loss = torch.stack(losses).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        history.append(total)
    model.eval()
    return model, standardiser, history


def random_projections(data: FeatureSet, config: PretrainConfig) -> tuple[Projections, Standardiser]:
    """The baseline: the same projections, randomly initialised (seeded), on the same statistics."""
    torch.manual_seed(config.seed)
    return Projections({m: data.features[m].shape[1] for m in data.modalities}, config.hidden).eval(), Standardiser.fit(data)


def retrieval_recall(model: Projections, standardiser: Standardiser, data: FeatureSet, *, query: str, target: str,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K of retrieving each sample's ``target`` embedding from its ``query`` embedding, among samples having both."""
    for modality in (query, target):
        if modality not in data.modalities:
            raise ConfigError(f"retrieval: the cache has no {modality} embeddings (it has {data.modalities})")
    both = data.present[:, data.modalities.index(query)] & data.present[:, data.modalities.index(target)]
    subset = data.subset(np.flatnonzero(both))
    with torch.no_grad():
        embedded = model(standardiser.apply(subset))
    similarity = (embedded[query] @ embedded[target].T).numpy()
    ranks = (similarity > np.diag(similarity)[:, None]).sum(axis=1)  # 0 = the true match ranks first
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks} | {"candidates": int(len(ranks))}


def start_from_pretrained(model: nn.Module, directory: str, hidden: int) -> None:
    """Load the pretrain folder ``directory``'s projections into ``model.projections`` (a fusion or caption model: one
    ``projection`` per modality of ``model.modalities``; ``hidden``, the model's projection size).

    Raises:
        ConfigError: the folder lacks one of the model's modalities, its ``hidden`` differs, or the model reads a modality
            as a sequence (pretraining aligns pooled vectors only).
    """
    pretrained, _, pretrain_config = load(directory)
    missing = [m for m in model.modalities if m not in pretrained.projections]
    if missing or pretrain_config.hidden != hidden or model.sequences:
        raise ConfigError(f"--init {directory}: pretrained vectors of {list(pretrained.projections)} with hidden {pretrain_config.hidden}; "
                          f"the model needs vectors of {model.modalities} with hidden {hidden}"
                          + (f" (sequence inputs {list(model.sequences)} cannot start from pretraining)" if model.sequences else ""))
    for modality in model.modalities:
        model.projections[modality].load_state_dict(pretrained.projections[modality].state_dict())


def save(model: Projections, standardiser: Standardiser, config: PretrainConfig, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(directory, WEIGHTS))
    description = {
        "dims": {m: int(v.shape[0]) for m, v in standardiser.mean.items()},
        "config": asdict(config),
        "standardiser": standardiser.to_json(),
    }
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)


def load(directory: str) -> tuple[Projections, Standardiser, PretrainConfig]:
    with open(os.path.join(directory, CONFIG), encoding="utf-8") as handle:
        description = json.load(handle)
    config = PretrainConfig(**description["config"])
    model = Projections(description["dims"], config.hidden)
    model.load_state_dict(torch.load(os.path.join(directory, WEIGHTS), weights_only=True))
    return model.eval(), Standardiser.from_json(description["standardiser"]), config
