"""Inputs given as URIs (as with gs://) go through Beam's FileSystems end to end.

The cache itself is written by delta-rs, which knows real object stores (gs://, s3://, abfss://) but not a
Beam-only scheme such as ``fakeremote://``: these tests write it to a local folder, and check that an output
URI delta-rs cannot write is refused before any work.
"""
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import read_folder, read_manifest
from schemas.cache import CacheView
from schemas.config import ExtractConfig
from schemas.errors import ConfigError
from tests import media
from tests.fake_remote_fs import FakeRemoteFileSystem


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
    corpus = read_manifest("fakeremote://corpus/m.jsonl")
    assert corpus.records[0].video == "fakeremote://corpus/a.mp4"  # relative paths resolve against the manifest URI
    output = str(remote_root / "cache")
    report = run_extract(
        corpus, output=output, config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path, runner=FnApiRunner(), run_id="r"
    )
    assert report.summary["samples"] == {"ok": 2, "partial": 0, "failed": 1, "unchanged": 0, "total": 3}
    assert report.summary["rows"]["frames"] == 2 and report.summary["rows"]["audio"] == 2
    assert report.summary["failures"]["by_stage_and_kind"] == {"read/missing_file": 1}
    view = CacheView.open(output)
    statuses = view.read("samples", ["sample_id", "status"]).to_pylist()
    assert sorted((s["sample_id"], s["status"]) for s in statuses) == [("a", "ok"), ("b", "ok"), ("c", "failed")]
    assert view.run.run_id == "r" and view.run.summary["inputs"]["source"] == "fakeremote://corpus/m.jsonl"
    text = view.read("text").to_pylist()
    assert [t["text"] for t in text] == ["remote words"]
    assert {s["sample_id"]: s["audio"] for s in view.read("samples", ["sample_id", "audio"]).to_pylist()}["b"] == "fakeremote://corpus/b.wav"


def test_an_output_delta_lake_cannot_write_is_refused_before_any_work(remote_root, tokenizer_path):
    corpus = read_manifest("fakeremote://corpus/m.jsonl")
    with pytest.raises(ConfigError, match="--output fakeremote://cache: .*gs://"):
        run_extract(corpus, output="fakeremote://cache", config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path,
                    runner=FnApiRunner(), run_id="r")
    assert not (remote_root / "cache").exists()


def test_folder_input_on_a_remote_filesystem(remote_root):
    corpus = read_folder("fakeremote://corpus")
    assert [(r.sample_id, r.video, r.audio, r.text) for r in corpus.records] == [
        ("a", "fakeremote://corpus/a.mp4", None, None),
        ("b", None, "fakeremote://corpus/b.wav", "fakeremote://corpus/b.txt"),
    ]
