"""Incremental runs decide "unchanged" from file identities, and read a file's content only when its identity changed."""
import os

import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.cache import CacheView, supersede
from schemas.config import ExtractConfig
from schemas.errors import ConfigError
from tests import media
from transforms.unchanged import files_identity


def _run(manifest: str, output: str, tokenizer_path: str, run_id: str, *, allow_empty: bool = False, **kwargs):
    return run_extract(open_manifest(manifest, allow_empty=allow_empty), output=output, config=ExtractConfig(num_shards=2),
                       tokenizer_path=tokenizer_path, runner=FnApiRunner(), run_id=run_id, allow_empty=allow_empty, **kwargs)


@pytest.fixture()
def texts(tmp_path):
    rows = [{"id": f"t{i}", "text": media.text(str(tmp_path / f"t{i}.txt"), f"text number {i}")} for i in range(4)]
    return tmp_path, media.manifest(str(tmp_path / "m.jsonl"), rows)


def _hashed(report) -> int:
    return report.summary["metrics"].get("content_files_hashed", 0)


def test_an_unchanged_rerun_reads_no_file_content(texts, tmp_path, tokenizer_path):
    _, manifest = texts
    output = str(tmp_path / "cache")
    first = _run(manifest, output, tokenizer_path, "one")
    assert _hashed(first) == 4  # new files are hashed once, so that a later touch can be told from an edit
    again = _run(manifest, output, tokenizer_path, "two")
    assert again.summary["samples"]["unchanged"] == 4 and again.summary["samples"]["unchanged_by"] == {"metadata": 4}
    assert _hashed(again) == 0


def test_a_touched_file_is_hashed_and_found_unchanged_an_edited_one_recomputed(texts, tmp_path, tokenizer_path):
    directory, manifest = texts
    output = str(tmp_path / "cache")
    _run(manifest, output, tokenizer_path, "one")
    os.utime(directory / "t0.txt", ns=(1, 1))  # same bytes, another modification time
    media.text(str(directory / "t1.txt"), "an edited text")
    report = _run(manifest, output, tokenizer_path, "two")
    assert report.summary["samples"]["unchanged_by"] == {"content": 1, "metadata": 2}
    assert (report.summary["samples"]["ok"], _hashed(report)) == (1, 2)
    assert report.summary["metrics"]["file_identities_recorded"] == 1
    texts_now = {r["sample_id"]: r["text"] for r in CacheView.open(output).read("text").to_pylist()}
    assert texts_now["t1"] == "an edited text"
    identities = {r["sample_id"]: r["file_identity"] for r in CacheView.open(output).read("samples").to_pylist()}
    assert identities["t0"] == files_identity({"text": str(directory / "t0.txt")})  # the touched file's, recorded
    third = _run(manifest, output, tokenizer_path, "three")  # the edited and the touched samples' identities are the cache's now
    assert third.summary["samples"]["unchanged_by"] == {"metadata": 4} and _hashed(third) == 0


def test_verify_content_finds_an_edit_that_kept_size_and_time(texts, tmp_path, tokenizer_path):
    directory, manifest = texts
    output = str(tmp_path / "cache")
    _run(manifest, output, tokenizer_path, "one")
    path = directory / "t2.txt"
    before = os.stat(path)
    media.text(str(path), "text number X")  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _run(manifest, output, tokenizer_path, "two").summary["samples"]["unchanged"] == 4  # identity alone cannot see it
    report = _run(manifest, output, tokenizer_path, "three", verify_content=True)
    assert (report.summary["samples"]["ok"], _hashed(report)) == (1, 4)
    assert {r["sample_id"]: r["text"] for r in CacheView.open(output).read("text").to_pylist()}["t2"] == "text number X"
    files = {row["path"] for row in supersede.file_rows(CacheView.open(output).table("samples"))}
    fourth = _run(manifest, output, tokenizer_path, "four", verify_content=True)  # every file read, none with a new identity
    assert fourth.summary["samples"]["unchanged_by"] == {"content": 4}
    assert {row["path"] for row in supersede.file_rows(CacheView.open(output).table("samples"))} == files  # nothing rewritten


def test_a_duplicate_id_across_shards_keeps_the_first_by_shard_and_line(tmp_path, tokenizer_path):
    a = media.text(str(tmp_path / "a.txt"), "first")
    b = media.text(str(tmp_path / "b.txt"), "second")
    media.manifest(str(tmp_path / "m-0.jsonl"), [{"id": "x", "text": a}, {"id": "y", "text": a}])
    media.manifest(str(tmp_path / "m-1.jsonl"), [{"id": "x", "text": b}])
    output = str(tmp_path / "cache")
    report = _run(str(tmp_path / "m-*.jsonl"), output, tokenizer_path, "one")
    assert report.n_inputs == 3
    samples = CacheView.open(output).read("samples", ["sample_id", "status", "manifest_ok", "text"]).to_pylist()
    assert sorted((s["sample_id"], s["manifest_ok"], s["text"]) for s in samples) == [("x", False, b), ("x", True, a), ("y", True, a)]
    (duplicate,) = CacheView.open(output).read("errors").to_pylist()
    assert duplicate["error_kind"] == "duplicate_id" and "the first row is kept" in duplicate["message"]


def test_an_input_without_rows_fails_unless_allowed(tmp_path, tokenizer_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n\n", encoding="utf-8")  # not empty on disk, but without a row
    output = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="no rows.*--allow-empty"):
        _run(str(manifest), output, tokenizer_path, "one")
    assert not os.path.exists(os.path.join(output, "samples"))  # nothing committed
    report = _run(str(manifest), output, tokenizer_path, "two", allow_empty=True)
    assert report.n_inputs == 0 and CacheView.open(output).read("samples").num_rows == 0


def test_an_unchanged_rerun_rewrites_only_the_files_holding_manifest_level_rows(tmp_path, tokenizer_path, monkeypatch):
    """Each extraction replaces the manifest-level rows (an invalid ``samples`` row, its ``manifest`` error): the files'
    statistics say which files hold any, so a rerun reads just those, not every ``samples`` and ``errors`` file."""
    rows = [{"id": f"t{i}", "text": media.text(str(tmp_path / f"t{i}.txt"), f"text {i}")} for i in range(6)]
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [*rows, {"id": "bad", "label": 1}])  # no modality
    output = str(tmp_path / "cache")
    _run(manifest, output, tokenizer_path, "one")
    files = {table: {row["path"]: row for row in supersede.file_rows(CacheView.open(output).table(table))} for table in ("samples", "errors")}
    holding_bad = {path for path, row in files["samples"].items() if row["min.sample_id"] <= "bad" <= row["max.sample_id"]
                   and "bad" in CacheView.open(output).read("samples").column("sample_id").to_pylist()}
    read = []
    original = supersede.read_data_file
    monkeypatch.setattr(supersede, "read_data_file", lambda cache, table, path, columns=None: read.append((table, path)) or original(cache, table, path, columns))
    report = _run(manifest, output, tokenizer_path, "two")
    assert report.summary["samples"]["unchanged"] == 6
    assert len(files["samples"]) == 2 and {path for table, path in read if table == "samples"} == holding_bad and len(holding_bad) == 1
    assert {table for table, _ in read} == {"samples", "errors"}
    view = CacheView.open(output)
    assert sorted(view.read("samples").column("sample_id").to_pylist()) == sorted([f"t{i}" for i in range(6)] + ["bad"])
    assert view.read("errors").column("stage").to_pylist() == ["manifest"]
