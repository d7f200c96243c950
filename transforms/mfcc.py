"""MFCCs of a stream of audio chunks, computed window by window with bounded memory.

Frames are analysed without centre padding: frame ``k`` covers samples
``[k*hop, k*hop + n_fft)`` of the stream, and log-mel energies use a fixed
reference (``power_to_db(ref=1.0, top_db=None)``) rather than the window's
maximum. Both make every frame a function of its own samples only, so the
result is the same however the stream is cut into windows or chunks.

The analysis is librosa's (``feature.mfcc``, Slaney mel filters), written with
numpy and ``scipy.fft`` so that a worker does not import librosa's feature
module (about 2 s); ``tests/transforms/test_audio.py`` checks the agreement.
The mel projection runs with BLAS limited to one thread: a multi-threaded
matrix product rounds differently, and worker processes of distributed
runners (Dask pins BLAS to one thread) must produce bit-identical features.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np
from threadpoolctl import ThreadpoolController

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
        samples: when the stream keeps them, the window's own samples, float32 ``(n,)``: the stream's
            samples from ``start_s`` to the next window's ``start_s`` (the stream's end for the last one);
            consecutive windows' samples do not overlap and together are the stream (less a last piece
            shorter than one analysis frame, which no window covers).
    """

    window_index: int
    start_s: float
    end_s: float
    frame_times_s: np.ndarray
    mfcc: np.ndarray
    samples: Optional[np.ndarray] = None


def mfcc_frames(samples: np.ndarray, *, config: AudioConfig) -> np.ndarray:
    """MFCCs of every full analysis frame of ``samples`` (mono, ``config.sample_rate``).

    Returns:
        float32 array of shape ``(n_frames, n_mfcc)``, with
        ``n_frames = 1 + (len(samples) - n_fft) // hop_length`` (0 when shorter than ``n_fft``).
    """
    if len(samples) < config.n_fft:
        return np.zeros((0, config.n_mfcc), dtype=np.float32)
    with single_threaded_blas():
        return _mfcc_single_threaded(samples, config=config)


def single_threaded_blas() -> Any:
    """A context in which this process's BLAS runs one thread (restored after). ``mfcc_frames`` enters one per call;
    samples extracted side by side in threads enter one around them all, so that one thread's leaving its own never
    gives BLAS its threads back while another computes."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's thread pools, found once (``threadpool_limits`` scans the loaded libraries at every call: about
    6 ms in a worker that has loaded torch and OpenCV, more than the MFCCs of a short clip)."""
    return ThreadpoolController()


def _mfcc_single_threaded(samples: np.ndarray, *, config: AudioConfig) -> np.ndarray:
    """librosa's ``feature.mfcc(y, center=False)`` with ``power_to_db(ref=1.0, amin=1e-10, top_db=None)`` of a
    float32 signal, in numpy and ``scipy.fft`` (importing librosa's feature module costs a worker about 2 s)."""
    import scipy.fft  # 0.2 s on first use; only workers that meet audio pay it

    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(samples, dtype=np.float32), config.n_fft)[:: config.hop_length]
    spectrum = scipy.fft.rfft(frames * _hann(config.n_fft), axis=1)  # (n_frames, 1 + n_fft // 2), complex64
    power = spectrum.real**2 + spectrum.imag**2
    log_mel = 10.0 * np.log10(np.maximum(power @ _mel_basis(config.sample_rate, config.n_fft, config.n_mels).T, 1e-10))
    # A copy of its own: the kept coefficients are a view of the DCT of all n_mels bands, which it would keep alive.
    return np.ascontiguousarray(scipy.fft.dct(log_mel, type=2, norm="ortho", axis=1)[:, : config.n_mfcc], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _hann(n_fft: int) -> np.ndarray:
    """The periodic Hann window of ``n_fft`` samples (scipy's ``get_window("hann", n_fft)``), float32 ``(n_fft,)``."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz (200/3 Hz a mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_part = hz >= 1000.0
    mel[log_part] = 15.0 + np.log(hz[log_part] / 1000.0) / (np.log(6.4) / 27.0)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of ``_hz_to_mel``."""
    hz = mel * (200.0 / 3)
    log_part = mel >= 15.0
    hz[log_part] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_part] - 15.0))
    return hz


