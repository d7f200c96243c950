"""Checkpoints: ``model.pt`` (a state_dict, loaded with ``weights_only=True``) and ``model.json``, which
holds everything needed to rebuild the model: modalities and input sizes, fusion, hyper-parameters,
tasks and the standardisation statistics of the training data, and what it was trained on (``cache``:
the run whose state was read and each modality's table)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Optional

import torch

from trainer.standardise import Standardiser
from trainer.train import Fitted, Task, TrainConfig

WEIGHTS, CONFIG = "model.pt", "model.json"


def save(fitted: Fitted, config: TrainConfig, directory: str, source: Optional[dict[str, Any]] = None) -> None:
    """Write ``model.pt`` and ``model.json`` into ``directory``; ``source``: what the training data was read from."""
    os.makedirs(directory, exist_ok=True)
    torch.save(fitted.model.state_dict(), os.path.join(directory, WEIGHTS))
    description = {
        "dims": {m: int(fitted.standardiser.mean[m].shape[0]) for m in fitted.model.modalities},
        "train_config": asdict(config),
        "tasks": [asdict(t) for t in fitted.tasks],
        "standardiser": fitted.standardiser.to_json(),
        "cache": source or {},
    }
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)


def _description(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, CONFIG), encoding="utf-8") as handle:
        return json.load(handle)


def trained_on(directory: str) -> dict[str, Any]:
    """What the checkpoint's training data was read from (``FeatureSet.source``; empty for older checkpoints)."""
    return _description(directory).get("cache", {})


def load(directory: str) -> tuple[Fitted, TrainConfig]:
    """Rebuild a model from ``model.json`` and load its weights."""
    description = _description(directory)
    config = TrainConfig(**description["train_config"])
    tasks = [Task(**t) for t in description["tasks"]]
    model = config.build_model(description["dims"], {t.label: t.outputs for t in tasks})
    model.load_state_dict(torch.load(os.path.join(directory, WEIGHTS), weights_only=True))
    model.eval()
    return Fitted(model, Standardiser.from_json(description["standardiser"]), tasks, history=[], chunk_rows=config.chunk_rows), config
