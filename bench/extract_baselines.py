"""Baselines of ``bench/extract.py``: a naive hand-written loop, and FFmpeg decoding as the floor.

``naive_loop``: OpenCV ``read()`` of every frame keeping one per second
(resized + JPEG, as the pipeline does), librosa per file (``librosa.load``
for a WAV; PyAV at the native rate then ``librosa.resample`` for a sound
track), ``librosa.feature.mfcc`` on the whole signal, texts tokenised one by
one. It writes nothing; the pipeline also writes the cache.

``ffmpeg_all_streams``: the ``ffmpeg`` binary decoding every stream of every
file once (``ffmpeg -i f -f null -``, one file after the other, FFmpeg's own
threads), texts read; without the binary, PyAV decoding every stream (2 threads).

``ffmpeg_fps_frames``: ``ffmpeg -i f -vf fps=1,scale=-2:224 -c:v mjpeg -f image2pipe -`` (frames only).
"""
from __future__ import annotations

import shutil
import subprocess

import av
import cv2
import librosa
import numpy as np

from schemas.config import ExtractConfig
from transforms.text import TextTokenizer
from transforms.video import encode_frame

FFMPEG = shutil.which("ffmpeg")


def naive_loop(files: list[dict[str, str]], config: ExtractConfig, tokenizer_path: str) -> int:
    """The hand-written baseline over ``files`` (``{modality: path}`` rows); returns the frames kept."""
    tokenizer = TextTokenizer(tokenizer_path, max_tokens=config.text.max_tokens)
    kept = 0
    for row in files:
        if "video" in row:
            capture = cv2.VideoCapture(row["video"])
            step = max(1, round(capture.get(cv2.CAP_PROP_FPS) / config.video.fps))
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % step == 0:
                    encode_frame(frame, shorter_side=config.video.frame_size, jpeg_quality=config.video.jpeg_quality)
                    kept += 1
                index += 1
            capture.release()
        signal = None
        if "audio" in row:
            signal, _ = librosa.load(row["audio"], sr=config.audio.sample_rate, mono=True)
        elif "video" in row:
            with av.open(row["video"]) as container:
                if container.streams.audio:
                    stream = container.streams.audio[0]
                    signal = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
                    signal = librosa.resample(signal, orig_sr=stream.rate, target_sr=config.audio.sample_rate)
        if signal is not None:
            librosa.feature.mfcc(y=signal, sr=config.audio.sample_rate, n_mfcc=config.audio.n_mfcc,
                                 n_fft=config.audio.n_fft, hop_length=config.audio.hop_length, n_mels=config.audio.n_mels)
        if "text" in row:
            with open(row["text"], encoding="utf-8") as handle:
                tokenizer.encode(handle.read())
    return kept


def _pyav_decode_all(path: str) -> None:
    with av.open(path) as container:
        for stream in container.streams.video:
            stream.thread_type = "AUTO"
        for packet in container.demux():
            packet.decode()


def ffmpeg_all_streams(files: list[dict[str, str]]) -> str:
    """Decode every stream of every media file once and read the texts; returns what decoded (``ffmpeg`` or ``PyAV``)."""
    for row in files:
        for modality, path in row.items():
            if modality == "text":
                with open(path, "rb") as handle:
                    handle.read()
            elif FFMPEG:
                subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", path, "-f", "null", "-"], check=True)
            else:
                _pyav_decode_all(path)
    return "ffmpeg" if FFMPEG else "PyAV (no ffmpeg binary)"


def ffmpeg_fps_frames(path: str, *, fps: float = 1.0, size: int = 224) -> int:
    """JPEG frames at ``fps`` scaled to ``size`` px high, as ``ffmpeg``'s ``fps,scale,mjpeg`` pipeline; returns the bytes
    written (the PyAV equivalent when the binary is missing)."""
    if FFMPEG:
        done = subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", path, "-vf", f"fps={fps:g},scale=-2:{size}",
                               "-c:v", "mjpeg", "-f", "image2pipe", "-"], check=True, stdout=subprocess.PIPE)
        return len(done.stdout)
    total = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = max(1, round(float(stream.average_rate) / fps))
        for index, frame in enumerate(container.decode(stream)):
            if index % step == 0:
                total += len(encode_frame(frame.to_ndarray(format="bgr24"), shorter_side=size, jpeg_quality=90)[0])
    return total
