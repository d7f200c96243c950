"""``--transcribe`` end to end: speech in video and audio files through the Beam pipeline into ``words``,
``segments``, ``text`` and the text embedding; silent and corrupt tracks; incremental reruns."""
from __future__ import annotations

import os
import shutil

import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.cache import CacheView
from schemas.config import EncodeConfig, ExtractConfig
from tests import media
from tests.speech_media import needs_espeak
from tests.transforms.corrupt_media import audio_packets, corrupt_audio_packets
from transforms.encoders.registry import resolve_encoders
from transforms.media_writers import write_mp4, write_wav
from transforms.speech import default_asr_model, resolve_speech_config
from transforms.speech_scoring import score
from transforms.speech_synth import espeak_available, synthesise

pytestmark = needs_espeak

SPOKEN = "Open the window because the room is getting very hot."
WRITTEN = "A note written beside the recording."
ENCODE = EncodeConfig(image_encoder="none", audio_encoder="none")


def _video_with_sound(path: str, audio) -> str:
    n_frames = max(1, int(len(audio) / 16000 * 10))
    write_mp4(path, media.solid_frames(n_frames), width=64, height=48, fps=10, audio=audio)
    return path


def _extract(manifest: str, output: str, tokenizer_path: str, run_id: str, model: str | None = None):
    config = ExtractConfig(num_shards=1)
    return run_extract(open_manifest(manifest), output=output, config=config, tokenizer_path=tokenizer_path, runner=FnApiRunner(),
                       run_id=run_id, encoders=resolve_encoders(ENCODE, config), encode=ENCODE, device="cpu",
                       speech=resolve_speech_config(model, language="en"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    d = str(tmp_path_factory.mktemp("speech"))
    spoken = synthesise(SPOKEN)
    _video_with_sound(os.path.join(d, "speech.mp4"), spoken.audio)
    _video_with_sound(os.path.join(d, "silent.mp4"), spoken.audio * 0)
    media.video(os.path.join(d, "mute.mp4"), seconds=1.0, with_audio=False)
    corrupt = corrupt_audio_packets(os.path.join(d, "speech.mp4"), os.path.join(d, "corrupt.mp4"),
                                    indices=range(len(audio_packets(os.path.join(d, "speech.mp4")))))
    write_wav(os.path.join(d, "said.wav"), synthesise("The weather today is warm and sunny.").audio, sample_rate=16000)
    manifest = media.manifest(os.path.join(d, "manifest.jsonl"), [
        {"id": "speech_video", "video": "speech.mp4"},
        {"id": "silent_video", "video": "silent.mp4"},
        {"id": "mute_video", "video": "mute.mp4"},
        {"id": "corrupt_track", "video": os.path.basename(corrupt)},
        {"id": "audio_and_text", "audio": "said.wav", "text": media.text(os.path.join(d, "note.txt"), WRITTEN)},
    ])
    return d, manifest, spoken


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory, tokenizer_path):
    _, manifest, _ = corpus
    output = str(tmp_path_factory.mktemp("cache") / "out")
    report = _extract(manifest, output, tokenizer_path, "first")
    return output, report


def _rows(output: str, table: str) -> list[dict]:
    return CacheView.open(output).read(table).to_pylist()


def _samples(output: str) -> dict[str, dict]:
    return {row["sample_id"]: row for row in _rows(output, "samples")}


def _text_embeddings(output: str) -> list[dict]:
    view = CacheView.open(output)
    (table,) = [t for t in view.embedding_tables() if t.startswith("embeddings/text/")]
    return view.read(table).to_pylist()


def test_a_video_with_speech_and_no_text_file_gets_its_transcript_as_text(corpus, first_run):
    _, _, spoken = corpus
    output, report = first_run
    sample = _samples(output)["speech_video"]
    assert (sample["status"], sample["text_source"], sample["n_errors"]) == ("ok", "asr", 0)
    words = sorted((w for w in _rows(output, "words") if w["sample_id"] == "speech_video"), key=lambda w: w["word_index"])
    assert {w["source"] for w in words} == {"video"}
    result = score(spoken.words, spoken.word_starts_s, [w["word"] for w in words], [w["start_s"] for w in words])
    assert result.wer <= 0.2 and result.on_time_share >= 0.8, result
    segments = sorted((s for s in _rows(output, "segments") if s["sample_id"] == "speech_video"), key=lambda s: s["segment_index"])
    (text,) = [t for t in _rows(output, "text") if t["sample_id"] == "speech_video"]
    assert text["text"] == " ".join(s["text"] for s in segments)
    assert sample["n_tokens"] == len(text["token_ids"]) > 5
    assert [e["sample_id"] for e in _text_embeddings(output)].count("speech_video") == 1
    assert report.summary["rows"]["words"] >= len(words)


def test_a_silent_track_and_a_video_without_sound_have_no_words_and_are_ok(first_run):
    output, _ = first_run
    samples = _samples(output)
    transcribed = {w["sample_id"] for w in _rows(output, "words")} | {s["sample_id"] for s in _rows(output, "segments")}
    for sample_id in ("silent_video", "mute_video"):
        assert (samples[sample_id]["status"], samples[sample_id]["n_errors"], samples[sample_id]["text_source"]) == ("ok", 0, None)
        assert sample_id not in transcribed
        assert samples[sample_id]["n_frames"] > 0
    assert not [e for e in _rows(output, "errors") if e["sample_id"] in ("silent_video", "mute_video")]


def test_a_corrupt_track_gives_an_asr_error_and_keeps_the_frames(first_run):
    output, _ = first_run
    sample = _samples(output)["corrupt_track"]
    errors = sorted((e["stage"], e["error_kind"]) for e in _rows(output, "errors") if e["sample_id"] == "corrupt_track")
    assert ("asr", "decode_error") in errors and ("audio", "decode_error") in errors
    assert sample["status"] == "partial" and sample["n_errors"] == len(errors) and sample["n_frames"] > 0
    assert sum(1 for f in _rows(output, "frames") if f["sample_id"] == "corrupt_track") == sample["n_frames"]
    assert "corrupt_track" not in {w["sample_id"] for w in _rows(output, "words")}


def test_a_sample_with_a_text_file_keeps_it_and_stores_its_transcript_beside_it(first_run):
    output, _ = first_run
    sample = _samples(output)["audio_and_text"]
    assert (sample["status"], sample["text_source"]) == ("ok", "file")
    (text,) = [t for t in _rows(output, "text") if t["sample_id"] == "audio_and_text"]
    assert text["text"] == WRITTEN
    words = [w["word"].strip(".,").lower() for w in sorted(_rows(output, "words"), key=lambda w: w["word_index"])
             if w["sample_id"] == "audio_and_text"]
    assert {w["source"] for w in _rows(output, "words") if w["sample_id"] == "audio_and_text"} == {"audio"}
    assert {"weather", "warm", "sunny"} <= set(words)


def test_an_unchanged_rerun_transcribes_nothing_and_another_model_transcribes_again(corpus, first_run, tokenizer_path, tmp_path):
    d, manifest, _ = corpus
    output, first = first_run
    words_before = len(_rows(output, "words"))
    assert first.summary["metrics"]["transcribed_tracks"] == 3  # speech, silent and said.wav; no track in mute, corrupt's undecodable

    again = _extract(manifest, output, tokenizer_path, "again")
    assert again.summary["samples"]["unchanged"] == 5
    assert again.summary["metrics"].get("transcribed_tracks", 0) == 0
    assert len(_rows(output, "words")) == words_before

    model = tmp_path / "model"  # the same weights under another configuration: another model as far as the cache knows
    model.mkdir()
    default = default_asr_model()
    for name in os.listdir(default):
        if name != "config.json":
            os.symlink(os.path.join(default, name), model / name)
    shutil.copy(os.path.join(default, "config.json"), model / "config.json")
    with open(model / "config.json", "a", encoding="utf-8") as handle:
        handle.write("\n")
    changed = _extract(manifest, output, tokenizer_path, "changed", model=str(model))
    assert changed.summary["samples"]["unchanged"] == 0
    assert changed.summary["metrics"]["transcribed_tracks"] == 3
    assert len(_rows(output, "words")) == words_before  # the old transcripts left with the rows they were replaced by
    assert _samples(output)["speech_video"]["text_source"] == "asr"
    assert [e["sample_id"] for e in _text_embeddings(output)].count("speech_video") == 1


def test_a_new_text_encoder_retranscribes_only_samples_whose_text_is_their_transcript(corpus, tokenizer_path, tmp_path):
    """A text embedding missing for a transcript's text: only the transcript can give the text again, so that
    sample is recomputed; a text file's sample is only embedded again."""
    d, _, _ = corpus
    manifest = media.manifest(str(tmp_path / "two.jsonl"), [
        {"id": "spoken", "audio": os.path.join(d, "said.wav")},
        {"id": "written", "text": os.path.join(d, "note.txt")},
    ])
    output = str(tmp_path / "out")
    config = ExtractConfig(num_shards=1)
    speech = resolve_speech_config(None, language="en")
    run_extract(open_manifest(manifest), output=output, config=config, tokenizer_path=tokenizer_path, runner=FnApiRunner(),
                run_id="plain", encoders={}, device="cpu", speech=speech)
    report = run_extract(open_manifest(manifest), output=output, config=config, tokenizer_path=tokenizer_path, runner=FnApiRunner(),
                         run_id="embedded", encoders=resolve_encoders(ENCODE, config), encode=ENCODE, device="cpu", speech=speech)
    assert (report.summary["samples"]["ok"], report.summary["samples"]["unchanged"]) == (1, 1)
    assert report.summary["metrics"]["transcribed_tracks"] == 1
    assert sorted(e["sample_id"] for e in _text_embeddings(output)) == ["spoken", "written"]
    assert {s: row["text_source"] for s, row in _samples(output).items()} == {"spoken": "asr", "written": "file"}
