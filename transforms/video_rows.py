"""Rows of a sample's video file from one decode pass: ``frames`` rows and its sound track's ``audio`` rows.

``SampleExtractor`` calls ``video_file_rows`` for a sample's video: the file is
demuxed once (``transforms.media_pass.MediaPass``); kept frames become
``frames`` rows and the sound track's samples feed an ``MfccStream`` push-style,
so ``audio`` rows (``source = "video"``) come out as the pass goes, with memory
bounded by one MFCC window. The rows, errors and encoder payloads are those the
two separate passes (OpenCV frames, then PyAV audio) gave, in file order.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np

from schemas.config import ExtractConfig, decode_threads
from schemas.errors import ErrorKind, SampleFailure
from transforms.media_pass import MediaPass
from transforms.mfcc import AudioEncoderInput, MfccStream, MfccWindow

TableRow = tuple[str, dict[str, Any]]


def audio_row(window: MfccWindow, *, source: str, sample_rate: int) -> dict[str, Any]:
    """The ``audio`` table columns of one MFCC window (``sample_id`` aside)."""
    return {
        "source": source,
        "window_index": window.window_index,
        "sample_rate": sample_rate,
        "start_s": window.start_s,
        "end_s": window.end_s,
        "frame_times_s": window.frame_times_s,
        "mfcc": window.mfcc,
    }


def video_file_rows(config: ExtractConfig, requests: Mapping[str, Any], uri: str, path: str, state: Any,
                    threads: Optional[int] = None) -> Iterator[TableRow]:
    """Every row of the video file ``path`` (``uri`` in error rows), decoded in one pass.

    Args:
        config: the features' configuration (``video``: sampling and ``frame_mode``; ``audio``: MFCCs).
        requests: the run's encoder requests by modality (objects with ``needs``).
        state: the sample's ``_SampleState`` (``feature_row``/``error_row``, counters, payloads), updated here.
        threads: the video decoder's threads (``None``: ``decode_threads()``).

    Yields ``frames`` rows, ``audio`` rows of the sound track and ``errors`` rows (a frames failure and a sound
    track failure are independent: each is its own row, the other stream's rows are kept). Never raises
    ``SampleFailure``. When transcribing (``state.speech_track``), the sound track's samples are also gathered
    for speech recognition, and its failure noted there.
    """
    audio_config = config.audio
    media = MediaPass(path, video=config.video, sample_rate=audio_config.sample_rate, threads=threads or decode_threads())
    keep_frames = "video" in requests and "frames" in requests["video"].needs
    # The track feeds the audio encoder only when the sample has no readable audio file (only one track's items are
    # held; the same choice as re-embedding makes).
    needs = requests["audio"].needs if "audio" in requests and "audio" not in state.identities else frozenset()
    inputs = AudioEncoderInput(needs, window_s=audio_config.window_s, n_mfcc=audio_config.n_mfcc)
    stream = MfccStream(audio_config, keep_samples=inputs.keeps_samples)
    jpegs: list[bytes] = []
    got_audio = False
    audio_failure: Optional[SampleFailure] = None
    try:
        for item in media.items():
            if isinstance(item, np.ndarray):
                got_audio = True
                speech = state.speech_track("video", audio_config.sample_rate)
                if speech is not None:
                    speech.add(item)
                for window in stream.feed(item):
                    yield _audio_window_row(state, inputs, window, audio_config.sample_rate)
                continue
            state.n_frames += 1
            if keep_frames:
                jpegs.append(item.jpeg)
            yield state.feature_row("frames", {"frame_index": item.frame_index, "timestamp_s": item.timestamp_s,
                                               "image": item.jpeg, "width": item.width, "height": item.height})
        audio_failure = media.audio_failure
        if got_audio and audio_failure is None:
            try:
                for window in stream.finish():
                    yield _audio_window_row(state, inputs, window, audio_config.sample_rate)
                state.audio_duration_s = stream.duration_s
                if needs:
                    state.audio_payloads["video"] = {"items": inputs.items()}
            except SampleFailure as failure:
                audio_failure = failure
    finally:
        state.n_skipped_packets += media.n_skipped_packets
    if media.video_failure is not None:
        yield state.error_row(media.video_failure.stage, media.video_failure.kind, media.video_failure.message, uri)
    if jpegs:
        state.payloads["video"] = {"frames": jpegs}
    state.video_duration_s = media.duration_s if state.n_frames else None
    if audio_failure is not None:
        speech = state.speech_track("video", audio_config.sample_rate)
        if speech is not None and audio_failure.kind != ErrorKind.TOO_SHORT:  # too short for MFCCs: still transcribed
            speech.failure = audio_failure.message
        yield state.error_row(audio_failure.stage, audio_failure.kind, f"sound track: {audio_failure.message}", uri)


def _audio_window_row(state: Any, inputs: AudioEncoderInput, window: MfccWindow, sample_rate: int) -> TableRow:
    state.n_audio_windows += 1
    inputs.add(window)
    return state.feature_row("audio", audio_row(window, source="video", sample_rate=sample_rate))
