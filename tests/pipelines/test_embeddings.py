"""Embeddings inside the extract pipeline, and incremental reruns over a growing or changing corpus."""
import collections
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.cache import CacheView
from schemas.config import EncodeConfig, ExtractConfig
from tests import media, tiny_models
from tests.beam_helpers import assert_same_cache_rows, cache_tables
from transforms.encoders.registry import resolve_encoders

FAST = dict(text_encoder="minilm", image_encoder="builtin:color-hog", audio_encoder="builtin:mfcc-stats")


def _corpus(directory) -> str:
    rows = []
    for i in range(6):
        row = {"id": f"s{i}", "label": i % 2, "text": media.text(str(directory / f"s{i}.txt"), f"sample number {i} says hello")}
        if i % 3 != 2:
            row["video"] = media.video(str(directory / f"s{i}.mp4"), seconds=1.0, with_audio=i % 3 == 0)
        if i % 3 != 0:
            row["audio"] = media.wav(str(directory / f"s{i}.wav"), seconds=0.5 + i * 0.1, frequency_hz=200 + 50 * i)
        rows.append(row)
    return media.manifest(str(directory / "m.jsonl"), rows)


def _run(manifest, output, tokenizer_path, *, run_id, recompute=False, runner=None, options=None, **encoders):
    encode = EncodeConfig(**{**FAST, **encoders})
    config = ExtractConfig(num_shards=2)
    return run_extract(
        open_manifest(manifest), output=output, config=config, tokenizer_path=tokenizer_path, runner=runner or FnApiRunner(),
        options=options, run_id=run_id, encoders=resolve_encoders(encode, config), encode=encode, recompute=recompute,
    )


def _rows(output, table):
    return CacheView.open(output).read(table).to_pylist()


def _set(output, modality):
    (table,) = CacheView.open(output).embedding_tables(modality)
    return table


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tokenizer_path):
    directory = tmp_path_factory.mktemp("corpus")
    manifest = _corpus(directory)
    output = str(tmp_path_factory.mktemp("cache") / "out")
    report = _run(manifest, output, tokenizer_path, run_id="r1")
    return directory, manifest, output, report


def test_every_sample_is_embedded_once_per_modality(first_run):
    _, _, output, report = first_run
    assert report.summary["samples"]["ok"] == 6
    expected = {"text": 6, "video": 4, "audio": 6}  # s0/s3 have sound in their video; s1, s2, s4, s5 a WAV
    for modality, n in expected.items():
        rows = _rows(output, _set(output, modality))
        assert len(rows) == n and len({r["sample_id"] for r in rows}) == n
        dims = {len(r["vector"]) for r in rows}
        assert dims == {report.summary["encoders"][modality]["dim"]}
    assert report.summary["encoders"]["text"]["dim"] == 384 and report.summary["encoders"]["video"]["dim"] == 108


def test_embedding_sets_record_the_encoder(first_run):
    _, _, output, report = first_run
    view = CacheView.open(output)
    table = _set(output, "text")
    description = view.description(table)
    assert description["encoder"] == "all-MiniLM-L6-v2" and description["modality"] == "text"
    assert description["encoder_fingerprint"] == report.summary["encoders"]["text"]["fingerprint"]
    assert description["dim"] == 384
    # Plain float32 lists (Delta has no fixed-size lists): in the table and in every data file; the width is the description's.
    assert view.read(table).schema.field("vector").type == pa.list_(pa.float32())
    for path in view.files(table):
        assert pq.read_schema(path.removeprefix("file://")).field("vector").type == pa.list_(pa.float32())
    assert {len(row["vector"]) for row in view.read(table, ["vector"]).to_pylist()} == {384}


def _copy(first_run, tmp_path):
    import shutil

    directory, manifest, output, _ = first_run
    copy = str(tmp_path / "cache")
    shutil.copytree(output, copy)
    return directory, manifest, copy


def test_rerun_on_an_unchanged_corpus_adds_no_rows(first_run, tmp_path, tokenizer_path):
    _, manifest, output = _copy(first_run, tmp_path)
    before = cache_tables(output)
    report = _run(manifest, output, tokenizer_path, run_id="r2")
    assert report.summary["samples"]["unchanged"] == 6 and report.summary["samples"]["total"] == 0
    assert all(count == 0 for count in report.summary["rows"].values())
    assert {t: len(r) for t, r in cache_tables(output).items()} == {t: len(r) for t, r in before.items()}


