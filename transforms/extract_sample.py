"""Extraction of one sample: every table row it produces, as ``(table, row)`` data.

All rows of a sample, errors included, leave through one output as tuples, so
the pipeline has a single chain that every Beam runner executes once (see
ARCHITECTURE.md and the DaskRunner notes in FACTS.md). Any failure is caught
where it happens and becomes an ``errors`` row; rows already produced for
the sample are kept, and its status says so (``ok``/``partial``/``failed``).

Besides cache rows, a sample yields one *encoder item* per modality that an
encoder will embed, under the table name ``_encode/<modality>``: the pipeline
routes those to ``RunInference`` instead of the cache. An *inline* encoder's
(``EncodeRequest.inline``, e.g. ``builtin:mfcc-stats``) vector is computed
here instead, from the same payload: its embedding row (or ``errors`` row)
leaves with the sample's other rows, before the ``samples`` row.

Speech (``RunContext.transcribe``): the samples of each sound track (the
audio file's, the video's) are gathered while they are decoded for MFCCs and
leave as one ``_encode/speech`` item per track, for the recogniser's
``RunInference`` (``transforms.asr``); a track that cannot be decoded gets an
``errors`` row of stage ``asr`` here. The track whose transcript is to be the
sample's text (a sample without a text file: its audio file's track, else
its video's) is marked ``as_text``.

Incremental runs: a sample the cache holds unchanged (``transforms.unchanged``)
yields only a ``_skipped`` marker, plus encoder items for the modalities whose
current encoder has not embedded it yet. Most unchanged samples never get
here: the join with the cache counts those its files' metadata tells about.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional

import numpy as np

from schemas.config import ExtractConfig
from schemas.errors import ErrorKind, SampleFailure, Stage
from schemas.records import ManifestRecord
from schemas.tables import SKIPPED_TABLE
from transforms import media_io
from transforms.audio_decode import MonoDecoder
from transforms.mfcc import AudioEncoderInput, MfccStream
from transforms.sample_state import EncodeRequest, RunContext, SampleState, TableRow, encode_table
from transforms.text import TextTokenizer, decode_utf8, read_prefix
from transforms.unchanged import UNCHANGED_BY_CONTENT, UNCHANGED_BY_METADATA, KnownSample, same_row_and_config
from transforms.video_rows import audio_row, video_file_rows

logger = logging.getLogger(__name__)
Step = Callable[[str, str, SampleState], Iterator[TableRow]]


class SampleExtractor:
    """Turns a ``ManifestRecord`` into table rows and encoder items.

    Args:
        config: the feature configuration.
        tokenizer: the tokenizer of the ``text`` table.
        context: the run's fingerprint, id, encoder requests and cache content.
        decode_threads: a video's decoder threads (``None``: ``video_rows.decode_threads()``, the process's share of
            the cores).
    """

    def __init__(self, config: ExtractConfig, tokenizer: TextTokenizer, context: Optional[RunContext] = None,
                 decode_threads: Optional[int] = None) -> None:
        self.decode_threads = decode_threads
        self.config = config
        self.tokenizer = tokenizer
        context = context or RunContext()
        self.features_fingerprint = context.features_fingerprint
        self.run_id = context.run_id
        self.requests = context.requests
        self.verify_content = context.verify_content
        self.transcribe = context.transcribe
        self.hashed_files = 0
        self.hashed_bytes = 0

    def extract(self, record: ManifestRecord, known: Optional[KnownSample] = None) -> Iterator[TableRow]:
        """Yield every row of ``record`` (the ``samples`` row after its features), then its encoder items, then
        its speech items (when transcribing).

        ``known``: what the cache holds for the sample (``None``: compute it). Never raises for bad input.
        An unchanged sample whose text came from its transcript and lacks the text encoder's embedding is
        recomputed whole (re-transcribed): only the transcript can give its text again.
        """
        state = SampleState(record, speech_tracks={} if self.transcribe else None)
        if record.error is not None:
            yield state.error_row(Stage.MANIFEST, record.error.kind, record.error.message, None)
            yield state.samples_row(features_fingerprint=self.features_fingerprint, run_id=self.run_id)
            return
        readable, failures = self._check_files(state)
        unchanged_by = self._unchanged_by(state, known)  # an unreadable file has no identity: its state is compared too
        missing = known.missing_embeddings({m: request.fingerprint for m, request in self.requests.items()}) if unchanged_by else set()
        if unchanged_by and not (self.transcribe and "text" in missing and record.text is None):
            skipped = {"sample_id": record.sample_id, "manifest_row": record.manifest_row, "unchanged_by": unchanged_by}
            identity = state.file_identity()
            if unchanged_by == UNCHANGED_BY_CONTENT and identity != known.file_identity:
                skipped["file_identity"] = identity  # touched, not edited: recorded, so that the next run need not hash
            yield SKIPPED_TABLE, skipped
            if missing:
                state.speech_tracks = None  # re-embedding: no transcript is needed
                yield from self._reembed(state, readable, missing)
            return
        yield from failures
        steps = self._steps()
        for modality, uri in readable.items():
            yield from self._run_step(steps[modality], uri, state, stage=modality)
        yield from self._speech_failures(state)
        yield from self._inline_embeddings(state)  # before the samples row, which counts their failures
        yield state.samples_row(features_fingerprint=self.features_fingerprint, run_id=self.run_id)
        yield from self._encoder_items(state)
        yield from self._speech_items(state)

    def _speech_failures(self, state: SampleState) -> Iterator[TableRow]:
        """An ``errors`` row (stage ``asr``) per sound track that could not be decoded, so has no transcript."""
        for source, track in sorted((state.speech_tracks or {}).items()):
            if track.failure is not None:
                yield state.error_row(Stage.ASR, ErrorKind.DECODE_ERROR, f"no transcript of the {source} track: {track.failure}",
                                      state.record.uris().get(source))

    def _speech_items(self, state: SampleState) -> Iterator[TableRow]:
        """One ``_encode/speech`` item per decoded sound track (its samples at 16 kHz), handed over as made; the
        audio file's track, else the video's, is ``as_text`` when the sample has no text file."""
        tracks = state.speech_tracks or {}
        decoded = [source for source in ("audio", "video") if source in tracks and tracks[source].failure is None]
        text_track = decoded[0] if decoded and state.record.text is None else None
        for source in decoded:
            track = tracks.pop(source)
            yield encode_table("speech"), {
                "sample_id": state.record.sample_id, "manifest_row": state.record.manifest_row, "source": source,
                "uri": state.record.uris().get(source), "as_text": source == text_track, "audio": track.audio(),
            }

    def _unchanged_by(self, state: SampleState, known: Optional[KnownSample]) -> Optional[str]:
        """``metadata`` or ``content`` when the cache holds this sample as it is now (what told), else ``None``.

        Files are read to hash their content only when their identities differ from the cached ones (new
        samples included) or under ``verify_content``; otherwise the cached hash still holds. Either way
        ``state`` keeps the hash, so that a recomputed sample records it.
        """
        same_files = known is not None and known.file_identity is not None and known.file_identity == state.file_identity()
        if same_files and not self.verify_content:
            state.known_content_hash = known.content_hash
        else:
            self._hash_all(state)
        if not same_row_and_config(state.record, known):
            return None
        if same_files and not self.verify_content:
            return UNCHANGED_BY_METADATA
        return UNCHANGED_BY_CONTENT if known.content_hash and known.content_hash == state.content_hash() else None

    def _hash_all(self, state: SampleState) -> None:
        """Hash every file of the sample not hashed yet (a file that cannot be read stays unhashed)."""
        for modality, uri in state.record.uris().items():
            if modality in state.file_hashes or modality not in state.identities:
                continue
            try:
                state.file_hashes[modality] = media_io.sha256_of(uri)
            except Exception as error:  # read again by its step, which records the failure
                logger.warning("cannot hash %s (%s): the sample is recomputed", uri, error)
                continue
            self.hashed_files += 1
            self.hashed_bytes += media_io.identity_size(state.identities[modality])

    def _check_files(self, state: SampleState) -> tuple[dict[str, str], list[TableRow]]:
        """Check each file and take its identity; returns the readable ``{modality: uri}`` and error rows for the others."""
        readable, failures = {}, []
        for modality, uri in state.record.uris().items():
            try:
                state.identities[modality] = media_io.file_identity(uri)
                readable[modality] = uri
            except SampleFailure as failure:
                failures.append(state.error_row(failure.stage, failure.kind, failure.message, uri))
            except Exception as error:  # a bug or an unforeseen input: recorded, never fatal
                logger.exception("unexpected failure reading %s", uri)
                failures.append(state.error_row(Stage.READ, ErrorKind.INTERNAL, f"{type(error).__name__}: {error}", uri))
        return readable, failures

    def _steps(self) -> dict[str, Step]:
        return {"video": self._video, "audio": self._audio_file, "text": self._text}

    def _run_step(self, step: Step, uri: str, state: SampleState, *, stage: str) -> Iterator[TableRow]:
        try:
            with media_io.local_copy(uri) as path:
                yield from step(uri, path, state)
        except SampleFailure as failure:
            yield state.error_row(failure.stage, failure.kind, failure.message, uri)
        except Exception as error:  # a bug or an unforeseen input: recorded, never fatal
            logger.exception("unexpected failure on %s (%s)", state.record.sample_id, uri)
            yield state.error_row(stage, ErrorKind.INTERNAL, f"{type(error).__name__}: {error}", uri)

    def _reembed(self, state: SampleState, readable: dict[str, str], missing: set[str]) -> Iterator[TableRow]:
        """Decode only what the missing encoders need; rows of this pass are not cached again (they are already)."""
        for modality in sorted(missing):
            if modality == "audio" and "audio" not in readable:
                uri, step = readable.get("video"), self._video_sound_track  # the sound came from the video
            else:
                uri, step = readable.get(modality), self._steps()[modality]
            if uri is None:
                continue
            for table, row in self._run_step(step, uri, state, stage=modality):
                if table == "errors":
                    logger.warning("re-embedding %s: %s", state.record.sample_id, row["message"])
        yield from self._inline_embeddings(state, missing)
        yield from self._encoder_items(state, missing)

    def _inline_embeddings(self, state: SampleState, modalities: Optional[set[str]] = None) -> Iterator[TableRow]:
        """The rows of the inline encoders (``EncodeRequest.inline``) of ``modalities`` (default all): an embedding
        row per item, or an ``errors`` row, counted in the sample's ``n_errors``."""
        for modality, request in self.requests.items():
            if request.inline is None or (modalities is not None and modality not in modalities):
                continue
            for item in self._items(state, modality, request):
                for table, row in request.inline.rows(item):
                    state.n_errors += table == "errors"  # an encoder failure, never a warning
                    yield table, row

    def _encoder_items(self, state: SampleState, modalities: Optional[set[str]] = None) -> Iterator[TableRow]:
        """The ``_encode/<modality>`` items of the encoders run by ``RunInference``, of ``modalities`` (default all)."""
        for modality, request in self.requests.items():
            if request.inline is None and (modalities is None or modality in modalities):
                yield from ((encode_table(modality), item) for item in self._items(state, modality, request))

    def _items(self, state: SampleState, modality: str, request: EncodeRequest) -> Iterator[dict[str, Any]]:
        """The items of ``modality``'s encoder: one per sample; audio: one per window (``AudioEncoderInput``), each
        carrying a ``window`` dict, or one per stream. Audio items are handed over as they are yielded (not kept)."""
        if modality == "audio" and "audio" not in state.payloads:
            audio = state.audio_payloads.get("audio") or state.audio_payloads.get("video")
            if audio is not None:
                state.payloads["audio"] = audio
        payload = state.payloads.get(modality)
        if payload is not None:
            pairs = payload["items"] if modality == "audio" else [(payload, None)]
            while pairs:
                fields, window = pairs.pop(0)
                item = {"sample_id": state.record.sample_id, "manifest_row": state.record.manifest_row,
                        "payload": {k: v for k, v in fields.items() if k in request.needs}}
                if window is not None:
                    item["window"] = window
                yield item

    def _video(self, uri: str, path: str, state: SampleState) -> Iterator[TableRow]:
        # One decode pass: frames rows and the sound track's audio rows (each stream's failure is its own error row).
        yield from video_file_rows(self.config, self.requests, uri, path, state, threads=self.decode_threads)

    def _video_sound_track(self, uri: str, path: str, state: SampleState) -> Iterator[TableRow]:
        yield from self._audio_stream(path, state, source="video", require_stream=False, feed_encoder=True)

    def _audio_file(self, uri: str, path: str, state: SampleState) -> Iterator[TableRow]:
        yield from self._audio_stream(path, state, source="audio", require_stream=True)

    def _audio_stream(self, path: str, state: SampleState, *, source: str, require_stream: bool,
                      feed_encoder: Optional[bool] = None) -> Iterator[TableRow]:
        """MFCC rows of one audio stream, decoded and analysed window by window (memory does not grow with its
        length); its corrupt packets are skipped and counted in ``n_skipped_packets``.

        ``feed_encoder``: gather the stream's audio-encoder items; by default the audio file's, or the sound
        track's of a sample without a readable audio file (so only one track's items are ever held; the same
        choice as re-embedding makes).
        """
        audio_config = self.config.audio
        decoder = MonoDecoder(path, sample_rate=audio_config.sample_rate, require_stream=require_stream)
        chunks = decoder.chunks()
        speech = state.speech_track(source, audio_config.sample_rate)
        if speech is not None:
            chunks = speech.tap(chunks)
        try:
            first = next(chunks, None)
            if first is None and not require_stream:
                return  # a video without sound has no audio rows
            if feed_encoder is None:
                feed_encoder = source == "audio" or "audio" not in state.identities
            needs = self.requests["audio"].needs if feed_encoder and "audio" in self.requests else frozenset()
            inputs = AudioEncoderInput(needs, window_s=audio_config.window_s, n_mfcc=audio_config.n_mfcc)
            stream = MfccStream(audio_config, keep_samples=inputs.keeps_samples)
            for window in stream.windows(_prepend(first, chunks)):
                state.n_audio_windows += 1
                inputs.add(window)
                yield state.feature_row("audio", audio_row(window, source=source, sample_rate=audio_config.sample_rate))
        finally:
            state.n_skipped_packets += decoder.n_skipped_packets
        state.audio_duration_s = stream.duration_s
        if needs:
            state.audio_payloads[source] = {"items": inputs.items()}

    def _text(self, uri: str, path: str, state: SampleState) -> Iterator[TableRow]:
        """The text row of the file's first ``max_text_bytes`` bytes (a warning row when there were more)."""
        limit = self.config.text.max_text_bytes
        raw = read_prefix(path, max_bytes=limit)
        text = decode_utf8(raw.data, uri=uri, truncated=raw.truncated)
        if raw.truncated:
            message = (f"text is {raw.n_bytes} bytes, longer than --max-text-bytes {limit}: only its first "
                       f"{len(text.encode('utf-8'))} bytes are tokenised and stored: {uri}")
            logger.warning("%s: %s", state.record.sample_id, message)
            yield state.error_row(Stage.TEXT, ErrorKind.TEXT_TOO_LONG, message, uri)
        tokens = self.tokenizer.encode(text)
        state.n_tokens = len(tokens.ids)
        state.text_from_file = True
        state.payloads["text"] = {"text": tokens.kept_text}
        yield state.feature_row(
            "text",
            {"text": text, "token_ids": tokens.ids, "n_tokens_full": tokens.n_full, "truncated": tokens.truncated or raw.truncated},
        )


def _prepend(first: Optional[np.ndarray], rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """``first`` (when not ``None``), then ``rest``."""
    if first is not None:
        yield first
    yield from rest
