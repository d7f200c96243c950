"""``mmfeat align`` end to end: one espeak-ng sentence in a video, extracted with ``--transcribe --sequences video,text``,
then aligned on its words and on fixed steps through the command line."""
from __future__ import annotations

import os

import numpy as np
import pytest

from runners.cli import EXIT_OK, EXIT_USAGE, main
from schemas.cache import CacheView
from tests import media
from tests.speech_media import needs_espeak
from transforms.media_writers import write_mp4
from transforms.speech_synth import synthesise

pytestmark = needs_espeak

SPOKEN = "Please close the door when you leave the kitchen."


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("align_cli"))
    audio = synthesise(SPOKEN).audio
    n_frames = max(1, int(len(audio) / 16000 * 10))
    write_mp4(os.path.join(folder, "speech.mp4"), media.solid_frames(n_frames), width=64, height=48, fps=10, audio=audio)
    manifest = media.manifest(os.path.join(folder, "manifest.jsonl"), [{"id": "speech", "video": "speech.mp4"}])
    output = os.path.join(folder, "cache")
    status = main(["extract", "--manifest", manifest, "--output", output, "--transcribe", "--asr-language", "en",
                   "--sequences", "video,text", "--image-encoder", "builtin:color-hog", "--audio-encoder", "none",
                   "--fps", "4", "--runner", "direct", "--log-level", "WARNING"])
    assert status == EXIT_OK
    return output


def _aligned(cache: str, prefix: str) -> dict:
    view = CacheView.open(cache)
    (table,) = [t for t in view.tables() if t.startswith(prefix)]
    (row,) = view.read(table).to_pylist()
    return row


def test_align_on_words_through_the_cli(cache, capsys):
    assert main(["align", cache, "--on", "words"]) == EXIT_OK
    assert "steps on words" in capsys.readouterr().out
    view = CacheView.open(cache)
    row = _aligned(cache, "aligned/words-")
    words = sorted((w for w in view.read("words").to_pylist() if w["sample_id"] == "speech"), key=lambda w: w["word_index"])
    assert row["source"] == "video" and row["n_steps"] == len(words) >= 5
    assert row["label"] == [w["word"] for w in words]
    assert row["start_s"] == [w["start_s"] for w in words] and row["end_s"] == [w["end_s"] for w in words]
    times = np.concatenate([w["frame_times_s"] for w in view.read("audio").to_pylist() if w["source"] == "video"])
    mfcc = np.concatenate([np.array(w["mfcc"]) for w in view.read("audio").to_pylist() if w["source"] == "video"])
    frame_times = [f["timestamp_s"] for f in view.read("frames", columns=["timestamp_s"]).to_pylist()]
    for step, (start, end) in enumerate(zip(row["start_s"], row["end_s"])):
        inside = (times >= start) & (times < end)
        assert row["audio_mask"][step] == bool(inside.any())
        if inside.any():
            np.testing.assert_allclose(row["audio"][step], mfcc[inside].mean(axis=0), rtol=1e-5, atol=1e-5)
        assert row["video_mask"][step] == any(start <= t < end for t in frame_times)
    assert sum(row["text_mask"]) >= len(words) - 1  # the transcript is the text: (nearly) every word has its tokens
    assert len(row["text"][0]) == 384


def test_align_on_fixed_steps_through_the_cli(cache, capsys):
    assert main(["align", cache, "--on", "fixed:0.5"]) == EXIT_OK
    row = _aligned(cache, "aligned/fixed-0.5s-")
    capsys.readouterr()
    assert main(["status", cache]) == EXIT_OK
    assert f"aligned 1 samples, {row['n_steps']} steps on fixed:0.5 into aligned/fixed-0.5s-" in capsys.readouterr().out
    assert row["aligned_on"] == "fixed:0.5"
    assert np.allclose(np.diff(row["start_s"]), 0.5) and row["n_steps"] >= 4
    assert all(row["audio_mask"][:-1])  # MFCC frames every 10 ms: every whole step has some
    assert sum(row["video_mask"]) >= row["n_steps"] - 1  # 4 frames a second: two per step


def test_a_bad_on_is_a_usage_error(cache, capsys):
    assert main(["align", cache, "--on", "sentences"]) == EXIT_USAGE
    assert "fixed:SECONDS" in capsys.readouterr().err


def test_a_later_extract_that_recomputes_the_sample_takes_its_aligned_rows_out(cache):
    assert main(["align", cache, "--on", "words"]) == EXIT_OK
    manifest = os.path.join(os.path.dirname(cache), "manifest.jsonl")
    assert main(["extract", "--manifest", manifest, "--output", cache, "--transcribe", "--asr-language", "en",
                 "--sequences", "video,text", "--image-encoder", "builtin:color-hog", "--audio-encoder", "none",
                 "--fps", "4", "--runner", "direct", "--recompute", "--log-level", "WARNING"]) == EXIT_OK
    view = CacheView.open(cache)
    (table,) = [t for t in view.tables() if t.startswith("aligned/words-")]
    assert view.read(table).num_rows == 0  # stale steps never outlive the features they were aligned from
    assert main(["align", cache, "--on", "words"]) == EXIT_OK
    assert CacheView.open(cache).read(table).num_rows == 1
