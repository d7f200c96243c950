"""``make-sample-corpus --speech``: sound tracks are spoken sentences whose keyword carries the audio cue."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines.sample_corpus import SPOKEN_NEGATIVE, SPOKEN_POSITIVE, make_sample_corpus
from tests.speech_media import needs_espeak
from transforms.audio_decode import decode_mono
from transforms.speech import load_whisper, resolve_speech_config, transcribe

POSITIVE, NEGATIVE = set(SPOKEN_POSITIVE), set(SPOKEN_NEGATIVE)


@needs_espeak
def test_the_spoken_keyword_carries_the_audio_cue(tmp_path):
    manifest = make_sample_corpus(str(tmp_path), n=8, seed=1, speech=True)  # 8 samples: each cue combination once
    config = resolve_speech_config(None, language="en")
    model = load_whisper(config, device="cpu", cpu_threads=2)
    heard, agree, matches = 0, 0, 0
    with open(manifest, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    for row in rows:
        path = os.path.join(str(tmp_path), row.get("audio") or row["video"])
        samples = np.concatenate(list(decode_mono(path, sample_rate=16000)))
        assert abs(len(samples) - 3 * 16000) <= 2048  # AAC pads its last frame
        words = {word.strip(".,!").lower() for word in transcribe(model, samples, config=config).text.split()}
        keywords = words & (POSITIVE | NEGATIVE)
        heard += len(keywords) == 1
        agree += len(keywords) == 1 and (row["label"] == "positive") == bool(keywords & POSITIVE)
        matches += len(keywords) == 1 and (row["spoken"] == "positive") == bool(keywords & POSITIVE)
    # The label is the majority of three cues: the audio cue agrees with it in 6 of the 8 combinations. espeak-ng's
    # output varies a little with what it said before in the process, and tiny.en may mishear one clip.
    assert heard >= 7 and agree >= heard - 2
    assert matches >= heard - 1  # ``spoken`` is the polarity of the word said


def test_speech_without_espeak_is_a_config_error(tmp_path, monkeypatch):
    from schemas.errors import ConfigError
    from transforms import speech_synth

    monkeypatch.setattr(speech_synth, "espeak_available", lambda: False)
    with pytest.raises(ConfigError, match="apt-get install espeak-ng"):
        make_sample_corpus(str(tmp_path), n=2, speech=True)
