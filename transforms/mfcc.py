"""MFCCs of a stream of audio chunks, computed window by window with bounded memory.

Frames are analysed without centre padding: frame ``k`` covers samples
``[k*hop, k*hop + n_fft)`` of the stream, and log-mel energies use a fixed
reference (``power_to_db(ref=1.0, top_db=None)``) rather than the window's
maximum. Both make every frame a function of its own samples only, so the
result is the same however the stream is cut into windows or chunks.

The mel projection runs with BLAS limited to one thread: a multi-threaded
matrix product rounds differently, and worker processes of distributed
runners (Dask pins BLAS to one thread) must produce bit-identical features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import librosa
import numpy as np
from threadpoolctl import threadpool_limits

from schemas.config import AudioConfig
from schemas.errors import ErrorKind, SampleFailure, Stage


@dataclass(frozen=True)
class MfccWindow:
    """MFCCs of one stored window.

    Attributes:
        window_index: rank of the window in the stream.
        start_s, end_s: first and last sample covered by the window's frames, in seconds.
        frame_times_s: centre of each frame in seconds, shape ``(n_frames,)``.
        mfcc: float32, shape ``(n_frames, n_mfcc)``.
    """

    window_index: int
    start_s: float
    end_s: float
    frame_times_s: np.ndarray
    mfcc: np.ndarray


def mfcc_frames(samples: np.ndarray, *, config: AudioConfig) -> np.ndarray:
    """MFCCs of every full analysis frame of ``samples`` (mono, ``config.sample_rate``).

    Returns:
        float32 array of shape ``(n_frames, n_mfcc)``, with
        ``n_frames = 1 + (len(samples) - n_fft) // hop_length`` (0 when shorter than ``n_fft``).
    """
    if len(samples) < config.n_fft:
        return np.zeros((0, config.n_mfcc), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        return _mfcc_single_threaded(samples, config=config)


def _mfcc_single_threaded(samples: np.ndarray, *, config: AudioConfig) -> np.ndarray:
    mel_power = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(samples, dtype=np.float32),
        sr=config.sample_rate,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        center=False,
        power=2.0,
    )
    log_mel = librosa.power_to_db(mel_power, ref=1.0, amin=1e-10, top_db=None)
    return librosa.feature.mfcc(S=log_mel, n_mfcc=config.n_mfcc).T.astype(np.float32, copy=False)


class MfccStream:
    """Turns chunks of mono audio into ``MfccWindow`` s of ``config.frames_per_window`` frames.

    Memory holds at most one window of samples (plus one chunk). After
    iteration, ``duration_s`` is the length of the stream in seconds.
    """

    def __init__(self, config: AudioConfig) -> None:
        self.config = config
        self.duration_s = 0.0

    def windows(self, chunks: Iterable[np.ndarray]) -> Iterator[MfccWindow]:
        """Yield windows in order; the last one may be shorter.

        Raises:
            SampleFailure: (``audio``, ``too_short``) when the stream is shorter than one analysis frame.
        """
        cfg = self.config
        frames_per_window = cfg.frames_per_window
        window_samples = (frames_per_window - 1) * cfg.hop_length + cfg.n_fft
        step = frames_per_window * cfg.hop_length
        pending: list[np.ndarray] = []
        pending_len = 0
        offset = 0  # stream index of the first pending sample
        total = 0
        index = 0
        for chunk in chunks:
            pending.append(chunk)
            pending_len += len(chunk)
            total += len(chunk)
            if pending_len < window_samples:
                continue
            buffer = np.concatenate(pending)
            while len(buffer) >= window_samples:
                yield self._window(index, offset, buffer[:window_samples])
                buffer = buffer[step:]
                offset += step
                index += 1
            pending, pending_len = [buffer], len(buffer)
        self.duration_s = total / cfg.sample_rate
        tail = np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)
        if len(tail) >= cfg.n_fft:
            yield self._window(index, offset, tail)
            index += 1
        if index == 0:
            raise SampleFailure(
                Stage.AUDIO,
                ErrorKind.TOO_SHORT,
                f"audio is {total} samples ({self.duration_s * 1000:.1f} ms) long, shorter than one MFCC "
                f"window of {cfg.n_fft} samples ({cfg.n_fft / cfg.sample_rate * 1000:.1f} ms)",
            )

    def _window(self, index: int, offset: int, samples: np.ndarray) -> MfccWindow:
        cfg = self.config
        mfcc = mfcc_frames(samples, config=cfg)
        starts = offset + np.arange(len(mfcc)) * cfg.hop_length
        last_end = starts[-1] + cfg.n_fft
        return MfccWindow(
            window_index=index,
            start_s=offset / cfg.sample_rate,
            end_s=float(last_end) / cfg.sample_rate,
            frame_times_s=(starts + cfg.n_fft / 2) / cfg.sample_rate,
            mfcc=mfcc,
        )
