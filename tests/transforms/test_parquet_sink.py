import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that, equal_to

from tests.beam_helpers import in_process_pipeline
from schemas.tables import AUDIO, ERRORS, with_metadata
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
    directory = str(tmp_path)
    schemas = {
        "audio": with_metadata(AUDIO, table="audio", run_id="r1", config={"k": 1}),
        "errors": with_metadata(ERRORS, table="errors", run_id="r1", config={"k": 1}),
    }
    audio_rows = [("audio", _audio_row(f"s{i}", i % 4 + 1)) for i in range(30)]
    error_rows = [
        ("errors", {"sample_id": f"s{i}", "manifest_row": i, "uri": None, "stage": "text", "error_kind": "empty_text", "message": "m"})
        for i in range(5)
    ]
    with in_process_pipeline() as pipeline:
        written = pipeline | beam.Create(audio_rows + error_rows) | WriteCacheTables(directory, schemas, num_shards=3)
        counts = written | beam.Map(lambda out: (out[0], out[2])) | beam.CombinePerKey(sum)
        assert_that(counts, equal_to([("audio", 30), ("errors", 5)]))

    audio_files = sorted(glob.glob(os.path.join(directory, "audio", "*")))
    assert [os.path.basename(p) for p in audio_files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(os.path.join(directory, "audio"))
    assert sorted(table.column("sample_id").to_pylist()) == sorted(f"s{i}" for i in range(30))
    assert pq.read_schema(audio_files[0]).metadata[b"mmfeat.run_id"] == b"r1"
    # Each sample's rows are in the file of its shard.
    for path in audio_files:
        shard = int(os.path.basename(path)[5:10])
        assert {shard_of(s, 3) for s in pq.read_table(path).column("sample_id").to_pylist()} == {shard}
    assert not glob.glob(os.path.join(directory, "**", "*.tmp-*"), recursive=True)
