"""Explicit pyarrow schemas of every table in the cache, and the schema version.

Each table is a Delta table (``schemas.cache``); its description records the
schema version (and, for an embedding set, the encoder and the vector width),
and each run's ``samples`` commit records the run's config and provenance.
Vectors are ``list<float32>``: Delta has no fixed-size lists nor half floats.
"""
from __future__ import annotations

import pyarrow as pa

from schemas.config import MODALITIES  # noqa: F401  (re-exported: defined where importing it costs no pyarrow)

SCHEMA_VERSION = "2"

STATUS_OK = "ok"
STATUS_PARTIAL = "partial"
STATUS_FAILED = "failed"
STATUSES = (STATUS_OK, STATUS_PARTIAL, STATUS_FAILED)


SAMPLES_BASE = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("manifest_row", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("content_hash", pa.string()),
        pa.field("file_identity", pa.string()),
        pa.field("video", pa.string()),
        pa.field("audio", pa.string()),
        pa.field("text", pa.string()),
        pa.field("video_duration_s", pa.float64()),
        pa.field("audio_duration_s", pa.float64()),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("n_audio_windows", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_errors", pa.int32(), nullable=False),
        pa.field("n_skipped_packets", pa.int32(), nullable=False),
        pa.field("manifest_ok", pa.bool_(), nullable=False),
        pa.field("features_fingerprint", pa.string(), nullable=False),
        pa.field("manifest_hash", pa.string(), nullable=False),
        pa.field("manifest_line_hash", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)
"""One row per manifest row, always. ``manifest_row`` is the row's key in the
input of the run that wrote the row (``transforms.manifest_rows``: shard rank
and position, in manifest order); ``sample_id`` is unique
among rows whose ``manifest_ok`` is true (a duplicate id keeps the first row
and fails the others, with ``manifest_ok`` false). ``features_fingerprint``
hashes the feature config, ``manifest_hash`` the manifest row (URIs and
extra columns), ``manifest_line_hash`` the JSONL line it was read from (a
rerun finds an unchanged line without parsing it; null for CSV rows and
folders); ``run_id`` names the run that computed the row.
``file_identity`` is JSON ``{modality: "size:mtime"}`` of the files the row
was computed from (an incremental run compares it first); ``content_hash``
hashes their contents where a run read them to compare (identity changed, or
``--verify-content``), else null. ``n_skipped_packets`` counts corrupt audio
packets the decoder skipped.
Extra manifest columns are appended by ``samples_schema``."""

FRAMES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)
"""One row per sampled video frame: ``frame_index`` is its rank among the
sampled frames of the sample, ``timestamp_s`` its presentation time in
seconds, ``image`` a JPEG of ``width`` x ``height`` pixels."""

AUDIO = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("window_index", pa.int32(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("frame_times_s", pa.list_(pa.float64()), nullable=False),
        pa.field("mfcc", pa.list_(pa.list_(pa.float32())), nullable=False),
    ]
)
"""One row per audio window. ``source`` is ``audio`` (the manifest's audio
file) or ``video`` (the video's own sound track). ``mfcc`` has shape
``(n_frames, n_mfcc)``; ``frame_times_s`` (length ``n_frames``) holds the
centre of each analysis frame, in seconds from the start of the stream;
``start_s``/``end_s`` bound the samples the window's frames cover."""

TEXT = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("n_tokens_full", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)
"""One row per text: ``token_ids`` are unpadded (special tokens included),
cut at ``max_tokens``; ``n_tokens_full`` is the length before the cut."""

ERRORS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("manifest_row", pa.int64(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_kind", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)
"""One row per failure (a sample can have several)."""


WORDS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("word_index", pa.int32(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
    ]
)
"""One row per transcribed word (``mmfeat extract --transcribe``). ``source`` is ``audio`` (the manifest's
audio file) or ``video`` (the video's sound track); ``word_index`` is the word's rank in that source's
transcript; ``start_s``/``end_s`` are seconds from the start of the stream; ``word`` is stripped of the
leading space Whisper's tokens carry (punctuation kept); ``probability`` is the model's, in 0..1.
A stream without speech has no rows."""

SEGMENTS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("avg_logprob", pa.float32(), nullable=False),
        pa.field("no_speech_prob", pa.float32(), nullable=False),
    ]
)
"""One row per transcript segment (Whisper's decoding unit, a phrase or sentence), with ``source``
as in ``words``; ``text`` is stripped; ``avg_logprob`` is the mean token log-probability (nats),
``no_speech_prob`` the model's probability that the segment holds no speech. The whole transcript of a
source is its segments' texts joined by spaces, in ``segment_index`` order."""

SPEECH_TABLES = {"words": WORDS, "segments": SEGMENTS}
"""The tables an extraction with ``--transcribe`` adds (absent otherwise)."""

TEXT_SOURCE = pa.field("text_source", pa.string())
"""The ``samples`` column an extraction with ``--transcribe`` adds: ``file`` (the manifest's text file), ``asr``
(a sample without a text file: its transcript is its text modality) or null (no text)."""

TEXT_SOURCE_FILE = "file"
TEXT_SOURCE_ASR = "asr"

ALIGNED_DIR = "aligned"
ALIGNED_MODALITIES = ("audio", "video", "text")
"""The modalities of an aligned set, in column order."""

ALIGNED = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("aligned_on", pa.string(), nullable=False),
        pa.field("n_steps", pa.int32(), nullable=False),
        pa.field("start_s", pa.list_(pa.float64()), nullable=False),
        pa.field("end_s", pa.list_(pa.float64()), nullable=False),
        pa.field("label", pa.list_(pa.string()), nullable=False),
        pa.field("audio", pa.list_(pa.list_(pa.float32()))),
        pa.field("audio_mask", pa.list_(pa.bool_()), nullable=False),
        pa.field("video", pa.list_(pa.list_(pa.float32()))),
        pa.field("video_mask", pa.list_(pa.bool_()), nullable=False),
        pa.field("text", pa.list_(pa.list_(pa.float32()))),
        pa.field("text_mask", pa.list_(pa.bool_()), nullable=False),
    ]
)
"""One row per sample of an aligned set (``mmfeat align``; table ``aligned/<on>-<fingerprint>``): ``n_steps`` steps on
one time axis, the clock of ``source`` (``audio`` file or ``video`` sound track: the stream the sample's words were
transcribed from), ``aligned_on`` ``words``, ``segments`` or ``fixed:SECONDS``. ``start_s``/``end_s`` ``(steps,)``
bound each step ``[start, end)`` in seconds; ``label`` ``(steps,)`` is the word or the segment's text (empty for fixed
steps). ``audio`` ``(steps, n_mfcc)``, ``video`` ``(steps, dim)``, ``text`` ``(steps, dim)`` hold each step's mean of
the MFCC frames, per-frame image vectors and the word's per-token text vectors inside the step; ``<modality>_mask``
``(steps,)`` is true where the step has data of that modality. Masked steps hold zeros, which are not data; a sample
whose steps hold no data of a modality (none in the cache, or none inside any step) has that column null (mask all
false). The table's description records what it was aligned on and the embedding sets, tokenizer and widths it
was aligned from."""

