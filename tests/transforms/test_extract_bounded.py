"""SampleExtractor on large or damaged inputs: bounded text, per-window audio encoder items, skipped packets."""
import numpy as np
import pytest

from schemas.config import AudioConfig, ExtractConfig, TextConfig
from schemas.records import ManifestRecord
from tests import media
from tests.transforms.corrupt_media import corrupt_audio_packets
from transforms.extract_sample import SampleExtractor
from transforms.sample_state import EncodeRequest, RunContext
from transforms.media_writers import write_media
from transforms.text import TextTokenizer


def _extract(record, tokenizer, *, config=None, needs=None):
    requests = {m: EncodeRequest(m, frozenset(n), m) for m, n in (needs or {}).items()}
    rows = list(SampleExtractor(config or ExtractConfig(), tokenizer, RunContext(requests=requests)).extract(record))
    samples = next(row for table, row in rows if table == "samples")
    return rows, samples


def _table(rows, name):
    return [row for table, row in rows if table == name]


def test_a_text_past_the_byte_limit_is_cut_with_a_warning_that_is_not_a_failure(tmp_path, tokenizer_path):
    content = "word " * 200  # 1000 bytes
    record = ManifestRecord(sample_id="t", manifest_row=0, text=media.text(str(tmp_path / "t.txt"), content))
    config = ExtractConfig(text=TextConfig(max_text_bytes=103, max_tokens=8))
    tokenizer = TextTokenizer(tokenizer_path, max_tokens=8)
    rows, samples = _extract(record, tokenizer, config=config, needs={"text": {"text"}})
    (warning,), (text_row,), (item,) = _table(rows, "errors"), _table(rows, "text"), _table(rows, "_encode/text")
    assert (warning["stage"], warning["error_kind"]) == ("text", "text_too_long") and "1000 bytes" in warning["message"]
    assert text_row["text"] == content[:103] and text_row["truncated"]
    assert text_row["n_tokens_full"] == 24 and len(text_row["token_ids"]) == 8  # 20 x "word", "wor" (2 pieces), [CLS], [SEP]
    assert (samples["status"], samples["n_errors"]) == ("ok", 0)
    assert item["payload"]["text"] == "word " * 5 + "word"  # what the 8 kept ids (6 words + [CLS], [SEP]) cover


def test_a_warning_does_not_hide_a_real_failure(tmp_path, tokenizer):
    record = ManifestRecord(
        sample_id="t", manifest_row=0,
        text=media.text(str(tmp_path / "t.txt"), "word " * 50),
        audio=media.wav(str(tmp_path / "short.wav"), seconds=0.01),
    )
    rows, samples = _extract(record, tokenizer, config=ExtractConfig(text=TextConfig(max_text_bytes=20)))
    assert sorted(row["error_kind"] for row in _table(rows, "errors")) == ["text_too_long", "too_short"]
    assert (samples["status"], samples["n_errors"]) == ("partial", 1)


def test_a_text_within_the_limit_is_whole(tmp_path, tokenizer):
    record = ManifestRecord(sample_id="t", manifest_row=0, text=media.text(str(tmp_path / "t.txt"), "héllo wörld"))
    rows, samples = _extract(record, tokenizer, config=ExtractConfig(text=TextConfig(max_text_bytes=13)))
    assert _table(rows, "text")[0]["text"] == "héllo wörld" and not _table(rows, "text")[0]["truncated"]
    assert not _table(rows, "errors")


def test_corrupt_packets_are_skipped_and_summed_over_the_file_and_the_sound_track(tmp_path, tokenizer):
    video = corrupt_audio_packets(media.video(str(tmp_path / "v.mp4"), seconds=4.0), str(tmp_path / "bad.mp4"))
    audio = str(tmp_path / "a.m4a")
    write_media(audio, audio=media.tone(440.0, 3.0), sample_rate=16000, audio_codec="aac")
    audio = corrupt_audio_packets(audio, str(tmp_path / "bad.m4a"))
    rows, samples = _extract(ManifestRecord(sample_id="c", manifest_row=0, video=video, audio=audio), tokenizer)
    assert {row["source"] for row in _table(rows, "audio")} == {"video", "audio"}
    assert (samples["n_skipped_packets"], samples["status"], samples["n_errors"]) == (2, "ok", 0)
    assert samples["audio_duration_s"] == pytest.approx(3.0 - 1024 / 16000, abs=0.01)


def test_audio_encoder_items_are_one_per_window_of_the_audio_file_only(tmp_path, tokenizer):
    """70 s at --audio-window-s 30: windows of 30 and 40 s (the 10 s tail joined); the video's track feeds nothing."""
    record = ManifestRecord(
        sample_id="w", manifest_row=3,
        video=media.video(str(tmp_path / "v.mp4"), seconds=2.0),
        audio=media.wav(str(tmp_path / "a.wav"), seconds=70.0),
    )
    rows, samples = _extract(record, tokenizer, needs={"audio": {"waveform"}})
    items = _table(rows, "_encode/audio")
    assert [len(item["payload"]["waveform"]) for item in items] == [30 * 16000, 40 * 16000]
    assert [(item["window"]["index"], item["window"]["count"]) for item in items] == [(0, 2), (1, 2)]
    assert [item["window"]["weight_s"] for item in items] == pytest.approx([30.0, 40.0], abs=0.03)
    assert {item["manifest_row"] for item in items} == {3} and set(items[0]["payload"]) == {"waveform"}
    joined = np.concatenate([item["payload"]["waveform"] for item in items])
    np.testing.assert_allclose(joined[:16000], media.tone(440.0, 1.0), atol=1e-4)  # the file's own samples, in order
    assert samples["n_audio_windows"] == 3 + 1  # the stored rows keep their own 30 s windows (and the video's 2 s)


def test_a_video_without_an_audio_file_feeds_the_encoder_its_sound_track(tmp_path, tokenizer):
    record = ManifestRecord(sample_id="v", manifest_row=0, video=media.video(str(tmp_path / "v.mp4"), seconds=2.0))
    config = ExtractConfig(audio=AudioConfig(window_s=0.5))
    rows, _ = _extract(record, tokenizer, config=config, needs={"audio": {"mfcc"}})
    items = _table(rows, "_encode/audio")
    assert len(items) == 4 and all(item["payload"]["mfcc"].shape[1] == 40 for item in items)
