"""Manifests and folders read inside the pipeline: rows, their keys, their problems; and the launcher's checks."""
import json
import os

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.manifest import open_folder, open_manifest
from schemas.errors import ConfigError
from tests import media
from tests.beam_helpers import in_process_pipeline
from transforms.extra_columns import InferExtraFields, extra_value
from transforms.manifest_rows import (
    ROW_KEY_SHARD, ReadFolderRows, ReadManifestRows, read_csv_shard, read_jsonl_range, read_jsonl_rows, line_source, record_of, shard_ranges,
)


def _records(pattern: str, split_bytes: int = 1 << 20) -> list:
    """Every record of the manifest ``pattern``, read as the workers read it (byte ranges of ``split_bytes``), in row order."""
    found = []
    for shard in open_manifest(pattern, allow_empty=True).shards:
        for _, start, end in shard_ranges(shard, split_bytes):
            found += read_csv_shard(shard) if shard.uri.endswith(".csv") else read_jsonl_range(shard, start, end)
    return sorted(found, key=lambda r: r.manifest_row)


def test_jsonl_rows_resolve_paths_against_the_manifest_folder(tmp_path):
    path = media.manifest(
        str(tmp_path / "m.jsonl"),
        [
            {"id": "a", "video": "clips/a.mp4", "label": 1, "score": 0.5},
            {"id": 7, "text": "/abs/b.txt", "audio": "gs://bucket/b.wav", "label": 0, "score": -1.25},
        ],
    )
    a, b = _records(path)
    assert a.video == os.path.join(str(tmp_path), "clips", "a.mp4") and a.audio is None
    assert (b.sample_id, b.text, b.audio) == ("7", "/abs/b.txt", "gs://bucket/b.wav")
    assert a.extra == {"label": 1, "score": 0.5}
    fields = InferExtraFields()
    accumulator = fields.create_accumulator()
    for record in (a, b):
        accumulator = fields.add_input(accumulator, record)
    assert [(f.name, f.type) for f in fields.extract_output(accumulator)] == [("label", pa.int64()), ("score", pa.float64())]


@pytest.mark.parametrize("split_bytes", [1, 7, 50, 1 << 20])
def test_byte_ranges_read_every_line_exactly_once_whatever_the_split(tmp_path, split_bytes):
    rows = [{"id": f"s{i}", "text": f"{i}.txt", "note": "é" * (i % 5)} for i in range(40)]
    path = media.manifest(str(tmp_path / "m.jsonl"), rows)
    records = _records(path, split_bytes)
    assert [r.sample_id for r in records] == [f"s{i}" for i in range(40)]
    assert all(r.error is None for r in records)
    assert len({r.manifest_row for r in records}) == 40


@pytest.mark.parametrize("split_bytes", [1, 3, 16, 1 << 20])
def test_byte_ranges_of_crlf_lines_padded_values_and_a_last_line_without_its_end(tmp_path, split_bytes):
    """Lines end in CRLF or LF, a value may have white space around it (``json.loads`` accepts it), and the last line may
    lack its end: every range split gives each line once, parsed as ``json.loads`` parses it."""
    lines = [b'{"id": "a", "text": "a.txt"}', b'  {"id": "b", "text": "b.txt"}\t', b"", b'{"id": "c", "text": "c.txt"} x',
             b'{"id": "d", "text": "d.txt", "n": 1}']
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\r\n".join(lines[:3]) + b"\n" + b"\n".join(lines[3:]))
    records = _records(str(path), split_bytes)
    assert [(r.sample_id, r.error.kind if r.error else None) for r in records] == [
        ("a", None), ("b", None), ("", "invalid_row"), ("d", None)]
    assert records[3].extra == {"n": 1}
    assert [r.manifest_row for r in records] == [0, 30, 64, 95]  # byte offsets of the lines


