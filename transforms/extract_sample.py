"""Extraction of one sample: every table row it produces, as ``(table, row)`` data.

All rows of a sample, errors included, leave through one output as tuples, so
the pipeline has a single chain that every Beam runner executes once (see
ARCHITECTURE.md and the DaskRunner notes in FACTS.md). Any failure is caught
where it happens and becomes an ``errors`` row; rows already produced for
the sample are kept, and its status says so (``ok``/``partial``/``failed``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
import numpy as np

from schemas.config import ExtractConfig
from schemas.errors import ErrorKind, SampleFailure, Stage
from schemas.records import ManifestRecord
from schemas.tables import STATUS_FAILED, STATUS_OK, STATUS_PARTIAL
from transforms import media_io
from transforms.audio_decode import decode_mono
from transforms.mfcc import MfccStream, mfcc_frames
from transforms.text import TextTokenizer, decode_utf8
from transforms.video import FrameSampler

logger = logging.getLogger(__name__)

TableRow = tuple[str, dict[str, Any]]


class _SampleState:
    """What has been produced for one sample so far (counts, durations, errors)."""

    def __init__(self, record: ManifestRecord) -> None:
        self.record = record
        self.n_frames = 0
        self.n_audio_windows = 0
        self.n_tokens = 0
        self.n_errors = 0
        self.feature_rows = 0
        self.video_duration_s: Optional[float] = None
        self.audio_duration_s: Optional[float] = None
        self.file_hashes: dict[str, str] = {}

    def feature_row(self, table: str, columns: dict[str, Any]) -> TableRow:
        """A row of a feature table for this sample (counted, so the status can tell partial from failed)."""
        self.feature_rows += 1
        return table, {"sample_id": self.record.sample_id, **columns}

    def error_row(self, stage: str, kind: str, message: str, uri: Optional[str]) -> TableRow:
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
        if self.n_errors == 0:
            return STATUS_OK
        return STATUS_PARTIAL if self.feature_rows else STATUS_FAILED

    def samples_row(self) -> TableRow:
        record = self.record
        content_hash = None
        if self.file_hashes:
            content_hash = hashlib.sha256(json.dumps(self.file_hashes, sort_keys=True).encode()).hexdigest()
        return "samples", {
            **record.extra,
            "sample_id": record.sample_id,
            "manifest_row": record.manifest_row,
            "status": self.status(),
            "content_hash": content_hash,
            "video": record.video,
            "audio": record.audio,
            "text": record.text,
            "video_duration_s": self.video_duration_s,
            "audio_duration_s": self.audio_duration_s,
            "n_frames": self.n_frames,
            "n_audio_windows": self.n_audio_windows,
            "n_tokens": self.n_tokens,
            "n_errors": self.n_errors,
        }


class SampleExtractor:
    """Turns a ``ManifestRecord`` into table rows (frames, audio windows, tokens, errors, then its samples row)."""

    def __init__(self, config: ExtractConfig, tokenizer: TextTokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer

    def extract(self, record: ManifestRecord) -> Iterator[TableRow]:
        """Yield every row of ``record``; the ``samples`` row comes last. Never raises for bad input."""
        state = _SampleState(record)
        if record.error is not None:
            yield state.error_row(Stage.MANIFEST, record.error.kind, record.error.message, None)
            yield state.samples_row()
            return
        steps: dict[str, Callable[[str, str, _SampleState], Iterator[TableRow]]] = {
            "video": self._video,
            "audio": self._audio_file,
            "text": self._text,
        }
        for modality, uri in record.uris().items():
            try:
                media_io.check_readable(uri)
                state.file_hashes[modality] = media_io.sha256_of(uri)
                with media_io.local_copy(uri) as path:
                    yield from steps[modality](uri, path, state)
            except SampleFailure as failure:
                yield state.error_row(failure.stage, failure.kind, failure.message, uri)
            except Exception as error:  # a bug or an unforeseen input: recorded, never fatal
                logger.exception("unexpected failure on %s (%s)", record.sample_id, uri)
                yield state.error_row(modality, ErrorKind.INTERNAL, f"{type(error).__name__}: {error}", uri)
        yield state.samples_row()

    def _video(self, uri: str, path: str, state: _SampleState) -> Iterator[TableRow]:
        sampler = FrameSampler(self.config.video)
        try:
            for frame in sampler.sample(path):
                state.n_frames += 1
                yield state.feature_row(
                    "frames",
                    {
                        "frame_index": frame.frame_index,
                        "timestamp_s": frame.timestamp_s,
                        "image": frame.jpeg,
                        "width": frame.width,
                        "height": frame.height,
                    },
                )
        except SampleFailure as failure:
            yield state.error_row(failure.stage, failure.kind, failure.message, uri)
        state.video_duration_s = sampler.duration_s if state.n_frames else None
        # The sound track is independent of the pictures: it is read even when frames failed.
        try:
            yield from self._audio_stream(path, state, source="video", require_stream=False)
        except SampleFailure as failure:
            yield state.error_row(failure.stage, failure.kind, f"sound track: {failure.message}", uri)

    def _audio_file(self, uri: str, path: str, state: _SampleState) -> Iterator[TableRow]:
        yield from self._audio_stream(path, state, source="audio", require_stream=True)

    def _audio_stream(self, path: str, state: _SampleState, *, source: str, require_stream: bool) -> Iterator[TableRow]:
        audio_config = self.config.audio
        chunks = decode_mono(path, sample_rate=audio_config.sample_rate, require_stream=require_stream)
        first = next(chunks, None)
        if first is None and not require_stream:
            return  # a video without sound has no audio rows
        stream = MfccStream(audio_config)
        for window in stream.windows(_prepend(first, chunks)):
            state.n_audio_windows += 1
            yield state.feature_row(
                "audio",
                {
                    "source": source,
                    "window_index": window.window_index,
                    "sample_rate": audio_config.sample_rate,
                    "start_s": window.start_s,
                    "end_s": window.end_s,
                    "frame_times_s": window.frame_times_s,
                    "mfcc": window.mfcc,
                },
            )
        state.audio_duration_s = stream.duration_s

    def _text(self, uri: str, path: str, state: _SampleState) -> Iterator[TableRow]:
        text = decode_utf8(media_io.read_bytes(path), uri=uri)
        tokens = self.tokenizer.encode(text)
        state.n_tokens = len(tokens.ids)
        yield state.feature_row(
            "text", {"text": text, "token_ids": tokens.ids, "n_tokens_full": tokens.n_full, "truncated": tokens.truncated}
        )


def _prepend(first: Optional[np.ndarray], rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    if first is not None:
        yield first
    yield from rest


class ExtractSampleFn(beam.DoFn):
    """Beam wrapper of ``SampleExtractor``: ``ManifestRecord`` in, ``(table, row)`` out (one output only).

    Config is kept from ``__init__``; the tokenizer is built and librosa's JIT
    warmed in ``setup()``, once per worker, not on the first element.
    """

    def __init__(self, config: ExtractConfig, tokenizer_path: str) -> None:
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._extractor: Optional[SampleExtractor] = None
        self._samples = beam.metrics.Metrics.counter("mmfeat", "samples")
        self._failures = beam.metrics.Metrics.counter("mmfeat", "failures")

    def setup(self) -> None:
        tokenizer = TextTokenizer(self._tokenizer_path, max_tokens=self._config.text.max_tokens)
        self._extractor = SampleExtractor(self._config, tokenizer)
        mfcc_frames(np.zeros(self._config.audio.n_fft * 2, dtype=np.float32), config=self._config.audio)

    def process(self, record: ManifestRecord) -> Iterator[TableRow]:
        self._samples.inc()
        for table, row in self._extractor.extract(record):
            if table == "errors":
                self._failures.inc()
            yield table, row
