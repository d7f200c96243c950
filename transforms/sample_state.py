"""What one sample's extraction produces and carries: table rows (``TableRow``), encoder items' pseudo-tables
(``encode_table``), the run's context (``RunContext``, ``EncodeRequest``) and the sample's running state
(``SampleState``: counts, durations, file identities, errors, payloads; its ``samples`` row). The steps that fill it
are ``transforms.extract_sample.SampleExtractor``'s."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from schemas.errors import WARNING_KINDS
from schemas.records import ManifestRecord
from schemas.tables import STATUS_FAILED, STATUS_OK, STATUS_PARTIAL, TEXT_SOURCE_FILE
from transforms.speech import SpeechTrack
from transforms.unchanged import identities_json

if TYPE_CHECKING:
    from transforms.embedding_rows import InlineEmbedder

TableRow = tuple[str, dict[str, Any]]
ENCODE_PREFIX = "_encode/"


def encode_table(modality: str) -> str:
    """Pseudo-table name under which encoder items of ``modality`` travel."""
    return ENCODE_PREFIX + modality


@dataclass(frozen=True)
class EncodeRequest:
    """What the extraction must hand to the encoder of one modality: payload fields and the encoder's fingerprint;
    ``inline``: the embedder of an inline encoder, whose rows the extraction computes itself (else ``None``: the
    extraction hands ``_encode/<modality>`` items over to ``RunInference``)."""

    modality: str
    needs: frozenset[str]
    fingerprint: str
    inline: Optional[InlineEmbedder] = None


@dataclass(frozen=True)
class RunContext:
    """What one run brings to every sample: values to record, the encoders to feed, and what the cache holds.

    Attributes:
        features_fingerprint: hash of everything that determines the features (recorded per sample).
        run_id: recorded per sample.
        requests: the encoders to feed, by modality.
        verify_content: compare content hashes even of files whose identity is unchanged.
        transcribe: gather each sound track for speech recognition (``_encode/speech`` items; the samples row
            gets ``text_source``).
    """

    features_fingerprint: str = ""
    run_id: str = ""
    requests: dict[str, EncodeRequest] = field(default_factory=dict)
    verify_content: bool = False
    transcribe: bool = False


@dataclass
class SampleState:
    """What has been produced for one sample so far (counts, durations, errors, encoder payloads)."""

    record: ManifestRecord
    n_frames: int = 0
    n_audio_windows: int = 0
    n_tokens: int = 0
    n_errors: int = 0
    feature_rows: int = 0
    video_duration_s: Optional[float] = None
    audio_duration_s: Optional[float] = None
    file_hashes: dict[str, str] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    n_skipped_packets: int = 0
    known_content_hash: Optional[str] = None  # the cached hash, when the files' identities are the cached ones
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    audio_payloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # by source: "audio" file or "video" track
    speech_tracks: Optional[dict[str, SpeechTrack]] = None  # by source, when transcribing (else None: nothing gathered)
    text_from_file: bool = False

    def speech_track(self, source: str, sample_rate: int) -> Optional[SpeechTrack]:
        """The track of ``source`` to gather samples into (made on first call), or ``None`` when not transcribing."""
        if self.speech_tracks is None:
            return None
        return self.speech_tracks.setdefault(source, SpeechTrack(sample_rate))

    def content_hash(self) -> Optional[str]:
        """SHA-256 over the content hashes of every readable file, when all of them were hashed (else the cached one)."""
        if not self.file_hashes or set(self.file_hashes) != set(self.identities):
            return self.known_content_hash
        return hashlib.sha256(json.dumps(self.file_hashes, sort_keys=True).encode()).hexdigest()

    def file_identity(self) -> str:
        """The identities of the readable files as JSON (``{}`` when none is readable)."""
        return identities_json(self.identities)

    def feature_row(self, table: str, columns: dict[str, Any]) -> TableRow:
        """A row of a feature table for this sample (counted, so the status can tell partial from failed)."""
        self.feature_rows += 1
        return table, {"sample_id": self.record.sample_id, **columns}

    def error_row(self, stage: str, kind: str, message: str, uri: Optional[str]) -> TableRow:
        """An ``errors`` row; a failure counts in ``n_errors`` (and so the status), a warning kind does not."""
        if kind not in WARNING_KINDS:
            self.n_errors += 1
        return "errors", {
            "sample_id": self.record.sample_id,
            "manifest_row": self.record.manifest_row,
            "uri": uri,
            "stage": stage,
            "error_kind": kind,
            "message": message,
        }

    def status(self) -> str:
        """``ok`` without failures (warnings do not count), else ``partial`` when some feature rows were produced, else ``failed``."""
        if self.n_errors == 0:
            return STATUS_OK
        return STATUS_PARTIAL if self.feature_rows else STATUS_FAILED

    def samples_row(self, *, features_fingerprint: str, run_id: str) -> TableRow:
        record = self.record
        return "samples", {
            **record.extra,
            "sample_id": record.sample_id,
            "manifest_row": record.manifest_row,
            "status": self.status(),
            "content_hash": self.content_hash(),
            "file_identity": self.file_identity(),
            "video": record.video,
            "audio": record.audio,
            "text": record.text,
            "video_duration_s": self.video_duration_s,
            "audio_duration_s": self.audio_duration_s,
            "n_frames": self.n_frames,
            "n_audio_windows": self.n_audio_windows,
            "n_tokens": self.n_tokens,
            "n_errors": self.n_errors,
            "n_skipped_packets": self.n_skipped_packets,
            "manifest_ok": record.error is None,
            "features_fingerprint": features_fingerprint,
            "manifest_hash": record.fingerprint(),
            "manifest_line_hash": record.line_hash,
            "run_id": run_id,
            **({} if self.speech_tracks is None else {"text_source": TEXT_SOURCE_FILE if self.text_from_file else None}),
        }
