import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that, equal_to

from tests.beam_helpers import in_process_pipeline
from schemas.cache import read_pending
from schemas.tables import AUDIO, ERRORS, embeddings_schema
from transforms.parquet_sink import WriteCacheTables, rows_to_table, shard_of


def _audio_row(sample_id: str, n_frames: int) -> dict:
    return {
        "sample_id": sample_id,
        "source": "audio",
        "window_index": 0,
        "sample_rate": 16000,
        "start_s": 0.0,
        "end_s": n_frames / 100,
        "frame_times_s": np.arange(n_frames) / 100.0,
        "mfcc": np.arange(n_frames * 3, dtype=np.float32).reshape(n_frames, 3),
    }


def test_rows_to_table_keeps_matrix_shapes():
    table = rows_to_table([_audio_row("a", 2), _audio_row("b", 0), _audio_row("c", 1)], AUDIO)
    assert table.schema == AUDIO
    assert table.column("mfcc").to_pylist() == [[[0, 1, 2], [3, 4, 5]], [], [[0, 1, 2]]]
    assert table.column("frame_times_s").to_pylist()[0] == [0.0, 0.01]


def test_shards_are_stable_and_spread():
    ids = [f"s{i}" for i in range(200)]
    shards = [shard_of(i, 4) for i in ids]
    assert shards == [shard_of(i, 4) for i in ids]
    assert set(shards) == {0, 1, 2, 3}


def test_write_cache_tables_writes_every_row_once_per_shard_file(tmp_path):
    cache = str(tmp_path)
    attempt = "r1-0123abcd"
    schemas = {"audio": AUDIO, "errors": ERRORS}
    audio_rows = [("audio", _audio_row(f"s{i}", i % 4 + 1)) for i in range(30)]
    error_rows = [
        ("errors", {"sample_id": f"s{i}", "manifest_row": i, "uri": None, "stage": "text", "error_kind": "empty_text", "message": "m"})
        for i in range(5)
    ]
    with in_process_pipeline() as pipeline:
        written = pipeline | beam.Create(audio_rows + error_rows) | WriteCacheTables(cache, attempt, schemas, num_shards=3)
        assert_that(written, equal_to([6]))  # 3 shards of audio, 3 of errors

    audio_files = sorted(glob.glob(os.path.join(cache, "audio", "*")))
    assert [os.path.basename(p) for p in audio_files] == [f"{attempt}-part-0000{n}.parquet" for n in range(3)]
    table = pq.read_table(os.path.join(cache, "audio"))
    assert sorted(table.column("sample_id").to_pylist()) == sorted(f"s{i}" for i in range(30))
    assert table.schema.field("mfcc").type == AUDIO.field("mfcc").type
    # Each sample's rows are in the file of its shard.
    for path in audio_files:
        shard = int(os.path.basename(path)[len(attempt) + 6:len(attempt) + 11])
        assert {shard_of(s, 3) for s in pq.read_table(path).column("sample_id").to_pylist()} == {shard}
    assert not glob.glob(os.path.join(cache, "**", "*.tmp-*"), recursive=True)

    # The attempt's file list names every file with what its Delta add action needs.
    listed = read_pending(cache, attempt).files
    assert sorted((f.table, f.name) for f in listed) == sorted(
        (os.path.basename(os.path.dirname(p)), os.path.basename(p)) for p in glob.glob(os.path.join(cache, "*", "*.parquet"))
    )
    for data_file in listed:
        path = os.path.join(cache, data_file.table, data_file.name)
        ids = pq.read_table(path).column("sample_id").to_pylist()
        assert (data_file.size, data_file.n_rows, data_file.stats["sample_id"]) == (
            os.path.getsize(path), len(ids), [min(ids), max(ids), 0]
        ), data_file.name
    assert sum(f.n_rows for f in listed if f.table == "audio") == 30 and sum(f.n_rows for f in listed if f.table == "errors") == 5


def test_vectors_are_stored_as_float32_lists():
    schema = embeddings_schema(sequence=True)
    rows = [
        {"sample_id": sid, "modality": "text", "encoder": "e", "encoder_fingerprint": "f",
         "vector": np.arange(4, dtype=np.float64) + n, "sequence": np.ones((n + 1, 4), dtype=np.float32)}
        for n, sid in enumerate(["a", "b"])
    ]
    table = rows_to_table(rows, schema)
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    assert table.column("vector").to_pylist() == [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]
    assert [len(s) for s in table.column("sequence").to_pylist()] == [1, 2]


def test_a_file_is_written_in_row_groups_bounded_by_rows_and_bytes(tmp_path, monkeypatch):
    """Readers pay per row group (an unchanged rerun reads every ``samples`` file): small rows fill one group, not one
    per batch of rows; large rows still start a new group past the byte bound, so a writer holds one group at most."""
    from transforms import parquet_sink

    rows = [_audio_row(f"s{i:04d}", 4) for i in range(1000)]
    count, stats = parquet_sink.write_rows(str(tmp_path / "small.parquet"), rows, AUDIO)
    metadata = pq.ParquetFile(tmp_path / "small.parquet").metadata
    assert (count, stats, metadata.num_row_groups) == (1000, {"sample_id": ["s0000", "s0999", 0]}, 1)
    monkeypatch.setattr(parquet_sink, "_ROW_GROUP_BYTES", rows_to_table(rows[:300], AUDIO).nbytes)
    parquet_sink.write_rows(str(tmp_path / "large.parquet"), rows, AUDIO)
    large = pq.ParquetFile(tmp_path / "large.parquet")
    groups = [large.metadata.row_group(i).num_rows for i in range(large.metadata.num_row_groups)]
    assert sum(groups) == 1000 and len(groups) > 1  # past the bound (300 rows' bytes) a group is written, plus at most
    assert all(300 <= rows <= 300 * 5 // 4 + 1 for rows in groups[:-1])  # one batch: a quarter of the bound
    assert large.read().column("sample_id").to_pylist() == [row["sample_id"] for row in rows]
