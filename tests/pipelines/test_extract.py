"""End to end: a manifest with every bad-input case, through the Beam pipeline, into the cache."""
import glob
import json
import os
import shutil

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.extract_graph import ExtractToCache
from pipelines.manifest import read_manifest
from schemas.config import ExtractConfig
from schemas.tables import FEATURE_TABLES, SCHEMA_VERSION, TABLE_NAMES, samples_schema
from tests import media
from tests.beam_helpers import in_process_pipeline


def _run(manifest: str, output: str, tokenizer_path: str, **kwargs):
    return run_extract(
        read_manifest(manifest),
        output=output,
        config=kwargs.pop("config", ExtractConfig(num_shards=3)),
        tokenizer_path=tokenizer_path,
        runner=FnApiRunner(),
        run_id=kwargs.pop("run_id", "run1"),
        **kwargs,
    )


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tokenizer_path):
    corpus_dir = tmp_path_factory.mktemp("corpus")
    manifest, expected = media.bad_corpus(str(corpus_dir))
    output = str(tmp_path_factory.mktemp("cache") / "out")
    report = _run(manifest, output, tokenizer_path)
    return manifest, output, expected, report


def _table(output: str, name: str):
    return ds.dataset(os.path.join(output, name), format="parquet").to_table()


def test_every_input_row_is_accounted_for_exactly_once(bad_run):
    _, output, expected, report = bad_run
    samples = _table(output, "samples")
    statuses = samples.column("status").to_pylist()
    assert statuses.count("ok") + statuses.count("partial") + statuses.count("failed") == len(expected)
    assert sorted(samples.column("manifest_row").to_pylist()) == list(range(len(expected)))
    kept_ids = [s for s, st in zip(samples.column("sample_id").to_pylist(), statuses) if st != "failed"]
    assert len(kept_ids) == len(set(kept_ids))
    assert report.summary["samples"] == {"ok": 2, "partial": 1, "failed": 10, "unchanged": 0, "total": 13}


def test_each_bad_input_gets_its_status_and_error_rows(bad_run):
    _, output, expected, _ = bad_run
    samples = {row["manifest_row"]: row for row in _table(output, "samples").to_pylist()}
    errors = _table(output, "errors").to_pylist()
    for row_number, want in enumerate(expected):
        got_errors = sorted((e["stage"], e["error_kind"]) for e in errors if e["manifest_row"] == row_number)
        assert (samples[row_number]["sample_id"], samples[row_number]["status"], got_errors) == (
            want["sample_id"], want["status"], want["errors"]
        ), f"manifest row {row_number}"
        assert samples[row_number]["n_errors"] == len(want["errors"])
    assert all(e["message"] for e in errors)


def test_features_of_good_samples(bad_run):
    _, output, _, _ = bad_run
    frames = _table(output, "frames").to_pylist()
    assert sorted((f["sample_id"], f["timestamp_s"]) for f in frames) == [
        ("good", 0.0), ("good", 1.0), ("silent_video", 0.0), ("silent_video", 1.0)
    ]
    assert all(f["image"][:2] == b"\xff\xd8" and min(f["width"], f["height"]) == 224 for f in frames)
    audio = _table(output, "audio").to_pylist()
    # 'good' has its video's sound track and a WAV; the silent video has no audio row; latin1_text reuses the WAV.
    assert sorted((a["sample_id"], a["source"]) for a in audio) == [("good", "audio"), ("good", "video"), ("latin1_text", "audio")]
    for row in audio:
        assert len(row["mfcc"]) == len(row["frame_times_s"]) > 0 and len(row["mfcc"][0]) == 40
    text = _table(output, "text").to_pylist()
    assert [(t["sample_id"], t["text"], t["truncated"]) for t in text] == [("good", "A fine day.", False)]


def test_files_carry_schema_version_config_and_explicit_schema(bad_run):
    _, output, _, _ = bad_run
    for table in TABLE_NAMES:
        files = glob.glob(os.path.join(output, table, "*.parquet"))
        assert files, table
        for path in files:
            schema = pq.read_schema(path)
            assert os.path.basename(path).startswith("run1-part-")
            assert schema.metadata[b"mmfeat.schema_version"] == SCHEMA_VERSION.encode()
            assert json.loads(schema.metadata[b"mmfeat.config"])["audio"]["hop_length"] == 160
            expected = samples_schema([]).names + ["label"] if table == "samples" else FEATURE_TABLES[table].names
            assert schema.names == expected


