"""The ``ModelHandler`` of speech recognition: faster-whisper behind ``RunInference``.

Imported only when a run transcribes: Beam's ``apache_beam.ml.inference.base``
imports torch, and the model's load imports faster-whisper (CTranslate2,
onnxruntime). The model is loaded once per worker process (``RunInference``
shares it through Beam's ``Shared``), when the first batch arrives, so a
worker with nothing to transcribe (an unchanged rerun) never loads it.

Batching: faster-whisper has no API that decodes several recordings in one
call; a batch (cut by ``transforms.asr``) is transcribed recording after
recording, its model call amortised over the batch. On CUDA each recording's
30 s windows are decoded as one batch (``BatchedInferencePipeline``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from schemas.config import ASR_SAMPLE_RATE, SpeechConfig
from schemas.errors import ErrorKind, Stage
from transforms.embed_handler import LoadedEncoder
from transforms.speech import load_whisper, transcribe

logger = logging.getLogger(__name__)

Item = dict[str, Any]
"""A track to transcribe: ``{"sample_id", "manifest_row", "source", "uri", "as_text", "audio"}``, ``audio`` float32 16 kHz ``(n,)``."""
TableRow = tuple[str, dict[str, Any]]

TRANSCRIPT = "_transcript"
"""Pseudo-table of a handler result: the item's keys (less ``audio``) plus ``transcript`` (a ``Transcript``)."""


def resolve_asr_device(device: str) -> str:
    """``cpu`` or ``cuda`` for ``device`` (``auto``: CUDA when CTranslate2 sees a GPU).

    Raises:
        RuntimeError: ``cuda`` was asked for and CTranslate2 sees no CUDA device (no silent fallback).
    """
    if device == "cpu":
        return "cpu"
    import ctranslate2

    count = ctranslate2.get_cuda_device_count()
    if device == "cuda" and count == 0:
        raise RuntimeError("--device cuda: CTranslate2 sees no CUDA device for speech recognition; use --device cpu or auto")
    return "cuda" if count else "cpu"


class WhisperModelHandler(ModelHandler[Item, TableRow, LoadedEncoder]):
    """Transcribes each item of a batch; a recording the model fails on becomes an ``errors`` row (stage ``asr``),
    the rest of the batch is kept.

    Args:
        config: the model folder, language, VAD and beam width.
        device: ``auto``, ``cpu`` or ``cuda`` (resolved on the worker, where the model runs).
        cpu_threads: CTranslate2's threads on CPU (0: the worker's share of the cores, as the video decoder's).
        max_batch_size: recordings per batch; max_batch_s: seconds of audio per batch (a longer recording is a
            batch of its own).
    """

    def __init__(self, config: SpeechConfig, *, device: str = "auto", cpu_threads: int = 0, max_batch_size: int = 8,
                 max_batch_s: float = 240.0) -> None:
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.config = config
        self.device = device
        self.cpu_threads = cpu_threads
        self.max_batch_size = max_batch_size
        self.max_batch_s = max_batch_s

    def load_model(self) -> LoadedEncoder:
        """The Whisper model (and, on CUDA, its batched pipeline), loaded when the first batch needs it."""

        def load() -> tuple[Any, Any]:
            device = resolve_asr_device(self.device)
            logger.info("loading the speech model %s on %s", self.config.model, device)
            from schemas.config import decode_threads  # the worker's share of the cores (runner presets set it)

            model = load_whisper(self.config, device=device, cpu_threads=self.cpu_threads or decode_threads())
            if device != "cuda":
                return model, None
            from faster_whisper import BatchedInferencePipeline

            return model, BatchedInferencePipeline(model=model)

        return LoadedEncoder(load)

    def run_inference(self, batch: Sequence[Item], model: LoadedEncoder,
                      inference_args: Optional[dict[str, Any]] = None) -> list[TableRow]:
        """One row per item, in order: ``(TRANSCRIPT, ...)`` or an ``errors`` row. Counts ``asr_ms`` (time in here,
        the model's load included on a worker's first batch) and ``asr_audio_ms`` (audio transcribed)."""
        started = time.perf_counter()
        whisper, batched = model.model
        results = []
        for item in batch:
            meta = {key: value for key, value in item.items() if key != "audio"}
            try:
                transcript = transcribe(whisper, item["audio"], config=self.config, batched=batched)
            except Exception as error:  # one bad recording must not cost the others their transcripts
                logger.warning("speech recognition failed on %s (%s): %s", item["sample_id"], item["source"], error)
                beam.metrics.Metrics.counter("mmfeat", f"failures_{Stage.ASR}_{ErrorKind.ASR_FAILED}").inc()
                results.append(("errors", asr_error_row(item, ErrorKind.ASR_FAILED, f"{type(error).__name__}: {error}")))
                continue
            beam.metrics.Metrics.counter("mmfeat", "transcribed_tracks").inc()
            beam.metrics.Metrics.counter("mmfeat", "transcribed_words").inc(len(transcript.words))
            results.append((TRANSCRIPT, {**meta, "transcript": transcript}))
        beam.metrics.Metrics.counter("mmfeat", "asr_ms").inc(int(1000 * (time.perf_counter() - started)))
        beam.metrics.Metrics.counter("mmfeat", "asr_audio_ms").inc(int(1000 * sum(item_seconds(item) for item in batch)))
        return results

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        """The batch's size: its samples (RunInference reports it)."""
        return int(sum(len(item["audio"]) for item in batch))

    def get_metrics_namespace(self) -> str:
        return "mmfeat_asr"


def asr_error_row(item: dict[str, Any], kind: str, message: str) -> dict[str, Any]:
    """An ``errors`` row (stage ``asr``) for one track of ``item``'s sample."""
    return {"sample_id": item["sample_id"], "manifest_row": item["manifest_row"], "uri": item.get("uri"), "stage": Stage.ASR,
            "error_kind": kind, "message": f"speech recognition of the {item['source']} track: {message}"}


def item_seconds(item: Item) -> float:
    """Seconds of audio in ``item``."""
    return len(item["audio"]) / ASR_SAMPLE_RATE
