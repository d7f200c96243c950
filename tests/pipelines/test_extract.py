"""End to end: a manifest with every bad-input case, through the Beam pipeline, into the cache."""
import glob
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.extract_graph import ExtractToCache
from pipelines.manifest import open_manifest
from schemas.cache import CacheView, read_pending, runs
from schemas.config import ExtractConfig
from schemas.errors import ConfigError
from schemas.tables import FEATURE_TABLES, SCHEMA_VERSION, TABLE_NAMES, samples_schema
from tests import media
from tests.beam_helpers import in_process_pipeline


def _run(manifest: str, output: str, tokenizer_path: str, **kwargs):
    return run_extract(
        open_manifest(manifest),
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
    return CacheView.open(output).read(name)


def _uncommitted(output: str) -> list[str]:
    """Files in the cache folder that no committed table version of the latest state references, and ``_pending`` entries."""
    view = CacheView.open(output)
    committed = {os.path.normpath(path.removeprefix("file://")) for table in view.tables() for path in view.files(table)}
    found = [p for p in glob.glob(os.path.join(output, "**", "*"), recursive=True) if os.path.isfile(p)]
    return sorted(os.path.relpath(p, output) for p in found
                  if "_delta_log" not in p.split(os.sep) and os.path.normpath(p) not in committed)


def test_every_input_row_is_accounted_for_exactly_once(bad_run):
    manifest, output, expected, report = bad_run
    samples = _table(output, "samples")
    statuses = samples.column("status").to_pylist()
    assert statuses.count("ok") + statuses.count("partial") + statuses.count("failed") == len(expected)
    assert sorted(samples.column("manifest_row").to_pylist()) == media.row_keys(manifest)
    kept_ids = [s for s, st in zip(samples.column("sample_id").to_pylist(), statuses) if st != "failed"]
    assert len(kept_ids) == len(set(kept_ids))
    assert report.summary["samples"] == {"ok": 2, "partial": 1, "failed": 10, "unchanged": 0, "total": 13, "unchanged_by": {}}


def test_each_bad_input_gets_its_status_and_error_rows(bad_run):
    manifest, output, expected, _ = bad_run
    samples = {row["manifest_row"]: row for row in _table(output, "samples").to_pylist()}
    errors = _table(output, "errors").to_pylist()
    for row_number, want in zip(media.row_keys(manifest), expected):
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


def test_tables_carry_schema_version_config_and_explicit_schema(bad_run):
    _, output, _, _ = bad_run
    view = CacheView.open(output)
    assert view.run.run_id == "run1" and view.run.summary["config"]["audio"]["hop_length"] == 160
    for table in TABLE_NAMES:
        assert view.description(table)["schema_version"] == SCHEMA_VERSION, table
        expected = samples_schema([]).names + ["label"] if table == "samples" else FEATURE_TABLES[table].names
        assert view.read(table).schema.names == expected, table
        files = view.files(table)
        assert files, table
        for path in files:
            assert re.fullmatch(r"run1-[0-9a-f]{8}-part-\d{5}\.parquet", os.path.basename(path)), path
            assert pq.read_schema(path.removeprefix("file://")).names == expected


def test_run_summary_matches_the_tables(bad_run):
    _, output, expected, report = bad_run
    run = CacheView.open(output).run.summary
    assert [(r.run_id, r.kind, r.summary) for r in runs(output)] == [("run1", "extract", run)]
    assert run["samples"] == report.summary["samples"] and run["run_id"] == "run1"
    assert run["inputs"]["records"] == len(expected)
    assert run["rows"] == {name: _table(output, name).num_rows for name in TABLE_NAMES}
    assert run["failures"]["by_stage_and_kind"]["manifest/duplicate_id"] == 1
    assert run["failures"]["by_kind"]["unreadable"] == 5
    assert run["versions"]["apache-beam"] == "2.77.0"
    assert run["config"]["video"]["fps"] == 1.0 and run["wall_time_s"] > 0


def test_no_pending_uncommitted_or_temporary_files_are_left(bad_run):
    _, output, _, _ = bad_run
    found = sorted(os.path.relpath(p, output) for p in glob.glob(os.path.join(output, "**", "*"), recursive=True))
    assert [p for p in found if "tmp" in p or "beam-temp" in p or p.startswith("_pending" + os.sep)] == []
    assert _uncommitted(output) == []
    assert sorted(p for p in os.listdir(output) if p != "_pending") == sorted(TABLE_NAMES)


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
    view = CacheView.open(output)
    assert {os.path.basename(p)[:4] for table in view.tables() for p in view.files(table)} == {"two-"}
    assert CacheView.open(output, as_of="one").read("samples").num_rows == 1  # the replaced state stays readable


def test_a_schema_version_1_cache_is_refused_then_replaced_with_overwrite(tmp_path, tokenizer_path):
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": media.text(str(tmp_path / "a.txt"), "hi")}])
    output = tmp_path / "out"
    for folder in ["samples", "text", "_runs"]:
        (output / folder).mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ["old"]}), output / "samples" / "part-00000.parquet")
    pq.write_table(pa.table({"sample_id": ["old"]}), output / "text" / "part-00000.parquet")
    for name in ["_run.json", "_SUCCESS", "_runs/old.json"]:
        (output / name).write_text("{}")
    with pytest.raises(ConfigError, match="schema version 1 .*--overwrite"):
        _run(manifest, str(output), tokenizer_path)
    assert (output / "_run.json").exists()  # refused before touching anything
    _run(manifest, str(output), tokenizer_path, run_id="new", overwrite=True)
    assert CacheView.open(str(output)).read("samples", ["sample_id"]).column("sample_id").to_pylist() == ["a"]
    assert sorted(p for p in os.listdir(output) if p != "_pending") == sorted(TABLE_NAMES)
    assert _uncommitted(str(output)) == []


