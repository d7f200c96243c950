"""Alignment on words, segments and fixed steps (``transforms.align``, ``pipelines.align``), on a hand-built cache whose
words, MFCC frames, sampled frames and token vectors sit at known times, so every step's expected mean is written out."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.align import align_cache
from schemas.cache import CacheView, RunCommit, commit_run, new_attempt, write_data_file
from schemas.errors import ConfigError
from schemas.tables import ALIGNED, AUDIO, FRAMES, SEGMENTS, WORDS, embeddings_schema
from schemas.tables import TEXT as TEXT_TABLE
from transforms.align import AlignOn, fixed_intervals, locate_words, parse_on, pool_in_intervals, word_token_vectors
from transforms.text import default_tokenizer_path

VIDEO_SET = "embeddings/video/frames-000000000000"
TEXT_SET = "embeddings/text/minilm-000000000000"
TEXT = "Hello big world again."
WORDS_S1 = [("hello", 0.0, 0.5), ("big", 0.5, 1.0), ("world", 1.0, 1.2), ("again.", 2.0, 2.4)]
MFCC_TIMES = [0.1, 0.3, 0.6, 0.7, 1.1, 2.6]  # none inside "again." [2.0, 2.4)
MFCC = np.array([[1, 10], [3, 30], [5, 50], [7, 70], [9, 90], [11, 110]], dtype=np.float32)
FRAME_TIMES = [0.2, 0.75, 0.8, 2.1]  # none inside "world" [1.0, 1.2)
FRAME_VECTORS = np.array([[1, 0, 0], [0, 2, 0], [0, 4, 0], [0, 0, 8]], dtype=np.float32)


# --- the maths ----------------------------------------------------------------------------------------------------

def test_pool_in_intervals_means_exactly_the_points_inside_half_open_intervals():
    times = np.array([0.0, 0.5, 0.9, 1.0, 3.0])
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    means, mask, counts = pool_in_intervals(times, values, np.array([0.0, 1.0, 1.5, 3.0]), np.array([1.0, 1.5, 2.0, 3.0]))
    np.testing.assert_allclose(means[0], values[:3].mean(axis=0))  # 1.0 is the next interval's
    np.testing.assert_allclose(means[1], values[3])
    assert counts.tolist() == [3, 1, 0, 1] and mask.tolist() == [True, True, False, True]  # zero-length: the point at its start
    assert not means[2].any()


def test_pool_in_intervals_does_not_need_sorted_points():
    means, _, _ = pool_in_intervals(np.array([0.7, 0.1]), np.array([[2.0], [4.0]]), np.array([0.0]), np.array([0.5]))
    assert means.tolist() == [[4.0]]


def test_parse_on():
    assert parse_on("words") == AlignOn("words") and parse_on("segments") == AlignOn("segments")
    assert parse_on("fixed:0.5") == AlignOn("fixed", 0.5) and parse_on("fixed:0.5").label == "fixed:0.5"
    for bad in ("sentences", "fixed:", "fixed:-1", "fixed:abc", "fixed:inf"):
        with pytest.raises(ConfigError, match="--on"):
            parse_on(bad)


def test_fixed_intervals_cover_the_duration():
    starts, ends = fixed_intervals(1.2, 0.5)
    assert starts.tolist() == [0.0, 0.5, 1.0] and ends.tolist() == [0.5, 1.0, 1.5]
    assert fixed_intervals(1.0, 0.5)[0].tolist() == [0.0, 0.5]
    assert len(fixed_intervals(0.0, 0.5)[0]) == 0


def test_words_are_found_in_order_and_take_their_tokens():
    text = "The cat, the hat."
    spans = locate_words(text, ["the", "cat,", "THE", "dog", "hat."])
    assert spans == [(0, 3), (4, 8), (9, 12), None, (13, 17)]
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (9, 12), (13, 16), (16, 17), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 0, 1]
    sequence = np.arange(16, dtype=np.float32).reshape(8, 2)
    vectors, mask = word_token_vectors(spans, offsets, special, sequence)
    assert mask.tolist() == [True, True, True, False, True]
    np.testing.assert_allclose(vectors[1], sequence[2:4].mean(axis=0))
    np.testing.assert_allclose(vectors[4], sequence[5:7].mean(axis=0))
    vectors, mask = word_token_vectors(spans, offsets, special, sequence[:7])  # cut: step 6 is the encoder's [SEP]
    np.testing.assert_allclose(vectors[4], sequence[5])  # so "hat." has only "hat"
    vectors, mask = word_token_vectors(spans, offsets, special, sequence[:5])  # cut after "the": step 4 is [SEP]
    assert mask.tolist() == [True, True, False, False, False]


# --- a hand-built cache -------------------------------------------------------------------------------------------

def _list_of_lists(values: np.ndarray) -> list[list[float]]:
    return [list(map(float, row)) for row in values]


def _token_vectors() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Per-token vectors of ``TEXT`` (token ``i`` is ``[i, 100 i]``) and the tokens' offsets."""
    from tokenizers import Tokenizer

    encoding = Tokenizer.from_file(default_tokenizer_path()).encode(TEXT)
    n = len(encoding.ids)
    return np.stack([np.arange(n), 100 * np.arange(n)], axis=1).astype(np.float32), encoding.offsets


