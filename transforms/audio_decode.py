"""Audio decoding with PyAV: any container/codec FFmpeg reads, down-mixed to mono and resampled."""
from __future__ import annotations

from typing import Iterator

import av
import numpy as np

from schemas.errors import ErrorKind, SampleFailure, Stage


def decode_mono(path: str, *, sample_rate: int, require_stream: bool = True) -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``path`` as mono float32 chunks at ``sample_rate`` Hz.

    Chunks have shape ``(n,)`` with values in about ``[-1, 1]``; their
    concatenation is the whole stream. Resampling is stateful across chunks,
    so the result does not depend on how the decoder cuts packets.

    Args:
        path: a local file.
        sample_rate: target rate in Hz.
        require_stream: when False a file without an audio stream yields
            nothing (a silent video); when True it raises ``no_stream``.

    Raises:
        SampleFailure: stage ``audio``, kind ``unreadable`` (not a media
            container), ``no_stream`` or ``decode_error`` (corrupt data mid-stream).
    """
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise SampleFailure(Stage.AUDIO, ErrorKind.UNREADABLE, f"not a readable media file ({error}): {path}") from error
    with container:
        if not container.streams.audio:
            if require_stream:
                raise SampleFailure(Stage.AUDIO, ErrorKind.NO_STREAM, f"the file holds no audio stream: {path}")
            return
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except av.FFmpegError as error:
            raise SampleFailure(Stage.AUDIO, ErrorKind.DECODE_ERROR, f"audio decoding failed ({error}): {path}") from error
