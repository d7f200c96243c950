"""Audio decoding with PyAV: any container/codec FFmpeg reads, down-mixed to mono and resampled.

A packet the decoder rejects (a corrupt or incomplete frame) is skipped and
counted, and decoding goes on with the next one, as the ``ffmpeg`` command
line does: one bad packet in a long track costs its own few milliseconds of
sound, not the track.

A 16-bit mono WAV already at the target rate is read with ``soundfile`` instead:
the same samples (an int16 over 32768 is exact in float32, as FFmpeg's
conversion gives; a truncated file ends where its data ends, in both), at
0.3 ms for 5 s against 3.3 ms through PyAV's demuxer, decoder and resampler.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import av
import numpy as np
import soundfile

from schemas.errors import ErrorKind, SampleFailure, Stage

logger = logging.getLogger(__name__)


def decode_or_skip(packet: av.Packet, *, path: str, what: str) -> Optional[list]:
    """The decoded frames of ``packet``, or ``None`` when the decoder rejects it (a corrupt packet: logged at
    DEBUG, and the caller counts it and goes on, as ffmpeg does). ``what``: the stream's kind, for the log."""
    try:
        return packet.decode()
    except av.FFmpegError as error:
        logger.debug("skipping a corrupt %s packet at byte %s of %s: %s", what, packet.pos, path, error)
        return None


_HEADER_PROBE = {"probesize": "4096"}
"""FFmpeg's probe of a WAV file: its header states everything (the default probe reads and analyses a megabyte of
samples, 4 ms a file, more than decoding a short clip)."""


_WAV_BLOCK = 1 << 16
"""Samples per chunk of a WAV read with ``soundfile`` (256 KB of float32)."""


def _is_plain_wav(path: str, sample_rate: int) -> bool:
    """Whether ``path`` is a 16-bit PCM mono WAV at ``sample_rate`` Hz (which ``soundfile`` reads as PyAV would)."""
    if not path.lower().endswith(".wav"):
        return False
    try:
        info = soundfile.info(path)
    except (soundfile.SoundFileError, OSError):
        return False  # PyAV opens it, and says what is wrong
    return info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1 and info.samplerate == sample_rate


def _open_options(path: str) -> dict[str, str]:
    """``av.open`` options for ``path``: the short probe for ``.wav``, FFmpeg's defaults for every other format."""
    return _HEADER_PROBE if path.lower().endswith(".wav") else {}


class MonoDecoder:
    """Decodes the first audio stream of a file to mono float32 chunks at ``sample_rate`` Hz.

    After ``chunks()`` has been iterated, ``n_skipped_packets`` is the number
    of packets the decoder rejected (skipped, the rest decoded) and
    ``n_packets`` the number it was given.

    Args:
        path: a local file.
        sample_rate: target rate in Hz.
        require_stream: when False a file without an audio stream yields
            nothing (a silent video); when True it raises ``no_stream``.
    """

    def __init__(self, path: str, *, sample_rate: int, require_stream: bool = True) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.require_stream = require_stream
        self.n_packets = 0
        self.n_skipped_packets = 0

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield the stream as chunks of shape ``(n,)``, values in about ``[-1, 1]``.

        Their concatenation is the whole stream (less the skipped packets).
        Resampling is stateful across chunks, so the result does not depend on
        how the decoder cuts packets. Memory holds one decoded frame at a time.

        Raises:
            SampleFailure: stage ``audio``, kind ``unreadable`` (not a media
                container), ``no_stream``, or ``decode_error`` (the container
                cannot be read past some point, or no packet at all decodes).
        """
        if _is_plain_wav(self.path, self.sample_rate):
            yield from self._plain_wav_chunks()
            return
        try:
            container = av.open(self.path, options=_open_options(self.path))
        except (av.FFmpegError, UnicodeDecodeError) as error:
            raise SampleFailure(Stage.AUDIO, ErrorKind.UNREADABLE, f"not a readable media file ({error}): {self.path}") from error
        with container:
            if not container.streams.audio:
                if self.require_stream:
                    raise SampleFailure(Stage.AUDIO, ErrorKind.NO_STREAM, f"the file holds no audio stream: {self.path}")
                return
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
            try:
                for frame in self._frames(container, container.streams.audio[0]):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1)
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
            except av.FFmpegError as error:
                raise SampleFailure(Stage.AUDIO, ErrorKind.DECODE_ERROR, f"audio decoding failed ({error}): {self.path}") from error
        self._report()

    def _plain_wav_chunks(self) -> Iterator[np.ndarray]:
        """The samples of a file ``_is_plain_wav`` accepts, in chunks of ``_WAV_BLOCK`` (see the module docstring)."""
        try:
            for block in soundfile.blocks(self.path, blocksize=_WAV_BLOCK, dtype="float32"):
                yield block.reshape(-1)
        except soundfile.SoundFileError as error:
            raise SampleFailure(Stage.AUDIO, ErrorKind.DECODE_ERROR, f"audio decoding failed ({error}): {self.path}") from error

    def _frames(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> Iterator[av.AudioFrame]:
        """Decoded frames of ``stream``; a packet the decoder rejects is counted and skipped."""
        decoded_any = False
        for packet in container.demux(stream):
            if packet.size:
                self.n_packets += 1
            frames = decode_or_skip(packet, path=self.path, what="audio")
            if frames is None:
                self.n_skipped_packets += 1
                continue
            for frame in frames:
                decoded_any = True
                yield frame
        if not decoded_any and self.n_skipped_packets:
            raise SampleFailure(
                Stage.AUDIO,
                ErrorKind.DECODE_ERROR,
                f"none of the {self.n_skipped_packets} packets of the audio stream could be decoded: {self.path}",
            )

    def _report(self) -> None:
        if self.n_skipped_packets:
            logger.warning(
                "skipped %d corrupt audio packet(s) of %d in %s; the rest was decoded",
                self.n_skipped_packets, self.n_packets, self.path,
            )


def decode_mono(path: str, *, sample_rate: int, require_stream: bool = True) -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``path`` as mono float32 chunks at ``sample_rate`` Hz (see ``MonoDecoder``).

    Corrupt packets are skipped; use ``MonoDecoder`` to learn how many.

    Raises:
        SampleFailure: as ``MonoDecoder.chunks``.
    """
    yield from MonoDecoder(path, sample_rate=sample_rate, require_stream=require_stream).chunks()
