"""One demux pass over a video file: its kept frames and its sound track's mono samples, together (PyAV).

The container is read once; video and audio packets come in file order and
each goes to its decoder. Only kept frames are converted to BGR, resized and
JPEG-encoded (``transforms.video.encode_frame``, as the OpenCV sampler does).
The sound track is decoded, down-mixed and resampled exactly as
``transforms.audio_decode.MonoDecoder`` does (the same frames through the same
``AudioResampler``), so its samples, and so the MFCCs, are bit-identical to
decoding the track on its own; corrupt audio packets are skipped and counted
the same way.

Video decoding:

* ``sampled`` mode: H.264/HEVC/MPEG frames that no other frame references
  (``nal_ref_idc = 0`` B-frames: about half of an x264 stream) are not decoded
  unless a sampling target lies within about a frame of their timestamp
  (``skip_frame = NONREF`` per packet, decided from the packet's pts); every
  frame the sampling rule keeps is decoded, so the kept frames are those of a
  full decode (constant frame rate).
* ``keyframes`` mode: only key-frame packets reach the decoder
  (``skip_frame = NONKEY``); every key frame is kept, at its own pts.

Measured on the 2 shared cores while other jobs ran (load 7-13, so only
back-to-back ratios mean anything):

* a 180 s 854x480 25 fps H.264 (x264 ``medium``, 31 key frames) + AAC, 1
  frame/s kept: ffmpeg CLI ``-f null`` 13.8 s / 11.7 s; ffmpeg
  ``fps=1,scale,mjpeg`` 12.2 s; OpenCV ``grab()`` all + ``retrieve()`` kept
  8.7 s; PyAV decode all, 2 threads 8.0 s (1 thread 10.7 s); PyAV with
  ``NONREF`` skipping 5.5 s (2281 of 4500 frames decoded); PyAV key frames only 0.78 s.
* a 30 s 854x480 x264 ``veryfast`` + AAC, least of 3 interleaved rounds:
  OpenCV ``read()`` of every frame 3.01 s; OpenCV ``grab()`` sampler 1.14 s;
  PyAV decode all (2 threads) 0.99-1.39 s, with ``NONREF`` 0.36 s, with
  ``NONREF`` toggled per packet 0.41 s; this pass, frames and sound track
  together, 1.03 s (421 of 750 frames decoded); the sound track alone
  (``MonoDecoder``) 0.34 s.

OpenCV cannot skip frames (its ``grab()`` decodes each one) nor hand over the
sound track, so PyAV decodes both; the JPEGs are byte-identical to the OpenCV
sampler's (``tests/transforms/test_media_pass.py``).
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
from fractions import Fraction
from typing import Iterator, Optional, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from schemas.config import VideoConfig
from schemas.errors import ErrorKind, SampleFailure, Stage
from transforms.audio_decode import decode_or_skip
from transforms.video import SampledFrame, encode_frame, resized_shape, target_times

logger = logging.getLogger(__name__)

_TRUNCATION_TOLERANCE = 0.9  # as transforms.video: fewer packets than this share of the header's count is a truncation

NONREF_SKIPPING_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4"})
"""Codecs whose decoders tell reference from non-reference frames (``skip_frame = NONREF``)."""

SLICE_THREADED_CODECS = frozenset({"h264"})
"""Codecs decoded with slice threads (``thread_type = "SLICE"``), not FFmpeg's default of frame threads.

Measured here (2 cores, x264 ``veryfast`` 854x480, ``NONREF`` skipping, least of 2 rounds): 100 clips of 2-5 s,
2 slice threads 1.8 s, 1 thread 2.4 s, 2 frame threads 2.5 s (a frame-threaded decoder is set up for every file,
and fills its pipeline of frames before the first comes out); a 180 s video 0.97 s against 1.29 s. Other codecs
keep FFmpeg's choice (frame threads where the codec has them), which was not measured against."""

Item = Union[SampledFrame, np.ndarray]


class _Targets:
    """The sampling targets of one video and the rule that keeps frames (that of ``transforms.video``)."""

    def __init__(self, config: VideoConfig, *, native_fps: float, frame_count: int) -> None:
        self.fps = config.fps
        self.finite = None if config.frames_per_video is None else list(
            target_times(config=config, native_fps=native_fps, frame_count=frame_count))
        self._iter = target_times(config=config, native_fps=native_fps, frame_count=frame_count)
        self.next: Optional[float] = next(self._iter, None)
        self.frame_s = 1.0 / native_fps

    def near(self, timestamp: float) -> bool:
        """Whether a target lies in ``(timestamp - 1.5 frames, timestamp + 1 frame]``: the frame may be kept."""
        low, high = timestamp - 1.5 * self.frame_s, timestamp + self.frame_s
        if self.finite is None:
            k = math.floor(high * self.fps)
            return k >= 0 and k / self.fps > low
        i = bisect.bisect_right(self.finite, high) - 1
        return i >= 0 and self.finite[i] > low

    def keep(self, timestamp: float) -> bool:
        """Whether the frame at ``timestamp`` (frames seen in presentation order) is kept; consumes its targets."""
        half = 0.5 * self.frame_s
        if self.next is None or self.next > timestamp + half:
            return False
        while self.next is not None and self.next <= timestamp + half:
            self.next = next(self._iter, None)
        return True