def test_changing_one_encoder_reembeds_only_that_modality(first_run, tmp_path, tokenizer_path):
    _, manifest, output = _copy(first_run, tmp_path)
    before = cache_tables(output)
    scripted = tiny_models.torchscript_mfcc_file(str(tmp_path / "mfcc.pt"))
    report = _run(manifest, output, tokenizer_path, run_id="r2", audio_encoder=scripted)
    after = cache_tables(output)
    new_sets = set(after) - set(before)
    assert len(new_sets) == 1 and new_sets.pop().startswith("embeddings/audio/mfcc.pt-")
    assert report.summary["rows"][report.summary["encoders"]["audio"]["table"]] == 6
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table  # nothing else was recomputed or dropped


def test_adding_the_inline_audio_encoder_embeds_cached_samples_as_a_first_run_does(first_run, tmp_path, tokenizer_path):
    """builtin:mfcc-stats is computed by the extraction: on a cache without its set, a run re-decodes the sound of the
    unchanged samples, writes only that set, and gets the vectors a run that computed everything got."""
    _, manifest, first_output, _ = first_run
    output = str(tmp_path / "out")
    _run(manifest, output, tokenizer_path, run_id="r1", audio_encoder="none")
    before = cache_tables(output)
    report = _run(manifest, output, tokenizer_path, run_id="r2")
    assert (report.summary["samples"]["unchanged"], report.summary["samples"]["total"]) == (6, 0)
    after = cache_tables(output)
    (new_set,) = set(after) - set(before)
    assert new_set == _set(first_output, "audio")
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table  # nothing else was recomputed or dropped
    vectors = {row["sample_id"]: row["vector"] for row in after[new_set]}
    assert vectors == {row["sample_id"]: row["vector"] for row in _rows(first_output, new_set)} and len(vectors) == 6


def test_a_changed_file_is_recomputed_without_duplicates(first_run, tmp_path, tokenizer_path, monkeypatch):
    directory, manifest, output = _copy(first_run, tmp_path)
    old_text = next(r for r in _rows(output, _set(output, "text")) if r["sample_id"] == "s1")
    original = os.stat(directory / "s1.txt")
    media.text(str(directory / "s1.txt"), "a completely different sentence about whales")

    def commit_rewrites(*args, **kwargs):
        raise AssertionError("the commit rewrote a file: the workers should have")

    monkeypatch.setattr("schemas.cache.commit.replace_file", commit_rewrites)  # the workers take s1's old rows out
    try:
        report = _run(manifest, output, tokenizer_path, run_id="r2")
    finally:  # the module's corpus as it was, modification time included
        media.text(str(directory / "s1.txt"), "sample number 1 says hello")
        os.utime(directory / "s1.txt", ns=(original.st_atime_ns, original.st_mtime_ns))
    assert (report.summary["samples"]["ok"], report.summary["samples"]["unchanged"]) == (1, 5)
    rows = cache_tables(output)
    for table, table_rows in rows.items():
        keys = collections.Counter((r["sample_id"], r.get("source"), r.get("window_index"), r.get("frame_index")) for r in table_rows)
        assert all(count == 1 for count in keys.values()), table
    assert [r["text"] for r in rows["text"] if r["sample_id"] == "s1"] == ["a completely different sentence about whales"]
    new_text = next(r for r in rows[_set(output, "text")] if r["sample_id"] == "s1")
    assert new_text["vector"] != old_text["vector"]
    assert len(rows["samples"]) == 6


def test_recompute_forces_everything_without_duplicates(first_run, tmp_path, tokenizer_path):
    _, manifest, output = _copy(first_run, tmp_path)
    before = {t: len(r) for t, r in cache_tables(output).items()}
    report = _run(manifest, output, tokenizer_path, run_id="r2", recompute=True)
    assert report.summary["samples"]["ok"] == 6
    assert {t: len(r) for t, r in cache_tables(output).items()} == before
    assert {r["run_id"] for r in _rows(output, "samples")} == {"r2"}