@functools.lru_cache(maxsize=4)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's ``filters.mel`` (0 Hz to Nyquist, Slaney scale and area normalisation): float32 ``(n_mels, 1 + n_fft // 2)``."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2))
    widths = np.diff(band_hz)
    ramps = band_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (band_hz[2:] - band_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class MfccStream:
    """Turns chunks of mono audio into ``MfccWindow`` s of ``config.frames_per_window`` frames.

    Memory holds at most one window of samples (plus one chunk). After
    iteration, ``duration_s`` is the length of the stream in seconds. Use one
    instance per stream: pull (``windows(chunks)``) or push (``feed`` each
    chunk, then ``finish``).

    Args:
        config: the analysis and window length.
        keep_samples: also hand each window's own samples (``MfccWindow.samples``, a copy).
    """

    def __init__(self, config: AudioConfig, *, keep_samples: bool = False) -> None:
        self.config = config
        self.keep_samples = keep_samples
        self.duration_s = 0.0
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._offset = 0  # stream index of the first pending sample
        self._total = 0
        self._index = 0

    def windows(self, chunks: Iterable[np.ndarray]) -> Iterator[MfccWindow]:
        """Yield windows in order; the last one may be shorter (``feed`` each chunk, then ``finish``).

        Raises:
            SampleFailure: (``audio``, ``too_short``) when the stream is shorter than one analysis frame.
        """
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.finish()

    def feed(self, chunk: np.ndarray) -> Iterator[MfccWindow]:
        """Take the next chunk of the stream, shape ``(n,)``; yield the windows it completes (push-style use,
        e.g. by a decoder that interleaves audio with video frames). The same windows as ``windows``."""
        cfg = self.config
        window_samples = (cfg.frames_per_window - 1) * cfg.hop_length + cfg.n_fft
        step = cfg.frames_per_window * cfg.hop_length
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        self._total += len(chunk)
        if self._pending_len < window_samples:
            return
        buffer = np.concatenate(self._pending)
        while len(buffer) >= window_samples:
            yield self._window(self._index, self._offset, buffer[:window_samples], own=buffer[:step])
            buffer = buffer[step:]
            self._offset += step
            self._index += 1
        self._pending, self._pending_len = [buffer], len(buffer)

    def finish(self) -> Iterator[MfccWindow]:
        """Yield the last (shorter) window once the stream has ended; sets ``duration_s``.

        Raises:
            SampleFailure: (``audio``, ``too_short``) when the stream is shorter than one analysis frame.
        """
        cfg = self.config
        self.duration_s = self._total / cfg.sample_rate
        tail = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.float32)
        self._pending, self._pending_len = [], 0
        if len(tail) >= cfg.n_fft:
            yield self._window(self._index, self._offset, tail, own=tail)
            self._index += 1
        if self._index == 0:
            raise SampleFailure(
                Stage.AUDIO,
                ErrorKind.TOO_SHORT,
                f"audio is {self._total} samples ({self.duration_s * 1000:.1f} ms) long, shorter than one MFCC "
                f"window of {cfg.n_fft} samples ({cfg.n_fft / cfg.sample_rate * 1000:.1f} ms)",
            )

    def _window(self, index: int, offset: int, samples: np.ndarray, *, own: np.ndarray) -> MfccWindow:
        """The window ``index`` whose analysis covers ``samples`` (from stream sample ``offset``); ``own``: its own samples."""
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
            samples=np.array(own, dtype=np.float32) if self.keep_samples else None,  # a copy: a view would hold the whole buffer
        )


class MfccMoments:
    """Running count, mean and sum of squared deviations of MFCC frames, and of their first differences.

    Fed the windows of one stream in order (``add``), it keeps ``O(n_mfcc)``
    numbers whatever the stream's length, merged window by window (Chan et
    al.'s pairwise update, in float64); the difference between the last frame
    of a window and the first of the next counts like any other.
    """

    def __init__(self, n_mfcc: int) -> None:
        self.count = np.zeros(2, np.float64)  # frames, differences
        self.mean = np.zeros((2, n_mfcc), np.float64)
        self.m2 = np.zeros((2, n_mfcc), np.float64)
        self._last: Optional[np.ndarray] = None

    def add(self, mfcc: np.ndarray) -> None:
        """Take the next frames of the stream, ``(n_frames, n_mfcc)``."""
        frames = np.asarray(mfcc, np.float64)
        if not len(frames):
            return
        joined = frames if self._last is None else np.concatenate([self._last[None], frames])
        self._merge(0, frames)
        self._merge(1, np.diff(joined, axis=0))
        self._last = frames[-1]

    def _merge(self, row: int, values: np.ndarray) -> None:
        n_new = len(values)
        if not n_new:
            return
        mean_new = values.mean(axis=0)
        m2_new = ((values - mean_new) ** 2).sum(axis=0)
        n_old = self.count[row]
        total = n_old + n_new
        delta = mean_new - self.mean[row]
        self.mean[row] += delta * (n_new / total)
        self.m2[row] += m2_new + delta**2 * (n_old * n_new / total)
        self.count[row] = total

    def payload(self) -> dict[str, np.ndarray]:
        """``{"count": (2,), "mean": (2, n_mfcc), "m2": (2, n_mfcc)}``, float64; row 0: frames, row 1: differences."""
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy()}


