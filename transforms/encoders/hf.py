"""Shared checks for Hugging Face model folders (loaded offline, from disk only)."""
from __future__ import annotations

import glob
import json
import os
from typing import Any

from schemas.errors import ConfigError
from transforms.encoders.base import file_fingerprint

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def read_config(folder: str, *, flag: str, trust_remote_code: bool) -> dict[str, Any]:
    """The folder's ``config.json``.

    Raises:
        ConfigError: not a model folder, no weights, or custom code without ``--trust-remote-code``.
    """
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{flag}: {folder} is not a Hugging Face model folder (no config.json)")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not weight_files(folder):
        raise ConfigError(f"{flag}: {folder} has a config.json but no weights (*.safetensors or *.bin)")
    if config.get("auto_map") and not trust_remote_code:
        raise ConfigError(f"{flag}: {folder} ships its own model code; pass --trust-remote-code if you trust it")
    return config


def weight_files(folder: str) -> list[str]:
    return sorted(path for pattern in WEIGHT_PATTERNS for path in glob.glob(os.path.join(folder, pattern)))


def folder_fingerprint_parts(folder: str, extra_files: tuple[str, ...] = ()) -> list[str]:
    """Hashes of the config, the weights and the named preprocessing files that exist."""
    names = ["config.json", *extra_files]
    files = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))] + weight_files(folder)
    return [file_fingerprint(path) for path in files]


def quiet_transformers() -> None:
    """No progress bars or info chatter from transformers in a batch job."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
