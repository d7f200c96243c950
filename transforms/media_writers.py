"""Writing small media files with PyAV (any FFmpeg container/codec) and WAV with soundfile.

Used by the sample corpus and by the tests, which generate all their media.
OpenCV here cannot write H.264 (``avc1`` fails), so video goes through PyAV's libx264.
"""
from __future__ import annotations

from typing import Iterable, Optional

import av
import numpy as np
import soundfile

_DEFAULT_AUDIO_FRAME = 1024


def _encode_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, audio: np.ndarray, sample_rate: int) -> None:
    samples = np.asarray(audio, dtype=np.float32)
    planar = samples[None, :] if samples.ndim == 1 else np.ascontiguousarray(samples.T)
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    target_format = stream.codec_context.codec.audio_formats[0].name
    convert = av.AudioResampler(format=target_format, layout=layout, rate=sample_rate)
    frame_size = stream.codec_context.frame_size or _DEFAULT_AUDIO_FRAME
    pts = 0
    for start in range(0, planar.shape[1], frame_size):
        chunk = np.ascontiguousarray(planar[:, start : start + frame_size])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for converted in convert.resample(frame):
            converted.pts = pts
            pts += converted.samples
            for packet in stream.encode(converted):
                container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_media(
    path: str,
    *,
    frames: Optional[Iterable[np.ndarray]] = None,
    width: int = 0,
    height: int = 0,
    fps: int = 10,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    gop_size: Optional[int] = None,
    video_options: Optional[dict[str, str]] = None,
) -> None:
    """Write a media file with a video stream, an audio stream, or both; the container follows ``path``'s extension.

    Args:
        frames: RGB ``uint8`` arrays of shape ``(height, width, 3)`` (even sizes for H.264), or ``None``.
        audio: float32 samples in ``[-1, 1]``, shape ``(n,)`` (mono) or ``(n, 2)`` (stereo), or ``None``.
        sample_rate: rate of ``audio`` in Hz (opus takes 8, 12, 16, 24 or 48 kHz).
        gop_size: at most this many frames between key frames (``None``: the codec's default, 250 for x264).
        video_options: encoder options, e.g. ``{"preset": "veryfast", "sc_threshold": "0"}`` (no scene-cut key
            frames: with ``gop_size`` the key frames then fall exactly every ``gop_size`` frames).
    """
    with av.open(path, mode="w") as container:
        video = None
        if frames is not None:
            video = container.add_stream(video_codec, rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            if gop_size is not None:
                video.codec_context.gop_size = gop_size
            if video_options:
                video.options = dict(video_options)
        sound = None
        if audio is not None:
            layout = "mono" if np.ndim(audio) == 1 else "stereo"
            sound = container.add_stream(audio_codec, rate=sample_rate, layout=layout)
        if video is not None:
            for image in frames:
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        if sound is not None:
            _encode_audio(container, sound, audio, sample_rate)


def write_mp4(
    path: str,
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: int = 10,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
) -> None:
    """H.264 video with, when ``audio`` is given, an AAC track (see ``write_media``)."""
    write_media(path, frames=frames, width=width, height=height, fps=fps, audio=audio, sample_rate=sample_rate)


def write_wav(path: str, samples: np.ndarray, *, sample_rate: int) -> None:
    """Write 16-bit PCM WAV. ``samples``: float in ``[-1, 1]``, shape ``(n,)`` (mono) or ``(n, channels)``."""
    soundfile.write(path, np.asarray(samples, dtype=np.float32), sample_rate, subtype="PCM_16")