_THREAD_STATE = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's FFmpeg scaler: it keeps its set-up between frames of one size (a frame's own ``to_ndarray`` sets
    one up for every frame, which costs more than the scaling itself)."""
    if not hasattr(_THREAD_STATE, "reformatter"):
        _THREAD_STATE.reformatter = VideoReformatter()
    return _THREAD_STATE.reformatter


class MediaPass:
    """Decodes one local video file in one pass: kept frames and, when it has one, its sound track.

    Iterate over ``items()``: ``SampledFrame`` s and mono float32 audio chunks of shape ``(n,)`` at
    ``sample_rate`` Hz, in file order. Failures do not raise: afterwards ``video_failure`` and
    ``audio_failure`` hold them (``None`` when fine), and:

    Attributes:
        duration_s: video duration in seconds (video packets / frame rate, or the header's count).
        has_audio: whether the file has an audio stream.
        n_packets, n_skipped_packets: audio packets given to the decoder, and those it rejected (skipped).
        n_video_skipped_packets: video packets the decoder rejected (skipped).
        n_decoded_frames: video frames the decoder produced (fewer than the packets when frames are skipped).

    Args:
        path: a local file.
        video: the sampling (``frame_mode``, ``fps``/``frames_per_video``, size, JPEG quality).
        sample_rate: audio target rate in Hz.
        threads: video decoder threads (0: FFmpeg's choice, one per core).
    """

    def __init__(self, path: str, *, video: VideoConfig, sample_rate: int, threads: int = 0) -> None:
        self.path = path
        self.video = video
        self.sample_rate = sample_rate
        self.threads = threads
        self.duration_s = 0.0
        self.has_audio = False
        self.n_packets = self.n_skipped_packets = self.n_video_skipped_packets = self.n_decoded_frames = 0
        self.video_failure: Optional[SampleFailure] = None
        self.audio_failure: Optional[SampleFailure] = None
        self._kept = 0
        self._audio_decoded = False

    def items(self) -> Iterator[Item]:
        """Yield kept frames and audio chunks in file order (see the class docstring); never raises ``SampleFailure``."""
        try:
            container = av.open(self.path)
        except (av.FFmpegError, UnicodeDecodeError) as error:
            self.video_failure = SampleFailure(Stage.VIDEO, ErrorKind.UNREADABLE, f"not a readable video ({error}): {self.path}")
            self.audio_failure = SampleFailure(Stage.AUDIO, ErrorKind.UNREADABLE, f"not a readable media file ({error}): {self.path}")
            return
        with container:
            yield from self._items(container)

    def _items(self, container: av.container.InputContainer) -> Iterator[Item]:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        self.has_audio = astream is not None
        targets = self._open_video(vstream, container) if vstream is not None else None
        if targets is None:
            vstream = None
        streams = [s for s in (vstream, astream) if s is not None]
        if not streams:
            return
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate) if astream is not None else None
        n_video_packets = 0
        try:
            for packet in container.demux(*streams):
                if packet.stream is astream:
                    yield from self._audio_packet(packet, resampler)
                    continue
                if packet.size:
                    n_video_packets += 1
                yield from self._video_packet(packet, vstream, targets)
            if resampler is not None:
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
        except av.FFmpegError as error:  # the container cannot be read past some point: both streams end there
            if astream is not None:
                self.audio_failure = SampleFailure(Stage.AUDIO, ErrorKind.DECODE_ERROR, f"audio decoding failed ({error}): {self.path}")
        if astream is not None and not self._audio_decoded and self.n_skipped_packets and self.audio_failure is None:
            self.audio_failure = SampleFailure(
                Stage.AUDIO, ErrorKind.DECODE_ERROR,
                f"none of the {self.n_skipped_packets} packets of the audio stream could be decoded: {self.path}")
        if self.n_skipped_packets:
            logger.warning("skipped %d corrupt audio packet(s) of %d in %s; the rest was decoded",
                           self.n_skipped_packets, self.n_packets, self.path)
        if vstream is not None:
            self._finish_video(n_video_packets)

    def _open_video(self, vstream: av.video.stream.VideoStream, container: av.container.InputContainer) -> Optional[_Targets]:
        """Set up the video decoder; the sampling targets, or ``None`` (``video_failure`` set) when it cannot be read."""
        rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
        self._fps = float(rate) if rate else 0.0
        if self._fps <= 0:
            self.video_failure = SampleFailure(Stage.VIDEO, ErrorKind.UNREADABLE, f"not a readable video (no frame rate): {self.path}")
            return None
        self._frame_count = vstream.frames or self._estimated_frames(vstream, container)
        if self.video.frames_per_video is not None and self.video.frame_mode == "sampled" and self._frame_count <= 0:
            self.video_failure = SampleFailure(
                Stage.VIDEO, ErrorKind.UNREADABLE,
                f"the container does not state a frame count, which --frames-per-video needs; use --fps: {self.path}")
            return None
        context = vstream.codec_context
        vstream.thread_type = "SLICE" if context.name in SLICE_THREADED_CODECS else "AUTO"
        context.thread_count = self.threads
        if self.video.frame_mode == "keyframes":
            context.skip_frame = "NONKEY"
        self._skip_nonref = self.video.frame_mode == "sampled" and context.name in NONREF_SKIPPING_CODECS
        time_base = vstream.time_base or Fraction(1, 1)
        self._time_base = (time_base.numerator, time_base.denominator)
        self._start = vstream.start_time or 0
        return _Targets(self.video, native_fps=self._fps, frame_count=self._frame_count)

    def _estimated_frames(self, vstream: av.video.stream.VideoStream, container: av.container.InputContainer) -> int:
        """Frame count from the duration when the header states none (as OpenCV does), else 0."""
        if vstream.duration and vstream.time_base:
            seconds = float(vstream.duration * vstream.time_base)
        else:
            seconds = (container.duration or 0) / av.time_base
        return int(math.floor(seconds * self._fps + 0.5))

    def _seconds(self, pts: Optional[int]) -> Optional[float]:
        """Seconds from the stream's start of ``pts``: ``float((pts - start) * time_base)`` in integers (one correctly
        rounded division, as the ``Fraction`` product gives, at a tenth of its cost)."""
        if pts is None:
            return None
        numerator, denominator = self._time_base
        return (pts - self._start) * numerator / denominator

    def _video_packet(self, packet: av.Packet, vstream: av.video.stream.VideoStream, targets: _Targets) -> Iterator[SampledFrame]:
        keyframes = self.video.frame_mode == "keyframes"
        if packet.size:
            if keyframes and not packet.is_keyframe:
                return
            if not keyframes and targets.next is None:
                return  # frames_per_video: every target is met; the rest of the video is not decoded
            if self._skip_nonref:
                timestamp = self._seconds(packet.pts)
                wanted = timestamp is None or targets.near(timestamp)
                vstream.codec_context.skip_frame = "DEFAULT" if wanted else "NONREF"
        frames = decode_or_skip(packet, path=self.path, what="video")
        if frames is None:
            self.n_video_skipped_packets += 1
            return
        for frame in frames:
            self.n_decoded_frames += 1
            timestamp = self._seconds(frame.pts)
            if timestamp is None:
                timestamp = (self.n_decoded_frames - 1) / self._fps
            if keyframes or targets.keep(timestamp):
                jpeg, width, height = encode_frame(self._kept_image(frame), shorter_side=self.video.frame_size,
                                                   jpeg_quality=self.video.jpeg_quality)
                yield SampledFrame(self._kept, timestamp, jpeg, width, height)
                self._kept += 1

    def _kept_image(self, frame: av.VideoFrame) -> np.ndarray:
        """A kept frame as BGR ``(height, width, 3)`` uint8 at its stored size: converted and shrunk in one pass of
        FFmpeg's scaler (area averaging, as OpenCV's ``INTER_AREA``; 0.3 ms for 480p to 224 against 2 ms)."""
        width, height = resized_shape(frame.width, frame.height, shorter_side=self.video.frame_size)
        if width < frame.width:
            return _reformatter().reformat(frame, width=width, height=height, format="bgr24", interpolation="AREA").to_ndarray()
        return frame.to_ndarray(format="bgr24")  # enlarged (or kept) by encode_frame, as OpenCV's frames are

    def _audio_packet(self, packet: av.Packet, resampler: av.AudioResampler) -> Iterator[np.ndarray]:
        """Mono chunks of one audio packet (as ``MonoDecoder``: a packet the decoder rejects is counted and skipped)."""
        if packet.size:
            self.n_packets += 1
        frames = decode_or_skip(packet, path=self.path, what="audio")
        if frames is None:
            self.n_skipped_packets += 1
            return
        for frame in frames:
            self._audio_decoded = True
            for out in resampler.resample(frame):
                yield out.to_ndarray().reshape(-1)

    def _finish_video(self, n_video_packets: int) -> None:
        """Duration, and the failure of a stream without frames or ended well before its header's count."""
        truncated = self._frame_count > 0 and n_video_packets < _TRUNCATION_TOLERANCE * self._frame_count
        self.duration_s = (n_video_packets or self._frame_count) / self._fps
        if self.n_decoded_frames == 0:
            self.video_failure = SampleFailure(Stage.VIDEO, ErrorKind.NO_FRAMES, f"no frame could be decoded: {self.path}")
        elif truncated:
            self.video_failure = SampleFailure(
                Stage.VIDEO, ErrorKind.TRUNCATED,
                f"the stream ended after {n_video_packets} of the {self._frame_count} frames its header announces "
                f"({self.duration_s:.2f} s); the {self._kept} frames sampled before that are kept: {self.path}")
