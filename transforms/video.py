"""Streaming frame sampling with OpenCV.

Every frame is ``grab()``-bed (demuxed and decoded by the backend) but only the
kept ones are ``retrieve()``-d, converted, resized and JPEG-encoded, so memory
holds one decoded frame at a time plus the encoded frames already yielded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from schemas.config import VideoConfig
from schemas.errors import ErrorKind, SampleFailure, Stage

logger = logging.getLogger(__name__)

# A stream that ends before this share of the frames its header announces is reported as truncated.
_TRUNCATION_TOLERANCE = 0.9


@dataclass(frozen=True)
class SampledFrame:
    """One kept frame: its rank among kept frames, time in seconds, JPEG bytes and size in pixels."""

    frame_index: int
    timestamp_s: float
    jpeg: bytes
    width: int
    height: int


def resized_shape(width: int, height: int, *, shorter_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the shorter side is ``shorter_side`` pixels, aspect kept."""
    scale = shorter_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_frame(bgr: np.ndarray, *, shorter_side: int, jpeg_quality: int) -> tuple[bytes, int, int]:
    """Resize a BGR ``(height, width, 3)`` frame and JPEG-encode it; returns ``(jpeg, width, height)``."""
    height, width = bgr.shape[:2]
    new_w, new_h = resized_shape(width, height, shorter_side=shorter_side)
    if (new_w, new_h) != (width, height):
        shrinking = new_w < width
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise SampleFailure(Stage.VIDEO, ErrorKind.DECODE_ERROR, "JPEG encoding of a frame failed")
    return buffer.tobytes(), new_w, new_h


def target_times(*, config: VideoConfig, native_fps: float, frame_count: int) -> Iterator[float]:
    """Times (seconds) to sample at, increasing: every ``1/fps`` s, or ``frames_per_video`` evenly spread.

    With ``frames_per_video = N`` over a video of duration ``D`` the targets are
    the centres ``(k + 0.5) * D / N``; with ``fps`` they are ``0, 1/fps, 2/fps, ...``.
    """
    if config.frames_per_video is not None:
        duration = frame_count / native_fps
        for k in range(config.frames_per_video):
            yield (k + 0.5) * duration / config.frames_per_video
        return
    k = 0
    while True:
        yield k / config.fps
        k += 1


class FrameSampler:
    """Samples the frames of one video file.

    Iterate over ``sample(path)`` to get ``SampledFrame`` s; afterwards
    ``duration_s`` holds the duration actually decoded, in seconds.
    """

    def __init__(self, config: VideoConfig) -> None:
        self.config = config
        self.duration_s = 0.0

    def sample(self, path: str) -> Iterator[SampledFrame]:
        """Yield the kept frames of the video at local ``path``.

        Raises:
            SampleFailure: (``video``, ``unreadable``) when OpenCV cannot open it,
                (``video``, ``no_frames``) when no frame decodes,
                (``video``, ``truncated``) after the last frame when the stream
                ended well before the frame count its header announces.
        """
        capture = cv2.VideoCapture(path)
        try:
            yield from self._sample(capture, path)
        finally:
            capture.release()

    def _sample(self, capture: cv2.VideoCapture, path: str) -> Iterator[SampledFrame]:
        native_fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
        if not capture.isOpened() or not native_fps or native_fps <= 0:
            raise SampleFailure(Stage.VIDEO, ErrorKind.UNREADABLE, f"not a readable video (OpenCV cannot open it): {path}")
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if self.config.frames_per_video is not None and frame_count <= 0:
            raise SampleFailure(
                Stage.VIDEO,
                ErrorKind.UNREADABLE,
                f"the container does not state a frame count, which --frames-per-video needs; use --fps: {path}",
            )
        targets = target_times(config=self.config, native_fps=native_fps, frame_count=frame_count)
        next_target = next(targets, None)
        half_frame = 0.5 / native_fps
        decoded = kept = 0
        reached_end = False
        while next_target is not None:
            if not capture.grab():
                reached_end = True
                break
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            timestamp = position_ms / 1000.0 if position_ms >= 0 else decoded / native_fps
            decoded += 1
            # A frame stands for the half-frame around its time; keep it when a target falls there.
            if next_target > timestamp + half_frame:
                continue
            ok, bgr = capture.retrieve()
            if not ok:
                raise SampleFailure(Stage.VIDEO, ErrorKind.DECODE_ERROR, f"frame {decoded - 1} could not be retrieved: {path}")
            jpeg, width, height = encode_frame(bgr, shorter_side=self.config.frame_size, jpeg_quality=self.config.jpeg_quality)
            yield SampledFrame(kept, timestamp, jpeg, width, height)
            kept += 1
            while next_target is not None and next_target <= timestamp + half_frame:
                next_target = next(targets, None)
        self.duration_s = decoded / native_fps if reached_end else frame_count / native_fps
        if decoded == 0:
            raise SampleFailure(Stage.VIDEO, ErrorKind.NO_FRAMES, f"no frame could be decoded: {path}")
        if reached_end and frame_count > 0 and decoded < _TRUNCATION_TOLERANCE * frame_count:
            raise SampleFailure(
                Stage.VIDEO,
                ErrorKind.TRUNCATED,
                f"the stream ended after {decoded} of the {frame_count} frames its header announces "
                f"({self.duration_s:.2f} s); the {kept} frames sampled before that are kept: {path}",
            )