def test_shards_of_a_glob_are_ranked_and_keep_their_rows_apart(tmp_path):
    media.manifest(str(tmp_path / "part-0.jsonl"), [{"id": "a", "text": "a.txt"}, {"id": "b", "text": "b.txt"}])
    media.manifest(str(tmp_path / "part-1.jsonl"), [{"id": "c", "text": "c.txt"}])
    corpus = open_manifest(str(tmp_path / "part-*.jsonl"))
    assert [os.path.basename(s.uri) for s in corpus.shards] == ["part-0.jsonl", "part-1.jsonl"]
    records = _records(str(tmp_path / "part-*.jsonl"))
    assert [(r.sample_id, r.manifest_row // ROW_KEY_SHARD) for r in records] == [("a", 0), ("b", 0), ("c", 1)]


def test_csv_manifest_with_typed_extra_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,text,label,score,note\na,a.txt,1,0.5,hi\nb,b.txt,0,,\n", encoding="utf-8")
    records = _records(str(path))
    assert [r.extra for r in records] == [{"label": 1, "score": 0.5, "note": "hi"}, {"label": 0, "score": None, "note": None}]
    assert [r.manifest_row for r in records] == [0, 1]


def test_row_problems_become_error_records_not_exceptions(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "a.txt"}),
        "{not json",
        json.dumps({"text": "c.txt"}),
        json.dumps({"id": "d"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "e", "video": "e.mp4"}),
        json.dumps({"id": "f", "text": "f.txt", "status": "ok"}),
        json.dumps({"id": "g", "text": "g.txt", "text_source": "file"}),  # the column --transcribe adds
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = _records(str(path))
    assert [r.error.kind if r.error else None for r in records] == [
        None, "invalid_row", "missing_id", "no_modality", "invalid_row", None, "invalid_row", "invalid_row"]
    assert "reserved" in records[-2].error.message and "status" in records[-2].error.message
    assert "text_source" in records[-1].error.message
    assert records[1].manifest_row == len(lines[0]) + 1  # a line's key is its byte offset
    assert "line at byte" in records[1].error.message


def test_mixed_type_columns_are_kept_as_json_text(tmp_path):
    path = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": "a", "meta": 1}, {"id": "b", "text": "b", "meta": {"k": 2}}])
    fields = InferExtraFields()
    accumulator = fields.merge_accumulators([fields.add_input(fields.create_accumulator(), r) for r in _records(path)])
    (meta,) = fields.extract_output(accumulator)
    assert meta.type == pa.string()
    assert [extra_value(r.extra["meta"], meta) for r in _records(path)] == ["1", '{"k": 2}']


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("m.txt", "id\n", "must end in"),
        ("m.jsonl", "", "is empty.*--allow-empty"),
        ("none-*.jsonl", None, "matches no file"),
    ],
)
def test_unusable_manifests_fail_before_start(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        open_manifest(str(tmp_path / name))


def test_an_empty_manifest_is_allowed_when_asked(tmp_path):
    (tmp_path / "m.jsonl").write_text("", encoding="utf-8")
    assert open_manifest(str(tmp_path / "m.jsonl"), allow_empty=True).shards[0].size == 0


def test_a_csv_without_an_id_column_fails_its_rows_not_the_run(tmp_path):
    (tmp_path / "m.csv").write_text("name,text\nx,y\n", encoding="utf-8")
    (record,) = _records(str(tmp_path / "m.csv"))
    assert record.error.kind == "missing_id" and "no 'id' column" in record.error.message


def test_the_pipeline_reads_manifest_shards_and_folders(tmp_path):
    media.manifest(str(tmp_path / "m-0.jsonl"), [{"id": f"s{i}", "text": f"{i}.txt"} for i in range(30)])
    media.manifest(str(tmp_path / "m-1.jsonl"), [{"id": f"t{i}", "text": f"{i}.txt"} for i in range(5)])
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ["a.mp4", "a.wav", "a.txt", "b.txt", "c.flac", "c.wav", "readme.md"]:
        (folder / name).write_bytes(b"x")
    with in_process_pipeline() as pipeline:
        rows = pipeline | "Manifest" >> ReadManifestRows(open_manifest(str(tmp_path / "m-*.jsonl")).shards, split_bytes=64)
        assert_that(rows | "Ids" >> beam.Map(lambda r: r.sample_id), equal_to([f"s{i}" for i in range(30)] + [f"t{i}" for i in range(5)]),
                    label="ManifestIds")
        stems = pipeline | "Folder" >> ReadFolderRows(open_folder(str(folder)).folder)
        assert_that(stems | "Stems" >> beam.Map(lambda r: (r.sample_id, sorted(r.uris()), r.error.kind if r.error else None)),
                    equal_to([("a", ["audio", "text", "video"], None), ("b", ["text"], None), ("c", ["audio"], "ambiguous_files")]),
                    label="FolderStems")


def test_a_folder_that_cannot_be_listed_fails_before_start(tmp_path):
    with pytest.raises(ConfigError, match="--input"):
        open_folder(str(tmp_path / "missing"))


@pytest.mark.parametrize("value", ["a.txt", "texts/a.txt", "./a", "a/./b", "a/../b", "../a", "a//b", "a/", "..a/b", ".a/b",
                                   "a/.b", "a/..", "..", ".", " a b/c", ".hidden/x.txt"])
@pytest.mark.parametrize("base", ["/data/corpus", "/"])
def test_a_relative_path_resolves_as_normpath_would(value, base):
    """Clean relative paths skip ``os.path.normpath`` (an unchanged rerun resolves every row's paths): same result."""
    from transforms.manifest_rows import _resolve

    assert _resolve(value, base) == os.path.normpath(os.path.join(base, value))


def test_rows_read_for_the_join_are_the_records_the_reader_gives_with_their_line_hash(tmp_path):
    """An unchanged rerun decides from what ``read_jsonl_rows`` takes per line, and parses a line into its record only
    when the sample needs work: both must be exactly what ``read_jsonl_range`` gives, whatever the line holds."""
    (tmp_path / "a.txt").write_text("words", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    lines = [
        "\ufeff" + json.dumps({"id": " a ", "text": "a.txt", "label": 1}),  # a BOM and an id with spaces
        json.dumps({"id": 7, "text": "./sub/../a.txt", "meta": {"k": [1, 2.5]}, "note": "é"}),
        json.dumps({"id": "missing", "audio": "nope.wav", "video": 3}),
        json.dumps({"id": "empty", "text": "empty.txt", "score": None}),
        json.dumps({"id": "remote", "text": "gs://bucket/x.txt"}),
        "{not json", "", "   ", json.dumps(["a", "list"]), json.dumps({"text": "a.txt"}), json.dumps({"id": "d"}),
        json.dumps({"id": "f", "text": "a.txt", "status": "ok"}),
    ]
    raw = "\n".join(lines).encode("utf-8") + b"\n" + b'{"id": "\xff", "text": "a.txt"}\n'
    path = tmp_path / "m.jsonl"
    path.write_bytes(raw)
    shard = open_manifest(str(path)).shards[0]
    for split_bytes in (1 << 20, 40):
        for _, start, end in shard_ranges(shard, split_bytes):
            expected = list(read_jsonl_range(shard, start, end))
            rows = [row for row, _ in read_jsonl_rows(shard, start, end)]
            records = [record_of(line_source(shard), row) for row in rows]
            assert records == expected
            for row, record in zip(rows, records):
                assert row[:2] == (record.sample_id, record.line_hash if record.sample_id else None)
                assert record.error is not None or record.line_hash is not None
    kinds = [r.error.kind if r.error else None for r in read_jsonl_range(shard, 0, shard.size)]
    assert kinds == [None, None, None, None, None, "invalid_row", "invalid_row", "missing_id", "no_modality", "invalid_row", "invalid_row"]
