"""Tiny generated media for tests (lhotse ``testing/dummies.py`` style): nothing is downloaded."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from transforms.media_writers import write_mp4, write_wav


def tone(frequency_hz: float, duration_s: float, *, sample_rate: int = 16000, amplitude: float = 0.4) -> np.ndarray:
    """A sine, float32, shape ``(round(duration_s * sample_rate),)``."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)


def solid_frames(n: int, *, width: int = 64, height: int = 48, step: int = 20) -> list[np.ndarray]:
    """``n`` RGB frames whose grey level is ``(k * step) % 256`` for frame ``k``, so a frame identifies itself."""
    return [np.full((height, width, 3), (k * step) % 256, dtype=np.uint8) for k in range(n)]


def video(path: str, *, seconds: float = 2.0, fps: int = 10, width: int = 64, height: int = 48, with_audio: bool = True) -> str:
    """An H.264 mp4 (AAC 440 Hz track unless ``with_audio`` is False)."""
    frames = solid_frames(int(seconds * fps), width=width, height=height)
    audio = tone(440.0, seconds) if with_audio else None
    write_mp4(path, frames, width=width, height=height, fps=fps, audio=audio)
    return path


def wav(path: str, *, seconds: float = 1.0, frequency_hz: float = 440.0, sample_rate: int = 16000) -> str:
    write_wav(path, tone(frequency_hz, seconds, sample_rate=sample_rate), sample_rate=sample_rate)
    return path


def text(path: str, content: str | bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def truncated_copy(source: str, path: str, *, keep: float = 0.5) -> str:
    """The first ``keep`` share of ``source``'s bytes."""
    with open(source, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep)])
    return path


def noisy_faststart_video(path: str, *, n_frames: int = 50, fps: int = 10) -> str:
    """A 64x48 H.264 mp4 of random frames with its index first ('faststart'): its size grows with the frame count,
    so a cut copy (``truncated_copy``) ends mid-stream."""
    import av

    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(n_frames):
            image = np.random.default_rng(k).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def random_bytes(path: str, n: int = 4096, seed: int = 0) -> str:
    with open(path, "wb") as handle:
        handle.write(np.random.default_rng(seed).bytes(n))
    return path


def manifest(path: str, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` as JSON lines."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def row_keys(path: str) -> list[int]:
    """The ``manifest_row`` of each non-blank line of a one-shard JSONL manifest, in order: its byte offset."""
    keys, offset = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                keys.append(offset)
            offset += len(line)
    return keys


def bad_corpus(directory: str) -> tuple[str, list[dict[str, Any]]]:
    """A manifest holding every bad-input case of the extraction issue, plus good samples.

    Returns the manifest path and, per manifest row (in order), what is
    expected: ``sample_id``, ``status`` and the sorted ``(stage, error_kind)``
    pairs of its errors.
    """
    d = directory
    good_video = video(os.path.join(d, "good.mp4"))
    expected: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def add(sample_id: Optional[str], status: str, errors: list[tuple[str, str]], **uris: str) -> None:
        row: dict[str, Any] = {"label": len(rows) % 2, **uris}
        if sample_id is not None:
            row["id"] = sample_id
        rows.append(row)
        expected.append({"sample_id": sample_id or "", "status": status, "errors": sorted(errors)})

    unreadable_video = [("audio", "unreadable"), ("video", "unreadable")]
    add("good", "ok", [], video="good.mp4", audio=wav(os.path.join(d, "good.wav")), text=text(os.path.join(d, "good.txt"), "A fine day."))
    add("truncated_mp4", "failed", unreadable_video, video=truncated_copy(good_video, os.path.join(d, "cut.mp4")))
    add("zero_bytes", "failed", [("read", "empty_file")], video=text(os.path.join(d, "zero.mp4"), b""))
    add("text_as_mp4", "failed", unreadable_video, video=text(os.path.join(d, "notes.mp4"), "this is not a video\n"))
    add("random_wav", "failed", [("audio", "unreadable")], audio=random_bytes(os.path.join(d, "noise.wav")))
    add("latin1_text", "partial", [("text", "not_utf8")], audio="good.wav", text=text(os.path.join(d, "latin1.txt"), "caf\xe9 cr\xe8me".encode("latin-1")))
    add("missing_file", "failed", [("read", "missing_file")], video="does_not_exist.mp4")
    add("silent_video", "ok", [], video=video(os.path.join(d, "silent.mp4"), with_audio=False))
    add("short_audio", "failed", [("audio", "too_short")], audio=wav(os.path.join(d, "short.wav"), seconds=0.01))
    add("empty_text", "failed", [("text", "empty_text")], text=text(os.path.join(d, "empty.txt"), "  \n"))
    add("good", "failed", [("manifest", "duplicate_id")], text="good.txt")
    add("no_modality", "failed", [("manifest", "no_modality")])
    add(None, "failed", [("manifest", "missing_id")], text="good.txt")
    return manifest(os.path.join(d, "manifest.jsonl"), rows), expected
