"""The sample corpus's label needs all three modalities: each cue is recoverable from its medium, none decides alone."""
import json
import os

import cv2
import numpy as np
import pytest

from pipelines.sample_corpus import make_sample_corpus
from transforms.audio_decode import decode_mono
from transforms.text import decode_utf8

POSITIVE_WORDS = {"great", "wonderful", "excellent", "lovely"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sample"))
    manifest = make_sample_corpus(directory, n=24, seed=3)
    with open(manifest, encoding="utf-8") as handle:
        return directory, [json.loads(line) for line in handle]


def _warm(path: str) -> bool:
    capture = cv2.VideoCapture(path)
    ok, bgr = capture.read()
    capture.release()
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    saturated = hsv[..., 1] > 150
    return float(np.median(hsv[..., 0][saturated])) < 45  # OpenCV hue is 0..179: reds/oranges low, blues ~100-115


def _high_pitch(path: str) -> bool:
    samples = np.concatenate(list(decode_mono(path, sample_rate=16000)))
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / 16000)[np.argmax(spectrum)]) > 400


def _positive(path: str) -> bool:
    with open(path, "rb") as handle:
        words = {w.strip(",.").lower() for w in decode_utf8(handle.read(), uri=path).split()}
    return bool(words & POSITIVE_WORDS)


def test_label_is_the_majority_of_three_cues_and_no_cue_decides_it(corpus):
    directory, rows = corpus
    cues = []
    for row in rows:
        sound = row.get("audio", row["video"])
        cues.append((_warm(os.path.join(directory, row["video"])), _high_pitch(os.path.join(directory, sound)), _positive(os.path.join(directory, row["text"]))))
    labels = np.array([row["label"] == "positive" for row in rows])
    cue_matrix = np.array(cues)
    assert np.array_equal(cue_matrix.sum(axis=1) >= 2, labels)
    for modality in range(3):
        agreement = float(np.mean(cue_matrix[:, modality] == labels))
        assert 0.55 <= agreement <= 0.85, f"cue {modality} alone agrees with the label {agreement:.0%} of the time"
    assert 0.3 <= labels.mean() <= 0.7


def test_layout_of_the_corpus(corpus):
    directory, rows = corpus
    assert sum("audio" in r for r in rows) == 8  # every third clip is silent with a separate WAV
    for row in rows:
        assert all(os.path.exists(os.path.join(directory, row[k])) for k in ("video", "text") + (("audio",) if "audio" in row else ()))
        assert -3.0 <= row["score"] <= 3.0


def test_same_seed_same_corpus(corpus, tmp_path):
    directory, _ = corpus
    again = make_sample_corpus(str(tmp_path / "again"), n=24, seed=3)
    with open(again, encoding="utf-8") as a, open(os.path.join(directory, "manifest.jsonl"), encoding="utf-8") as b:
        assert a.read() == b.read()


def test_captions_describe_what_is_seen_and_heard_in_varied_words(corpus):
    directory, rows = corpus
    warm_words, high_words = {"red", "orange"}, {"high", "shrill"}
    phrasings = set()
    for row in rows:
        words = set(row["caption"].split())
        sound = row.get("audio", row["video"])
        assert bool(words & warm_words) == _warm(os.path.join(directory, row["video"])), row["caption"]
        assert bool(words & high_words) == _high_pitch(os.path.join(directory, sound)), row["caption"]
        phrasings |= words
    assert len({row["caption"] for row in rows}) >= len(rows) // 2  # not one sentence per cue combination
    assert len(phrasings & (warm_words | {"azure", "blue"})) == 4 and len(phrasings & {"small", "medium", "large"}) == 3