def test_an_output_given_as_a_file_uri_lands_in_that_folder(tmp_path, tokenizer_path):
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": media.text(str(tmp_path / "a.txt"), "hi")}])
    report = _run(manifest, f"file://{tmp_path}/out", tokenizer_path)
    assert report.summary["samples"]["ok"] == 1
    assert CacheView.open(str(tmp_path / "out")).read("text", ["text"]).column("text").to_pylist() == ["hi"]
    assert _uncommitted(str(tmp_path / "out")) == []


def test_extract_to_cache_transform_reports_what_it_wrote(tmp_path, tokenizer_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.tables import table_schemas
    from transforms.manifest_rows import ReadManifestRows
    from transforms.parquet_sink import WritePendingList, shard_of

    corpus_dir = tmp_path / "c"
    corpus_dir.mkdir()
    manifest = media.manifest(
        str(corpus_dir / "m.jsonl"),
        [{"id": f"s{i}", "text": media.text(str(corpus_dir / f"s{i}.txt"), f"text number {i}")} for i in range(6)],
    )
    cache, attempt = str(tmp_path / "o"), "t-00000000"
    shards = {shard_of(f"s{i}", 2) for i in range(6)}
    with in_process_pipeline() as pipeline:
        written = (
            pipeline
            | ReadManifestRows(open_manifest(manifest).shards)
            | beam.Map(lambda record: (record, None))  # nothing cached
            | ExtractToCache(
                config=ExtractConfig(), tokenizer_path=tokenizer_path, cache=cache, attempt=attempt, schemas=table_schemas([]), num_shards=2
            )
            | WritePendingList(cache, attempt)
        )
        assert_that(written, equal_to([2 * len(shards)]))  # one file per shard of samples and of text
    rows: dict[str, int] = {}
    for data_file in read_pending(cache, attempt).files:
        rows[data_file.table] = rows.get(data_file.table, 0) + data_file.n_rows
    assert rows == {"samples": 6, "text": 6}


def test_dask_runner_writes_the_same_rows(bad_run, tmp_path, tokenizer_path, dask_address):
    """Beam 2.77's DaskRunner drops finish_bundle output and re-runs multi-output DoFns; our shape must not care."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    manifest, output, _, _ = bad_run
    dask_output = str(tmp_path / "dask")
    with open(manifest, encoding="utf-8") as handle:  # the same rows, as two shards beside the media
        lines = handle.readlines()
    for part, chunk in enumerate((lines[: len(lines) // 2], lines[len(lines) // 2:])):
        with open(os.path.join(os.path.dirname(manifest), f"part-{part}.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(chunk)
    run_extract(
        open_manifest(os.path.join(os.path.dirname(manifest), "part-*.jsonl")),
        output=dask_output,
        config=ExtractConfig(num_shards=3),
        tokenizer_path=tokenizer_path,
        runner=DaskRunner(),
        options=PipelineOptions(["--dask_npartitions=4", f"--dask_client_address={dask_address}"]),
        run_id="run1",
    )
    def rows(cache: str, table: str) -> list[str]:  # row keys, and the messages that name them, differ between one file and two
        return sorted(repr({k: v for k, v in row.items() if k != "manifest_row" and not (k == "message" and row["stage"] == "manifest")})
                      for row in _table(cache, table).to_pylist())

    for table in TABLE_NAMES:
        assert rows(dask_output, table) == rows(output, table), table
    leftovers = [p for p in glob.glob(os.path.join(dask_output, "**", "*"), recursive=True) if "beam-temp" in p or "tmp-" in p]
    assert leftovers == [] and _uncommitted(dask_output) == []


def test_a_text_longer_than_the_limit_is_a_warning_not_a_failure(tmp_path, tokenizer_path):
    from dataclasses import replace

    manifest = media.manifest(str(tmp_path / "m.jsonl"), [
        {"id": "long", "text": media.text(str(tmp_path / "long.txt"), "word " * 100)},
        {"id": "short", "text": media.text(str(tmp_path / "short.txt"), "word")},
    ])
    base = ExtractConfig(num_shards=1)
    report = _run(manifest, str(tmp_path / "out"), tokenizer_path, config=replace(base, text=replace(base.text, max_text_bytes=50)))
    assert report.summary["warnings"] == {"text/text_too_long": 1}
    assert report.summary["failures"]["by_stage_and_kind"] == {}
    assert report.summary["samples"]["ok"] == 2
    assert "warnings_text_text_too_long" in report.summary["metrics"] and not any(
        name.startswith("failures_") for name in report.summary["metrics"])
