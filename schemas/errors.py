"""Project exception types and the vocabulary of the ``errors`` table.

``ConfigError`` is raised for bad parameters before any work starts (the CLI
turns it into a message and exit status 2). Failures on individual inputs are
never raised out of a pipeline: they become rows of the ``errors`` table, with
a ``stage`` and an ``error_kind`` from the constants below.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A parameter, option or input location is invalid; the message says what to fix."""


class Stage:
    """Where in the extraction a failure happened (``errors.stage``)."""

    MANIFEST = "manifest"
    READ = "read"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"
    EMBED = "embed"
    ASR = "asr"


class ErrorKind:
    """What went wrong (``errors.error_kind``)."""

    INVALID_ROW = "invalid_row"
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    NO_MODALITY = "no_modality"
    AMBIGUOUS_FILES = "ambiguous_files"
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    UNREADABLE = "unreadable"
    NO_STREAM = "no_stream"
    NO_FRAMES = "no_frames"
    TRUNCATED = "truncated"
    DECODE_ERROR = "decode_error"
    TOO_SHORT = "too_short"
    NOT_UTF8 = "not_utf8"
    EMPTY_TEXT = "empty_text"
    ENCODER_FAILED = "encoder_failed"
    INTERNAL = "internal"
    NOT_A_FILE = "not_a_file"
    UNSUPPORTED_URI = "unsupported_uri"
    TEXT_TOO_LONG = "text_too_long"
    ASR_FAILED = "asr_failed"


WARNING_KINDS = frozenset({ErrorKind.TEXT_TOO_LONG})
"""Kinds recorded as ``errors`` rows that are not failures: they neither count in ``n_errors`` nor make a sample
``partial`` or ``failed`` (the sample's features are complete as configured)."""


class SampleFailure(Exception):
    """One modality of one sample failed; caught by the extraction DoFn and written as an error row.

    Args:
        stage: a ``Stage`` constant.
        kind: an ``ErrorKind`` constant.
        message: a human-readable explanation (what was expected, what was found).
    """

    def __init__(self, stage: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.kind = kind
        self.message = message


class ConcurrentRunError(RuntimeError):
    """Another run holds the cache's commit and did not finish in time; this run committed nothing."""


class DamagedFileError(RuntimeError):
    """A committed data file cannot be read. ``path`` names it; ``mmfeat repair`` removes it."""

    def __init__(self, table: str, path: str, reason: str) -> None:
        super().__init__(f"data file {path} of table {table} is damaged or missing ({reason}); "
                         "run mmfeat repair --deep on the cache to remove it (its samples are recomputed by the next run)")
        self.table, self.path = table, path


class AccountingError(RuntimeError):
    """The samples table does not hold exactly one row per input row: data was lost or duplicated."""