def test_run_json_matches_the_tables(bad_run):
    _, output, expected, _ = bad_run
    with open(os.path.join(output, "_run.json"), encoding="utf-8") as handle:
        run = json.load(handle)
    assert run["inputs"]["records"] == len(expected)
    assert run["rows"] == {name: _table(output, name).num_rows for name in TABLE_NAMES}
    assert run["failures"]["by_stage_and_kind"]["manifest/duplicate_id"] == 1
    assert run["failures"]["by_kind"]["unreadable"] == 5
    assert run["versions"]["apache-beam"] == "2.77.0"
    assert run["config"]["video"]["fps"] == 1.0 and run["wall_time_s"] > 0


def test_no_staging_or_temporary_files_are_left(bad_run):
    _, output, _, _ = bad_run
    found = sorted(os.path.relpath(p, output) for p in glob.glob(os.path.join(output, "**", "*"), recursive=True))
    assert [p for p in found if "tmp" in p or "_staging" in p or "beam-temp" in p] == []
    bookkeeping = ["_SUCCESS", "_run.json", "_runs", "_runs/run1.json"]
    assert sorted(p for p in found if not p.endswith(".parquet")) == sorted(bookkeeping + list(TABLE_NAMES))


def test_a_second_run_on_the_same_corpus_adds_nothing(bad_run, tokenizer_path, tmp_path):
    manifest, first_output, expected, _ = bad_run
    output = str(tmp_path / "copy")
    shutil.copytree(first_output, output)
    before = {name: _table(output, name).num_rows for name in TABLE_NAMES}
    report = _run(manifest, output, tokenizer_path, run_id="run2")
    # Readable samples are unchanged; manifest-level failures are re-evaluated and replace their earlier rows.
    with_valid_rows = [e for e in expected if not any(stage == "manifest" for stage, _ in e["errors"])]
    assert report.summary["samples"]["unchanged"] == len(with_valid_rows) == 10
    assert {name: _table(output, name).num_rows for name in TABLE_NAMES} == before


def test_overwrite_replaces_the_cache(tmp_path, tokenizer_path):
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": media.text(str(tmp_path / "a.txt"), "hi")}])
    output = str(tmp_path / "out")
    _run(manifest, output, tokenizer_path, run_id="one")
    _run(manifest, output, tokenizer_path, run_id="two", overwrite=True)
    assert _table(output, "samples").num_rows == 1
    assert {os.path.basename(p)[:4] for p in glob.glob(os.path.join(output, "*", "*.parquet"))} == {"two-"}


def test_extract_to_cache_transform_reports_what_it_wrote(tmp_path, tokenizer_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.tables import table_schemas

    corpus_dir = tmp_path / "c"
    corpus_dir.mkdir()
    manifest = media.manifest(
        str(corpus_dir / "m.jsonl"),
        [{"id": f"s{i}", "text": media.text(str(corpus_dir / f"s{i}.txt"), f"text number {i}")} for i in range(6)],
    )
    with in_process_pipeline() as pipeline:
        written = (
            pipeline
            | beam.Create(read_manifest(manifest).records)
            | ExtractToCache(
                config=ExtractConfig(), tokenizer_path=tokenizer_path, directory=str(tmp_path / "o"), schemas=table_schemas([]), num_shards=2
            )
            | beam.Map(lambda out: (out[0], out[2]))
            | beam.CombinePerKey(sum)
        )
        assert_that(written, equal_to([("samples", 6), ("text", 6)]))


def test_dask_runner_writes_the_same_rows(bad_run, tmp_path, tokenizer_path):
    """Beam 2.77's DaskRunner drops finish_bundle output and re-runs multi-output DoFns; our shape must not care."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    manifest, output, _, _ = bad_run
    dask_output = str(tmp_path / "dask")
    run_extract(
        read_manifest(manifest),
        output=dask_output,
        config=ExtractConfig(num_shards=3),
        tokenizer_path=tokenizer_path,
        runner=DaskRunner(),
        options=PipelineOptions(["--dask_npartitions=4"]),
        run_id="run1",
    )
    for table in TABLE_NAMES:
        direct_rows = sorted(map(repr, _table(output, table).to_pylist()))
        dask_rows = sorted(map(repr, _table(dask_output, table).to_pylist()))
        assert dask_rows == direct_rows, table
    leftovers = [p for p in glob.glob(os.path.join(dask_output, "**", "*"), recursive=True) if "beam-temp" in p or "_staging" in p]
    assert leftovers == []
