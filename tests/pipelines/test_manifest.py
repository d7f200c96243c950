import json
import os

import pyarrow as pa
import pytest

from pipelines.manifest import read_folder, read_manifest
from schemas.errors import ConfigError
from tests import media


def _errors(corpus):
    return [(r.manifest_row, r.error.kind if r.error else None) for r in corpus.records]


def test_jsonl_rows_resolve_paths_against_the_manifest_folder(tmp_path):
    path = media.manifest(
        str(tmp_path / "m.jsonl"),
        [
            {"id": "a", "video": "clips/a.mp4", "label": 1, "score": 0.5},
            {"id": 7, "text": "/abs/b.txt", "audio": "gs://bucket/b.wav", "label": 0, "score": -1.25},
        ],
    )
    corpus = read_manifest(path)
    a, b = corpus.records
    assert a.video == os.path.join(str(tmp_path), "clips", "a.mp4") and a.audio is None
    assert (b.sample_id, b.text, b.audio) == ("7", "/abs/b.txt", "gs://bucket/b.wav")
    assert a.extra == {"label": 1, "score": 0.5}
    assert [(f.name, f.type) for f in corpus.extra_fields] == [("label", pa.int64()), ("score", pa.float64())]


def test_csv_manifest_with_typed_extra_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,text,label,score,note\na,a.txt,1,0.5,hi\nb,b.txt,0,,\n", encoding="utf-8")
    corpus = read_manifest(str(path))
    assert [r.extra for r in corpus.records] == [{"label": 1, "score": 0.5, "note": "hi"}, {"label": 0, "score": None, "note": None}]
    assert [f.type for f in corpus.extra_fields] == [pa.int64(), pa.float64(), pa.string()]


def test_row_problems_become_error_records_not_exceptions(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "a.txt"}),
        json.dumps({"id": "a", "text": "other.txt"}),
        "{not json",
        json.dumps({"text": "c.txt"}),
        json.dumps({"id": "d"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "e", "video": "e.mp4"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = read_manifest(str(path))
    assert _errors(corpus) == [
        (0, None),
        (1, "duplicate_id"),
        (2, "invalid_row"),
        (3, "missing_id"),
        (4, "no_modality"),
        (5, "invalid_row"),
        (6, None),
    ]
    assert "already used by row 0" in corpus.records[1].error.message


def test_mixed_type_columns_are_kept_as_json_text(tmp_path):
    path = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": "a", "meta": 1}, {"id": "b", "text": "b", "meta": {"k": 2}}])
    corpus = read_manifest(path)
    assert corpus.extra_fields[0].type == pa.string()
    assert [r.extra["meta"] for r in corpus.records] == ["1", '{"k": 2}']


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("m.txt", "id\n", "must end in"),
        ("m.csv", "name,text\nx,y\n", "no 'id' column"),
        ("m.jsonl", json.dumps({"name": "x", "text": "t"}) + "\n", "has an 'id' field"),
        ("m.jsonl", json.dumps({"id": "x", "text": "t", "status": "ok"}) + "\n", "reserved"),
    ],
)
def test_unusable_manifests_fail_before_start(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_manifest(str(tmp_path / name))


def test_folder_input_groups_files_by_stem(tmp_path):
    for name in ["a.mp4", "a.wav", "a.txt", "b.txt", "c.flac", "c.wav", "readme.md"]:
        (tmp_path / name).write_bytes(b"x")
    corpus = read_folder(str(tmp_path))
    by_id = {r.sample_id: r for r in corpus.records}
    assert sorted(by_id) == ["a", "b", "c"]
    assert (os.path.basename(by_id["a"].video), os.path.basename(by_id["a"].audio), os.path.basename(by_id["a"].text)) == ("a.mp4", "a.wav", "a.txt")
    assert by_id["b"].video is None and by_id["b"].error is None
    assert by_id["c"].error.kind == "ambiguous_files"
    assert [r.manifest_row for r in corpus.records] == [0, 1, 2]


def test_folder_without_media_fails(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match="holds no video, audio or text"):
        read_folder(str(tmp_path))