WINDOW_FIELDS = ("waveform", "mfcc")
"""Payload fields an audio encoder is given window by window (one encoder item per window)."""

SUMMARY_FIELDS = ("mfcc_moments",)
"""Payload fields summarising a whole stream in bounded size (one item per stream, or joined to each window's)."""


class AudioEncoderInput:
    """The encoder items of one audio stream, gathered window by window.

    An encoder that needs ``waveform`` or ``mfcc`` gets one item per stored
    window (``window_s`` of audio: bounded, whatever the stream's length); a
    last window shorter than half a window is joined to the one before, so a
    window holds between half and one and a half ``window_s`` (or the whole of
    a shorter stream). An encoder that needs only ``mfcc_moments`` gets one
    small item per stream.

    Args:
        needs: payload fields the encoder asked for.
        window_s: the stored windows' length in seconds.
    """

    def __init__(self, needs: frozenset[str], *, window_s: float, n_mfcc: int) -> None:
        self.needs = needs
        self.window_s = window_s
        self.keeps_samples = "waveform" in needs
        self._windows: list[dict[str, Any]] = []
        self._moments = MfccMoments(n_mfcc) if "mfcc_moments" in needs else None

    @property
    def windowed(self) -> bool:
        return any(name in self.needs for name in WINDOW_FIELDS)

    def add(self, window: MfccWindow) -> None:
        """Take the next window of the stream (``window.samples`` set when ``keeps_samples``)."""
        if self._moments is not None:
            self._moments.add(window.mfcc)
        if not self.windowed:
            return
        fields: dict[str, Any] = {"start_s": window.start_s, "end_s": window.end_s}
        if "mfcc" in self.needs:
            fields["mfcc"] = window.mfcc
        if "waveform" in self.needs:
            fields["waveform"] = window.samples
        self._windows.append(fields)

    def items(self) -> list[tuple[dict[str, Any], Optional[dict[str, Any]]]]:
        """``(payload, window)`` pairs, in stream order; ``window`` is ``None`` for a per-stream item, else
        ``{"index", "count", "start_s", "end_s", "weight_s"}`` (``weight_s``: the window's own seconds of audio,
        up to the next window's start).

        The gathered windows are handed over: a second call returns no windows.
        """
        summary = {"mfcc_moments": self._moments.payload()} if self._moments is not None else {}
        if not self.windowed:
            return [(summary, None)]
        windows, self._windows = _join_short_tail(self._windows, self.window_s), []
        # A window's own seconds: up to the next one's start (its analysis frames reach a little further).
        ends = [fields["start_s"] for fields in windows[1:]] + [windows[-1]["end_s"]] if windows else []
        return [
            ({**{k: v for k, v in fields.items() if k in self.needs}, **summary},
             {"index": index, "count": len(windows), "start_s": fields["start_s"], "end_s": fields["end_s"],
              "weight_s": end - fields["start_s"]})
            for index, (fields, end) in enumerate(zip(windows, ends))
        ]


def _join_short_tail(windows: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    """``windows`` with a last one shorter than ``window_s / 2`` joined to the one before."""
    if len(windows) < 2 or windows[-1]["end_s"] - windows[-1]["start_s"] >= window_s / 2:
        return windows
    previous, tail = windows[-2], windows[-1]
    joined = {"start_s": previous["start_s"], "end_s": tail["end_s"]}
    for name in WINDOW_FIELDS:
        if name in previous:
            joined[name] = np.concatenate([previous[name], tail[name]])
    return [*windows[:-2], joined]
