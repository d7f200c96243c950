"""Speech recognition: model folder checks, transcripts of synthesised speech (word error rate, word times),
the model handler's failure isolation, batching, and the rows a transcript becomes."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from schemas.config import SpeechConfig
from schemas.errors import ConfigError, ErrorKind, Stage
from tests.speech_media import SENTENCES, needs_espeak
from transforms.asr import SPEECH_TEXT, TranscriptRowsFn, form_speech_batches
from transforms.sample_state import encode_table
from transforms.speech import Transcript, asr_model_fingerprint, default_asr_model, resolve_asr_model, resolve_speech_config
from transforms.speech_scoring import Score, score


@pytest.fixture(scope="module")
def config() -> SpeechConfig:
    return resolve_speech_config(None, language="en")


@pytest.fixture(scope="module")
def handler(config):
    from transforms.asr_handler import WhisperModelHandler

    return WhisperModelHandler(config, device="cpu", cpu_threads=2)


@pytest.fixture(scope="module")
def loaded(handler):
    return handler.load_model()


def _item(sample_id: str, audio: np.ndarray, *, source: str = "audio", as_text: bool = True) -> dict:
    return {"sample_id": sample_id, "manifest_row": 0, "source": source, "uri": f"{sample_id}.wav", "as_text": as_text, "audio": audio}


def test_a_folder_without_model_bin_is_refused_saying_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="lacks model.bin, tokenizer.json"):
        resolve_asr_model(str(tmp_path))
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_asr_model(str(tmp_path / "absent"))


def test_the_fingerprint_follows_the_content_not_the_path(tmp_path):
    default = default_asr_model()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(default):
        os.symlink(os.path.join(default, name), copy / name)
    assert resolve_asr_model(str(copy)) == str(copy)
    assert asr_model_fingerprint(str(copy)) == asr_model_fingerprint(default)
    os.remove(copy / "config.json")
    shutil.copy(os.path.join(default, "config.json"), copy / "config.json")
    with open(copy / "config.json", "a", encoding="utf-8") as handle:
        handle.write("\n")
    assert asr_model_fingerprint(str(copy)) != asr_model_fingerprint(default)


def test_a_bad_language_code_is_refused():
    with pytest.raises(ConfigError, match="--asr-language"):
        SpeechConfig(language="e n")


def test_batches_hold_at_most_their_size_and_seconds():
    items = [_item(f"s{k}", np.zeros(16000 * seconds, np.float32)) for k, seconds in enumerate([5, 1, 30, 2, 100])]
    batches = list(form_speech_batches(items, max_batch_size=2, max_batch_s=40))
    assert [[item["sample_id"] for item in batch] for batch in batches] == [["s1", "s3"], ["s0", "s2"], ["s4"]]


@needs_espeak
def test_synthesised_sentences_are_transcribed_with_word_times(config, handler, loaded):
    """Acceptance: WER <= 20% and word starts within 0.3 s of espeak-ng's for >= 80% of words."""
    from transforms.speech_synth import synthesise

    speech = [synthesise(sentence) for sentence in SENTENCES]
    results = handler.run_inference([_item(f"s{k}", s.audio) for k, s in enumerate(speech)], loaded)
    total = Score(0, 0, 0, 0)
    for utterance, (table, row) in zip(speech, results):
        assert table == "_transcript"
        words = row["transcript"].words
        assert [w["word_index"] for w in words] == list(range(len(words)))
        assert all(0 <= w["start_s"] <= w["end_s"] <= utterance.duration_s + 0.05 and 0 <= w["probability"] <= 1 for w in words)
        total += score(utterance.words, utterance.word_starts_s, [w["word"] for w in words], [w["start_s"] for w in words])
    assert total.wer <= 0.20, f"word error rate {total.wer:.1%}"
    assert total.on_time_share >= 0.80, f"only {total.on_time_share:.1%} of words start within 0.3 s of espeak-ng's"


def test_silence_has_no_words_and_a_bad_item_is_an_asr_error_row(handler, loaded):
    silence = np.zeros(16000 * 2, np.float32)
    broken = np.zeros((2, 3, 4), np.float32)  # not a mono track: faster-whisper fails on it
    results = handler.run_inference([_item("quiet", silence), _item("broken", broken), _item("empty", np.zeros(0, np.float32))], loaded)
    (quiet_table, quiet), (error_table, error), (_, empty) = results
    assert quiet_table == "_transcript" and quiet["transcript"].words == [] and quiet["transcript"].segments == []
    assert "audio" not in quiet
    assert error_table == "errors" and (error["stage"], error["error_kind"], error["sample_id"]) == (Stage.ASR, ErrorKind.ASR_FAILED, "broken")
    assert empty["transcript"].text == ""


def _transcript(*texts: str) -> Transcript:
    segments = [{"segment_index": k, "start_s": float(k), "end_s": k + 1.0, "text": text, "avg_logprob": -0.2, "no_speech_prob": 0.01}
                for k, text in enumerate(texts)]
    words = [{"word_index": k, "word": word, "start_s": 0.1 * k, "end_s": 0.1 * k + 0.1, "probability": 0.9}
             for k, word in enumerate(" ".join(texts).split())]
    return Transcript(words, segments, 3.0)


def test_a_transcript_chosen_as_text_gets_a_text_row_an_encoder_item_and_a_marker(tokenizer_path):
    rows_fn = TranscriptRowsFn(tokenizer_path, max_tokens=256, text_needs=frozenset({"text"}))
    rows_fn.setup()
    row = {"sample_id": "a", "manifest_row": 7, "source": "video", "uri": "a.mp4", "as_text": True,
           "transcript": _transcript("Hello there.", "General Kenobi.")}
    out = list(rows_fn.process(("_transcript", row)))
    tables = [table for table, _ in out]
    assert tables.count("words") == 4 and tables.count("segments") == 2
    text = next(r for t, r in out if t == "text")
    assert text["text"] == "Hello there. General Kenobi." and text["token_ids"][0] == 101 and not text["truncated"]
    item = next(r for t, r in out if t == encode_table("text"))
    assert item == {"sample_id": "a", "manifest_row": 7, "payload": {"text": "Hello there. General Kenobi."}}
    marker = next(r for t, r in out if t == SPEECH_TEXT)
    assert marker == {"sample_id": "a", "manifest_row": 7, "n_tokens": len(text["token_ids"]), "text_source": "asr"}
    assert all(r["source"] == "video" for t, r in out if t in ("words", "segments"))


def test_a_transcript_beside_a_text_file_or_without_speech_gives_no_text(tokenizer_path):
    rows_fn = TranscriptRowsFn(tokenizer_path, max_tokens=256, text_needs=None)
    rows_fn.setup()
    beside = {"sample_id": "b", "manifest_row": 1, "source": "audio", "uri": None, "as_text": False, "transcript": _transcript("Hi.")}
    silent = {**beside, "as_text": True, "transcript": Transcript([], [], 2.0)}
    assert [t for t, _ in rows_fn.process(("_transcript", beside))] == ["words", "segments"]
    assert list(rows_fn.process(("_transcript", silent))) == []
