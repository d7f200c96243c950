"""Generated corpora of ``bench/extract.py``: 480p H.264 + AAC videos, WAVs and texts, written with PyAV (libx264).

Every corpus lands in a folder with its ``manifest.jsonl`` and a ``.done`` marker: with ``--corpus-dir`` the
folders are kept and reused by later runs (encoding 10 minutes of 480p takes minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import cv2
import numpy as np

from transforms.media_writers import write_media, write_wav

WORDS = ("good", "bad", "movie", "sound", "picture", "today", "slow", "bright", "quiet", "long", "story", "ending")
X264 = {"preset": "veryfast"}
"""x264 options of the generated videos: B-frames (3, pyramid) and CABAC as in ``medium``, several times faster to encode."""


def _frames(rng: np.random.Generator, n: int, width: int, height: int):
    """A blurred random texture panning 3 px a frame: motion and detail an encoder spends bits on, like real footage."""
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8), (0, 0), 3)
    return (np.ascontiguousarray(texture[:, (3 * k) % width: (3 * k) % width + width]) for k in range(n))


def _sound(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + rng.normal(0, 0.02, t.shape)).astype(np.float32)


def _text(path: str, rng: np.random.Generator) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(" ".join(rng.choice(WORDS, size=40)) + "\n")


def _finish(directory: str, rows: list[dict[str, Any]]) -> str:
    manifest = os.path.join(directory, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    open(os.path.join(directory, ".done"), "w").close()
    return manifest


def _ready(directory: str) -> Optional[str]:
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "manifest.jsonl") if os.path.exists(os.path.join(directory, ".done")) else None


def mixed_corpus(directory: str, *, videos: int, seconds: float, width: int = 854, height: int = 480, fps: int = 25) -> str:
    """``videos`` videos of ``seconds`` s (H.264 + AAC; every third has a silent video and a WAV beside it) with texts,
    plus ``videos // 2`` audio-only samples (WAV + text) and ``videos // 2`` text-only samples. Returns the manifest."""
    manifest = _ready(directory)
    if manifest:
        return manifest
    rng = np.random.default_rng(0)
    rows = []
    for i in range(videos):
        sound = _sound(rng, seconds)
        separate = i % 3 == 2
        write_media(os.path.join(directory, f"v{i}.mp4"), frames=_frames(rng, int(seconds * fps), width, height), width=width,
                    height=height, fps=fps, audio=None if separate else sound, sample_rate=16000, video_options=X264)
        row = {"id": f"v{i}", "video": f"v{i}.mp4", "text": f"v{i}.txt"}
        if separate:
            write_wav(os.path.join(directory, f"v{i}.wav"), sound, sample_rate=16000)
            row["audio"] = f"v{i}.wav"
        _text(os.path.join(directory, f"v{i}.txt"), rng)
        rows.append(row)
    for i in range(videos // 2):
        write_wav(os.path.join(directory, f"a{i}.wav"), _sound(rng, seconds), sample_rate=16000)
        _text(os.path.join(directory, f"a{i}.txt"), rng)
        rows.append({"id": f"a{i}", "audio": f"a{i}.wav", "text": f"a{i}.txt"})
    for i in range(videos // 2):
        _text(os.path.join(directory, f"t{i}.txt"), rng)
        rows.append({"id": f"t{i}", "text": f"t{i}.txt"})
    return _finish(directory, rows)


def small_corpus(directory: str, *, clips: int, width: int = 854, height: int = 480, fps: int = 25) -> str:
    """``clips`` silent H.264 clips of 2 to 5 s, each with a WAV of its sound and a text. Returns the manifest."""
    manifest = _ready(directory)
    if manifest:
        return manifest
    rng = np.random.default_rng(1)
    rows = []
    for i in range(clips):
        seconds = 2.0 + 3.0 * (i % 7) / 6
        write_media(os.path.join(directory, f"c{i}.mp4"), frames=_frames(rng, int(seconds * fps), width, height), width=width,
                    height=height, fps=fps, video_options=X264)
        write_wav(os.path.join(directory, f"c{i}.wav"), _sound(rng, seconds), sample_rate=16000)
        _text(os.path.join(directory, f"c{i}.txt"), rng)
        rows.append({"id": f"c{i}", "video": f"c{i}.mp4", "audio": f"c{i}.wav", "text": f"c{i}.txt"})
    return _finish(directory, rows)


def long_video(directory: str, *, seconds: float, width: int = 854, height: int = 480, fps: int = 25) -> str:
    """One video of ``seconds`` s, H.264 + AAC, alone in its manifest. Returns the manifest."""
    manifest = _ready(directory)
    if manifest:
        return manifest
    rng = np.random.default_rng(2)
    write_media(os.path.join(directory, "long.mp4"), frames=_frames(rng, int(seconds * fps), width, height), width=width,
                height=height, fps=fps, audio=_sound(rng, seconds), sample_rate=16000, video_options=X264)
    return _finish(directory, [{"id": "long", "video": "long.mp4"}])


def manifest_files(manifest: str) -> list[dict[str, str]]:
    """The rows of ``manifest`` with absolute paths."""
    directory = os.path.dirname(manifest)
    with open(manifest, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [{m: os.path.join(directory, row[m]) for m in ("video", "audio", "text") if row.get(m)} for row in rows]