def test_a_failed_embedding_makes_the_sample_partial(tmp_path, tokenizer_path):
    rows = [
        {"id": "long", "audio": media.wav(str(tmp_path / "long.wav"), seconds=1.0)},
        {"id": "short", "audio": media.wav(str(tmp_path / "short.wav"), seconds=0.15)},  # 13 MFCC frames: the model wants 20
    ]
    manifest = media.manifest(str(tmp_path / "m.jsonl"), rows)
    scripted = tiny_models.torchscript_mfcc_file(str(tmp_path / "mfcc.pt"))
    output = str(tmp_path / "out")
    report = _run(manifest, output, tokenizer_path, run_id="r1", audio_encoder=scripted)
    statuses = {r["sample_id"]: (r["status"], r["n_errors"]) for r in _rows(output, "samples")}
    assert statuses == {"long": ("ok", 0), "short": ("partial", 1)}
    (error,) = _rows(output, "errors")
    assert (error["sample_id"], error["stage"], error["error_kind"]) == ("short", "embed", "encoder_failed")
    assert "needs at least 20 MFCC frames" in error["message"]
    assert report.summary["failures"]["by_stage"] == {"embed": 1}


def test_dask_runner_gives_the_same_embeddings(first_run, tmp_path, tokenizer_path, dask_address):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    _, manifest, output, _ = first_run
    dask_output = str(tmp_path / "dask")
    options = PipelineOptions(["--dask_npartitions=3", f"--dask_client_address={dask_address}"])
    _run(manifest, dask_output, tokenizer_path, run_id="r1", runner=DaskRunner(), options=options)
    assert_same_cache_rows(cache_tables(output), cache_tables(dask_output))


def test_beam_counters_are_reported_in_the_run_summary(first_run):
    _, _, output, report = first_run
    metrics = report.summary["metrics"]
    rows = {t: len(r) for t, r in cache_tables(output).items()}
    assert metrics["samples_ok"] == 6 and metrics["frames"] == rows["frames"]
    assert metrics["tokens"] == sum(len(r["token_ids"]) for r in _rows(output, "text"))
    assert metrics["embeddings_text"] == 6 and metrics["embeddings_video"] == 4 and metrics["embeddings_audio"] == 6
    assert metrics["audio_ms"] == pytest.approx(1000 * sum(r["audio_duration_s"] or 0 for r in _rows(output, "samples")), abs=10)
    assert CacheView.open(output).run.summary["metrics"] == metrics


def test_progress_is_logged_while_a_local_run_works(tmp_path, tokenizer_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr("transforms.extract_sample_fn._PROGRESS_EVERY_S", 0.0)
    manifest = _corpus(tmp_path)
    with caplog.at_level(logging.INFO, logger="transforms.extract_sample_fn"):
        _run(manifest, str(tmp_path / "out"), tokenizer_path, run_id="p", text_encoder="none", image_encoder="none", audio_encoder="none")
    progress = [r.getMessage() for r in caplog.records if "extracted" in r.getMessage()]
    assert progress and progress[-1].startswith("extracted 6 samples in this worker so far")


def test_a_changed_label_is_picked_up_by_the_next_run(first_run, tmp_path, tokenizer_path):
    directory, manifest, output = _copy(first_run, tmp_path)
    with open(manifest, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    rows[2]["label"] = 7
    relabelled = media.manifest(str(tmp_path / "relabelled.jsonl"), rows)
    report = _run(relabelled, output, tokenizer_path, run_id="r2")
    assert (report.summary["samples"]["ok"], report.summary["samples"]["unchanged"]) == (1, 5)
    samples = _rows(output, "samples")
    assert sorted((s["sample_id"], s["label"]) for s in samples) == [(f"s{i}", 7 if i == 2 else i % 2) for i in range(6)]
    assert len(_rows(output, _set(output, "text"))) == 6


def test_an_unchanged_rerun_loads_no_model_and_a_changed_sample_loads_them_when_its_batch_comes(first_run, tmp_path, tokenizer_path, caplog):
    directory, manifest, output = _copy(first_run, tmp_path)
    caplog.set_level("INFO", logger="transforms.embed_handler")
    report = _run(manifest, output, tokenizer_path, run_id="r-same")
    assert report.summary["samples"]["unchanged"] == 6
    assert "loading the" not in caplog.text  # RunInference set up its workers, but no batch came: no model loaded
    caplog.clear()
    media.text(str(directory / "s1.txt"), "sample number 1 now says goodbye")  # s1 is recomputed: video, audio, text
    _run(manifest, output, tokenizer_path, run_id="r-edit")
    loaded = sorted(line.split("loading the ")[1] for line in caplog.text.splitlines() if "loading the" in line)
    assert [line.split()[0] for line in loaded] == ["text", "video"]  # each once; builtin:mfcc-stats has no model (inline)
    assert len(_rows(output, _set(output, "audio"))) == 6