def _commit(cache: str, parts: dict[str, pa.Table], schemas: dict[str, pa.Schema], descriptions: dict[str, dict]) -> None:
    attempt = new_attempt("handmade")
    files = [write_data_file(cache, table, f"{attempt}-part-00000.parquet", data) for table, data in parts.items()]
    commit_run(cache, RunCommit(run_id="handmade", attempt=attempt, files=files, schemas=schemas, descriptions=descriptions))


def build_cache(cache: str, *, with_words: bool = True) -> None:
    """Sample ``s1``: words of its audio file, MFCCs of that file in two windows, frames with per-frame vectors and the
    text's per-token vectors. Sample ``s2``: two words of its video's sound track, MFCCs of that track, nothing else."""
    tokens, _ = _token_vectors()
    words = [{"sample_id": "s1", "source": "audio", "word_index": i, "word": w, "start_s": s, "end_s": e, "probability": 0.9}
             for i, (w, s, e) in enumerate(WORDS_S1)]
    words += [{"sample_id": "s2", "source": "video", "word_index": i, "word": w, "start_s": s, "end_s": e, "probability": 0.9}
              for i, (w, s, e) in enumerate([("yes", 0.0, 0.4), ("no", 0.4, 0.8)])]
    segments = [{"sample_id": "s1", "source": "audio", "segment_index": 0, "start_s": 0.0, "end_s": 1.2, "text": "Hello big world",
                 "avg_logprob": -0.1, "no_speech_prob": 0.0},
                {"sample_id": "s1", "source": "audio", "segment_index": 1, "start_s": 2.0, "end_s": 2.4, "text": "again.",
                 "avg_logprob": -0.1, "no_speech_prob": 0.0}]
    audio = [{"sample_id": "s1", "source": "audio", "window_index": 0, "sample_rate": 16000, "start_s": 0.0, "end_s": 1.0,
              "frame_times_s": MFCC_TIMES[:4], "mfcc": _list_of_lists(MFCC[:4])},
             {"sample_id": "s1", "source": "audio", "window_index": 1, "sample_rate": 16000, "start_s": 1.0, "end_s": 2.7,
              "frame_times_s": MFCC_TIMES[4:], "mfcc": _list_of_lists(MFCC[4:])},
             {"sample_id": "s1", "source": "video", "window_index": 0, "sample_rate": 16000, "start_s": 0.0, "end_s": 1.0,
              "frame_times_s": [0.5], "mfcc": [[-1.0, -1.0]]},  # another source's clock: never mixed in
             {"sample_id": "s2", "source": "video", "window_index": 0, "sample_rate": 16000, "start_s": 0.0, "end_s": 1.0,
              "frame_times_s": [0.2, 0.6], "mfcc": [[2.0, 2.0], [4.0, 4.0]]}]
    frames = [{"sample_id": "s1", "frame_index": i, "timestamp_s": t, "image": b"", "width": 1, "height": 1}
              for i, t in enumerate(FRAME_TIMES)]
    samples = pa.table({"sample_id": ["s1", "s2"], "audio_duration_s": [2.7, None], "video_duration_s": [2.5, 0.8]})
    video = {"sample_id": "s1", "modality": "video", "encoder": "frames", "encoder_fingerprint": "0",
             "vector": list(map(float, FRAME_VECTORS.mean(axis=0))), "sequence": _list_of_lists(FRAME_VECTORS)}
    text_row = {"sample_id": "s1", "modality": "text", "encoder": "all-MiniLM-L6-v2", "encoder_fingerprint": "0",
                "vector": list(map(float, tokens.mean(axis=0))), "sequence": _list_of_lists(tokens)}
    schemas = {"samples": samples.schema, "audio": AUDIO, "frames": FRAMES, "text": TEXT_TABLE,
               VIDEO_SET: embeddings_schema(sequence=True), TEXT_SET: embeddings_schema(sequence=True)}
    parts = {"samples": samples, "audio": pa.Table.from_pylist(audio, schema=AUDIO),
             "frames": pa.Table.from_pylist(frames, schema=FRAMES),
             "text": pa.Table.from_pylist([{"sample_id": "s1", "text": TEXT, "token_ids": [0], "n_tokens_full": 1, "truncated": False}],
                                          schema=TEXT_TABLE),
             VIDEO_SET: pa.Table.from_pylist([video], schema=schemas[VIDEO_SET]),
             TEXT_SET: pa.Table.from_pylist([text_row], schema=schemas[TEXT_SET])}
    if with_words:
        schemas |= {"words": WORDS, "segments": SEGMENTS}
        parts |= {"words": pa.Table.from_pylist(words, schema=WORDS), "segments": pa.Table.from_pylist(segments, schema=SEGMENTS)}
    _commit(cache, parts, schemas, {VIDEO_SET: {"encoder": "frames", "dim": 3}, TEXT_SET: {"encoder": "all-MiniLM-L6-v2", "dim": 2}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("align") / "cache")
    build_cache(folder)
    return folder


def _rows(cache: str, table: str) -> dict[str, dict]:
    return {row["sample_id"]: row for row in CacheView.open(cache).read(table).to_pylist()}


def _word_token(word: str) -> np.ndarray:
    """The mean token vector of ``word`` in ``TEXT``, from the tokenizer's offsets."""
    tokens, offsets = _token_vectors()
    begin = TEXT.lower().index(word)
    inside = [i for i, (b, e) in enumerate(offsets) if e > b and b < begin + len(word) and e > begin]
    return tokens[inside].mean(axis=0)


def test_words_one_step_per_word_with_the_means_of_the_frames_inside(cache):
    table, run = align_cache(cache, "words")
    assert table.startswith("aligned/words-") and run.kind == "align"
    assert CacheView.open(cache).description(table)["aligned_on"] == "words"
    rows = _rows(cache, table)
    s1 = rows["s1"]
    assert s1["source"] == "audio" and s1["aligned_on"] == "words" and s1["n_steps"] == 4
    assert s1["label"] == [w for w, _, _ in WORDS_S1]
    assert s1["start_s"] == [s for _, s, _ in WORDS_S1] and s1["end_s"] == [e for _, _, e in WORDS_S1]
    audio = np.array(s1["audio"])
    np.testing.assert_allclose(audio[0], MFCC[[0, 1]].mean(axis=0))  # frames 0.1, 0.3 in [0, 0.5)
    np.testing.assert_allclose(audio[1], MFCC[[2, 3]].mean(axis=0))  # 0.6, 0.7 in [0.5, 1.0)
    np.testing.assert_allclose(audio[2], MFCC[4])  # 1.1 across the window boundary
    assert s1["audio_mask"] == [True, True, True, False]  # no MFCC frame in "again." [2.0, 2.4)
    assert not audio[3].any()
    video = np.array(s1["video"])
    np.testing.assert_allclose(video[0], FRAME_VECTORS[0])
    np.testing.assert_allclose(video[1], FRAME_VECTORS[[1, 2]].mean(axis=0))
    np.testing.assert_allclose(video[3], FRAME_VECTORS[3])
    assert s1["video_mask"] == [True, True, False, True]  # no frame in "world" [1.0, 1.2)
    text = np.array(s1["text"])
    assert s1["text_mask"] == [True] * 4
    for step, word in enumerate(["hello", "big", "world", "again."]):
        np.testing.assert_allclose(text[step], _word_token(word))
    assert not np.allclose(text[3], _word_token("again"))  # the full stop's token is part of "again."

    s2 = rows["s2"]  # words of the video's sound track; no frames, no text
    assert s2["source"] == "video" and s2["n_steps"] == 2
    assert s2["audio"] == [[2.0, 2.0], [4.0, 4.0]] and s2["audio_mask"] == [True, True]
    assert s2["video"] is None and s2["video_mask"] == [False, False]
    assert s2["text"] is None and s2["text_mask"] == [False, False]


def test_every_step_holds_only_frames_inside_its_interval(cache):
    table, _ = align_cache(cache, "words")
    for row in _rows(cache, table).values():
        for step, (start, end) in enumerate(zip(row["start_s"], row["end_s"])):
            if row["audio_mask"][step] and row["sample_id"] == "s1":
                inside = [i for i, t in enumerate(MFCC_TIMES) if start <= t < end]
                np.testing.assert_allclose(row["audio"][step], MFCC[inside].mean(axis=0))


def test_fixed_steps(cache):
    table, _ = align_cache(cache, "fixed:0.5")
    assert table.startswith("aligned/fixed-0.5s-")
    s1 = _rows(cache, table)["s1"]
    assert s1["aligned_on"] == "fixed:0.5" and s1["n_steps"] == 6  # 2.7 s of audio
    assert s1["start_s"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and s1["label"] == [""] * 6
    assert s1["audio_mask"] == [True, True, True, False, False, True]
    np.testing.assert_allclose(s1["audio"][5], MFCC[5])
    assert s1["video_mask"] == [True, True, False, False, True, False]
    assert s1["text_mask"] == [True, True, True, False, True, False]  # words at their midpoints: 0.25, 0.75, 1.1, 2.2
    np.testing.assert_allclose(s1["text"][4], _word_token("again."))


def test_segments(cache):
    table, _ = align_cache(cache, "segments")
    s1 = _rows(cache, table)["s1"]
    assert s1["n_steps"] == 2 and s1["label"] == ["Hello big world", "again."]
    np.testing.assert_allclose(s1["audio"][0], MFCC[:5].mean(axis=0))
    assert s1["audio_mask"] == [True, False]
    np.testing.assert_allclose(s1["video"][0], FRAME_VECTORS[:3].mean(axis=0))
    np.testing.assert_allclose(s1["text"][0], np.mean([_word_token(w) for w in ("hello", "big", "world")], axis=0), rtol=1e-6)
    assert "s2" not in _rows(cache, table)  # no segments of its own: no steps


def test_aligning_again_replaces_the_set(cache):
    first, _ = align_cache(cache, "words")
    second, _ = align_cache(cache, "words")
    assert first == second
    rows = CacheView.open(cache).read(second, columns=["sample_id"]).column("sample_id").to_pylist()
    assert sorted(rows) == ["s1", "s2"]
    assert CacheView.open(cache).read(second).schema.names == ALIGNED.names


def test_a_cache_without_words_says_to_transcribe(tmp_path):
    build_cache(str(tmp_path / "cache"), with_words=False)
    with pytest.raises(ConfigError, match="extract --transcribe"):
        align_cache(str(tmp_path / "cache"), "words")


def test_a_bad_on_is_refused_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="fixed:SECONDS"):
        align_cache(str(tmp_path / "nothing"), "sentence")


def test_an_empty_folder_says_to_extract_first(tmp_path):
    with pytest.raises(ConfigError, match="extract --transcribe"):
        align_cache(str(tmp_path / "nothing"), "fixed:0.5")


def test_an_ambiguous_or_unknown_set_is_refused(cache):
    with pytest.raises(ConfigError, match="--video-set"):
        align_cache(cache, "words", video_set="no-such-set")


def test_spilling_to_buckets_gives_the_same_set(cache):
    table, _ = align_cache(cache, "words")
    whole = _rows(cache, table)
    align_cache(cache, "words", budget_bytes=1, group_size=1)  # every table spilled to 2 buckets (s1, s2 in one, one empty)
    view = CacheView.open(cache)
    assert _rows(cache, table) == whole
    assert len(view.files(table)) == 2