FEATURE_TABLES = {"frames": FRAMES, "audio": AUDIO, "text": TEXT, "errors": ERRORS}
TABLE_NAMES = ("samples", "frames", "audio", "text", "errors")
SKIPPED_TABLE = "_skipped"
"""The pseudo-table of the marker a sample the cache already holds yields (``sample_id``, ``manifest_row`` and
``unchanged_by``: ``metadata`` or ``content``, what told): counted by the pipeline, never written."""
EMBEDDINGS_DIR = "embeddings"


def embeddings_schema(*, sequence: bool = False) -> pa.Schema:
    """Schema of one embedding set (one modality, one encoder): ``vector`` holds ``dim`` float32 values
    (``dim`` is in the table's description and the run summary).

    With ``sequence``, a ``sequence`` column holds the vectors ``vector`` pools, ``(steps, dim)``: one per
    sampled frame (video) or per token (text, special tokens included).
    """
    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("encoder", pa.string(), nullable=False),
        pa.field("encoder_fingerprint", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32()), nullable=False),
    ]
    if sequence:
        fields.append(pa.field("sequence", pa.list_(pa.list_(pa.float32())), nullable=False))
    return pa.schema(fields)


def embedding_table_name(modality: str, encoder: str, fingerprint: str) -> str:
    """Folder of one embedding set under the cache, e.g. ``embeddings/text/minilm-l6-1a2b3c4d5e6f``."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in encoder.split("/")[-1].lower()).strip("-") or "encoder"
    return f"{EMBEDDINGS_DIR}/{modality}/{slug}-{fingerprint[:12]}"


SAMPLES_WITH_SPEECH = pa.schema(list(SAMPLES_BASE) + [TEXT_SOURCE])
"""The base ``samples`` columns of an extraction with ``--transcribe`` (``TEXT_SOURCE`` added)."""


def samples_schema(extra_fields: list[pa.Field], base: pa.Schema = SAMPLES_BASE) -> pa.Schema:
    """The ``samples`` schema for one manifest: the base columns (``SAMPLES_BASE``, or ``SAMPLES_WITH_SPEECH``
    when transcribing), then its extra columns.

    Raises:
        ValueError: an extra column has the name of a base column.
    """
    clashes = [f.name for f in extra_fields if f.name in base.names]
    if clashes:
        raise ValueError(f"manifest columns {clashes} clash with reserved samples columns")
    return pa.schema(list(base) + list(extra_fields))


def table_schemas(extra_fields: list[pa.Field], *, speech: bool = False) -> dict[str, pa.Schema]:
    """The feature and bookkeeping table schemas of one extraction run, keyed by table name; with ``speech``
    (``--transcribe``) ``samples`` has ``text_source`` and ``words``/``segments`` are added."""
    if not speech:
        return {"samples": samples_schema(extra_fields), **FEATURE_TABLES}
    return {"samples": samples_schema(extra_fields, SAMPLES_WITH_SPEECH), **FEATURE_TABLES, **SPEECH_TABLES}
