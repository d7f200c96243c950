"""A small manifest is read and joined with the cache by the launcher (``ExtractCorpus.join_here``) and, on one
process, its samples are extracted side by side in threads: the cache is the one the workers' join and one sample at a
time write, and a run with nothing to compute runs no pipeline."""
import os

import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineRunner

from pipelines import extract_graph
from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.cache import CacheView
from schemas.config import DECODE_THREADS_ENV, ExtractConfig
from tests import media
from tests.beam_helpers import assert_same_cache_rows, cache_tables


class _NoPipeline(PipelineRunner):
    """A runner that fails the run if a pipeline is given to it."""

    def run_pipeline(self, pipeline, options):
        raise RuntimeError("a pipeline ran")


def _run(manifest: str, output: str, tokenizer_path: str, run_id: str, *, runner=None, spread_over: int = 1):
    return run_extract(open_manifest(manifest), output=output, config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path,
                       runner=runner or FnApiRunner(), run_id=run_id, spread_over=spread_over)


def _counts(report) -> dict:
    return {key: report.summary["samples"][key] for key in ("total", "ok", "partial", "failed", "unchanged", "unchanged_by")}


def test_the_launcher_s_join_and_threads_write_what_the_workers_join_writes(tmp_path, tokenizer_path, monkeypatch):
    """Every bad-input case (duplicate and missing ids, broken files, extra columns), a first run and reruns after an
    edit: the launcher's join with one chunk in 2 threads, the workers' join with chunks of 4 in 2 threads (one
    process, a large corpus), and the workers' join with one sample at a time (another runner)."""
    (tmp_path / "corpus").mkdir()
    manifest, expected = media.bad_corpus(str(tmp_path / "corpus"))
    here, chunks, there = str(tmp_path / "here"), str(tmp_path / "chunks"), str(tmp_path / "there")

    def both(run_id: str) -> dict:
        with monkeypatch.context() as patch:
            patch.setenv(DECODE_THREADS_ENV, "2")
            joined_here = _run(manifest, here, tokenizer_path, run_id)
            patch.setattr(extract_graph, "LAUNCHER_JOIN_MAX_BYTES", -1)  # no manifest is small enough: the workers join
            patch.setattr(extract_graph, "CHUNK_SAMPLES", 4)
            in_chunks = _run(manifest, chunks, tokenizer_path, run_id)
            one_by_one = _run(manifest, there, tokenizer_path, run_id, spread_over=0)
        assert _counts(joined_here) == _counts(in_chunks) == _counts(one_by_one)
        assert_same_cache_rows(cache_tables(there), cache_tables(here))
        assert_same_cache_rows(cache_tables(there), cache_tables(chunks))
        return _counts(joined_here)

    both("one")
    media.text(str(tmp_path / "corpus" / "good.txt"), "Another fine day.")
    os.utime(str(tmp_path / "corpus" / "silent.mp4"), (1, 1))  # touched only: found unchanged by its content
    both("two")
    again = both("three")  # rows the manifest fails (a duplicate id, no id, no modality) fail again; the touched file's new identity was recorded
    assert again == {"total": 3, "ok": 0, "partial": 0, "failed": 3, "unchanged": len(expected) - 3,
                     "unchanged_by": {"metadata": len(expected) - 3}}


def test_an_unchanged_small_rerun_runs_no_pipeline_and_a_changed_one_does(tmp_path, tokenizer_path):
    rows = [{"id": f"t{i}", "text": media.text(str(tmp_path / f"t{i}.txt"), f"text number {i}")} for i in range(3)]
    manifest = media.manifest(str(tmp_path / "m.jsonl"), rows)
    output = str(tmp_path / "cache")
    _run(manifest, output, tokenizer_path, "one")
    again = _run(manifest, output, tokenizer_path, "two", runner=_NoPipeline())
    assert _counts(again) == {"total": 0, "ok": 0, "partial": 0, "failed": 0, "unchanged": 3, "unchanged_by": {"metadata": 3}}
    assert again.summary["metrics"]["samples_unchanged"] == 3
    assert CacheView.open(output).run.run_id == "two"  # committed: the cache says which run saw it last
    media.text(str(tmp_path / "t1.txt"), "an edited text")
    with pytest.raises(RuntimeError, match="a pipeline ran"):
        _run(manifest, output, tokenizer_path, "three", runner=_NoPipeline())
    assert CacheView.open(output).run.run_id == "two"


def test_a_large_manifest_is_joined_by_the_workers(tmp_path, tokenizer_path, monkeypatch):
    """Above the size the launcher reads, an unchanged rerun still runs the workers' join (the scale issue's design)."""
    rows = [{"id": f"t{i}", "text": media.text(str(tmp_path / f"t{i}.txt"), f"text number {i}")} for i in range(3)]
    manifest = media.manifest(str(tmp_path / "m.jsonl"), rows)
    output = str(tmp_path / "cache")
    _run(manifest, output, tokenizer_path, "one")
    monkeypatch.setattr(extract_graph, "LAUNCHER_JOIN_MAX_BYTES", os.path.getsize(manifest) - 1)
    with pytest.raises(RuntimeError, match="a pipeline ran"):
        _run(manifest, output, tokenizer_path, "two", runner=_NoPipeline())
    assert _counts(_run(manifest, output, tokenizer_path, "two"))["unchanged"] == 3
