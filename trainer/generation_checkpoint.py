"""Caption heads on disk: ``model.pt`` (the state_dict, loaded with ``weights_only=True``) and ``model.json``
(``"task": "generate"``, the config, input sizes, sequence modalities, vocabulary, standardiser, the ``target`` column, the
``tokenizer`` path and ``cache``: what the training data was read from), the file names fusion checkpoints use."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Optional

import torch

from schemas.errors import ConfigError
from trainer.caption_model import Vocabulary
from trainer.generation import CONFIG, TASK, WEIGHTS, FittedGenerator, GenerateConfig, build_model
from trainer.standardise import Standardiser


def save_generator(fitted: FittedGenerator, directory: str, *, target: str, tokenizer: str, source: Optional[dict[str, Any]] = None) -> None:
    """Write ``model.pt`` (the state_dict) and ``model.json`` (``"task": "generate"``, the config, input sizes, sequence
    modalities, vocabulary, standardiser, ``target`` column, ``tokenizer`` path, ``source``: what the data was read from)."""
    os.makedirs(directory, exist_ok=True)
    model = fitted.model
    torch.save(model.state_dict(), os.path.join(directory, WEIGHTS))
    description = {
        "task": TASK,
        "dims": {m: int(fitted.standardiser.mean[m].shape[0]) for m in model.modalities},
        "sequences": list(model.sequences),
        "max_steps": model.max_steps,
        "generate_config": asdict(fitted.config),
        "vocab": fitted.vocab.token_ids,
        "standardiser": fitted.standardiser.to_json(),
        "target": target,
        "tokenizer": tokenizer,
        "cache": source or {},
        "history": fitted.history,
    }
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2)


def load_generator(directory: str) -> FittedGenerator:
    """Rebuild a caption head saved by ``save_generator``; ``metadata`` holds its ``target``, ``tokenizer`` and ``cache``."""
    path = os.path.join(directory, CONFIG)
    try:
        with open(path, encoding="utf-8") as handle:
            description = json.load(handle)
    except OSError as error:
        raise ConfigError(f"{directory} is not a checkpoint folder ({error})") from error
    if description.get("task") != TASK:
        raise ConfigError(f"{directory} holds a {description.get('task', 'classification')} model, not a caption head (task {TASK})")
    config = GenerateConfig(**description["generate_config"])
    vocab = Vocabulary([int(t) for t in description["vocab"]])
    model = build_model(config, description["dims"], len(vocab), tuple(description["sequences"]), int(description["max_steps"]))
    model.load_state_dict(torch.load(os.path.join(directory, WEIGHTS), weights_only=True))
    model.eval()
    metadata = {k: description[k] for k in ("target", "tokenizer", "cache")}
    return FittedGenerator(model, Standardiser.from_json(description["standardiser"]), vocab, description.get("history", []), config, metadata)
