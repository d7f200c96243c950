"""Record types that travel through the extraction pipeline."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

_ROW_ENCODER = json.JSONEncoder(sort_keys=True, default=str)
"""The JSON ``ManifestRecord.fingerprint`` hashes (built once: ``json.dumps`` with options builds one per call)."""

@dataclass(frozen=True)
class ManifestError:
    """Why a manifest row cannot be processed at all (an ``ErrorKind`` and a message)."""

    kind: str
    message: str


@dataclass(frozen=True)
class ManifestRecord:
    """One manifest row, as the pipeline's workers read it.

    Attributes:
        sample_id: the row's ``id`` ("" when it has none).
        manifest_row: the row's key, unique in a run and in manifest order (``transforms.manifest_rows``).
        video, audio, text: resolved URIs, or ``None``.
        extra: every other column, carried into the ``samples`` table.
        error: set when the row itself is unusable; the sample then fails with this error.
        line_hash: ``line_hash`` of the JSONL line the row was read from (``None`` for a CSV row or a folder's stem):
            a rerun finds an unchanged line by it without parsing the line again.
    """

    sample_id: str
    manifest_row: int
    video: Optional[str] = None
    audio: Optional[str] = None
    text: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: Optional[ManifestError] = None
    line_hash: Optional[str] = None

    def fingerprint(self) -> str:
        """SHA-256 of what the row says (URIs and extra columns): a changed label makes the sample recomputed."""
        content = {"video": self.video, "audio": self.audio, "text": self.text, "extra": self.extra}
        return hashlib.sha256(_ROW_ENCODER.encode(content).encode("utf-8")).hexdigest()

    def with_error(self, error: ManifestError) -> "ManifestRecord":
        """This record failed with ``error`` (its row is still accounted for)."""
        return dataclasses.replace(self, error=error)

    def as_tuple(self) -> tuple:
        """The record as plain values, which Beam encodes without pickling (about 5x faster between stages)."""
        error = None if self.error is None else (self.error.kind, self.error.message)
        return self.sample_id, self.manifest_row, self.video, self.audio, self.text, self.extra, error, self.line_hash

    @classmethod
    def from_tuple(cls, values: tuple) -> "ManifestRecord":
        """The record ``as_tuple`` gave."""
        sample_id, manifest_row, video, audio, text, extra, error, line_hash = values
        return cls(sample_id, manifest_row, video, audio, text, extra, None if error is None else ManifestError(*error), line_hash)

    def uris(self) -> dict[str, str]:
        """The modalities present, ``{modality: uri}``, in the order video, audio, text."""
        return present_uris(self.video, self.audio, self.text)


def present_uris(video: Optional[str], audio: Optional[str], text: Optional[str]) -> dict[str, str]:
    """``{modality: uri}`` of the URIs given, in the order video, audio, text."""
    uris = {}  # built key by key: an unchanged rerun asks this of every cached sample
    if video:
        uris["video"] = video
    if audio:
        uris["audio"] = audio
    if text:
        uris["text"] = text
    return uris


def line_hasher(base: str) -> Callable[[bytes], str]:
    """``line_hash`` for the lines of one folder: ``line_hasher(base)(line) == line_hash(line, base)``, the folder's part
    of the hash computed once (a reader hashes every line of a manifest)."""
    prefix = hashlib.blake2b(base.encode("utf-8") + b"\0", digest_size=16)  # no path holds NUL

    def hash_line(line: bytes) -> str:
        state = prefix.copy()
        state.update(line)
        return state.hexdigest()

    return hash_line


def line_hash(line: bytes, base: str) -> str:
    """What tells a JSONL manifest line unchanged: BLAKE2b (128 bits, hex) of ``base``, the folder its relative paths
    resolve against, a NUL byte and ``line`` (its bytes, line end removed). The same hash means the same row, so the
    same ``ManifestRecord.fingerprint`` (the converse does not hold: reordered keys make another line of the same row)."""
    return line_hasher(base)(line)
