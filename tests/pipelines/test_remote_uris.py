"""Inputs given as URIs (as with gs://) go through Beam's FileSystems end to end.

The cache itself is written by delta-rs, which knows real object stores (gs://, s3://, abfss://) but not a
Beam-only scheme such as ``fakeremote://``: these tests write it to a local folder, and check that an output
URI delta-rs cannot write is refused before any work.
"""
import os

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipelines.extract import run_extract
from pipelines.manifest import open_folder, open_manifest
from schemas.cache import CacheView
from schemas.config import ExtractConfig
from schemas.errors import ConfigError
from tests import media
from tests.beam_helpers import in_process_pipeline
from tests.fake_remote_fs import FakeRemoteFileSystem
from transforms.manifest_rows import ReadFolderRows


@pytest.fixture()
def remote_root(tmp_path):
    FakeRemoteFileSystem.root = str(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    media.video(str(corpus / "a.mp4"))
    media.wav(str(corpus / "b.wav"))
    media.text(str(corpus / "b.txt"), "remote words")
    media.manifest(
        str(corpus / "m.jsonl"),
        [
            {"id": "a", "video": "a.mp4", "label": 1},
            {"id": "b", "audio": "b.wav", "text": "b.txt", "label": 0},
            {"id": "c", "text": "gone.txt", "label": 0},
        ],
    )
    return tmp_path


def test_manifest_and_media_on_a_remote_filesystem(remote_root, tokenizer_path):
    corpus = open_manifest("fakeremote://corpus/m.jsonl")
    output = str(remote_root / "cache")
    report = run_extract(
        corpus, output=output, config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path, runner=FnApiRunner(), run_id="r"
    )
    assert report.summary["samples"] == {"ok": 2, "partial": 0, "failed": 1, "unchanged": 0, "total": 3, "unchanged_by": {}}
    assert report.summary["rows"]["frames"] == 2 and report.summary["rows"]["audio"] == 2
    assert report.summary["failures"]["by_stage_and_kind"] == {"read/missing_file": 1}
    view = CacheView.open(output)
    statuses = view.read("samples", ["sample_id", "status"]).to_pylist()
    assert sorted((s["sample_id"], s["status"]) for s in statuses) == [("a", "ok"), ("b", "ok"), ("c", "failed")]
    assert view.run.run_id == "r" and view.run.summary["inputs"]["source"] == "fakeremote://corpus/m.jsonl"
    text = view.read("text").to_pylist()
    assert [t["text"] for t in text] == ["remote words"]
    uris = {s["sample_id"]: (s["video"], s["audio"]) for s in view.read("samples", ["sample_id", "video", "audio"]).to_pylist()}
    assert uris["a"][0] == "fakeremote://corpus/a.mp4"  # relative paths resolve against the manifest URI
    assert uris["b"][1] == "fakeremote://corpus/b.wav"

    # A rerun tells unchanged remote files by their metadata (taken by the join for the samples cached from the same
    # row: deferred by the reader), and one whose update time moved is hashed and found unchanged by content.
    os.utime(remote_root / "corpus" / "a.mp4", (1_000_000, 1_000_000))
    rerun = run_extract(
        corpus, output=output, config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path, runner=FnApiRunner(), run_id="r2"
    )
    assert rerun.summary["samples"]["unchanged_by"] == {"metadata": 2, "content": 1}  # b, and c's file still missing; a
    assert rerun.summary["metrics"]["content_files_hashed"] == 1


def test_an_output_delta_lake_cannot_write_is_refused_before_any_work(remote_root, tokenizer_path):
    corpus = open_manifest("fakeremote://corpus/m.jsonl")
    with pytest.raises(ConfigError, match="--output fakeremote://cache: .*gs://"):
        run_extract(corpus, output="fakeremote://cache", config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path,
                    runner=FnApiRunner(), run_id="r")
    assert not (remote_root / "cache").exists()


def test_folder_input_on_a_remote_filesystem(remote_root):
    corpus = open_folder("fakeremote://corpus")
    with in_process_pipeline() as pipeline:
        records = pipeline | ReadFolderRows(corpus.folder) | beam.Map(lambda r: (r.sample_id, r.video, r.audio, r.text))
        assert_that(records, equal_to([
            ("a", "fakeremote://corpus/a.mp4", None, None),
            ("b", None, "fakeremote://corpus/b.wav", "fakeremote://corpus/b.txt"),
        ]))
