"""The cache sink: ``(table, row)`` pairs to Parquet files, one per (table, shard).

The shape is the one that gave identical rows on every runner we tried
(FACTS.md): rows arrive as data on one PCollection, are keyed by
``(table, shard)``, grouped with ``GroupByKey``, and each group is streamed
by pyarrow into a temporary file that is then renamed into place. Nothing
is emitted from ``finish_bundle`` and there is a single terminal stage.
Writing a group again (a retried bundle) replaces the same file.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
import zlib
from typing import Any, Iterable, Iterator, Mapping

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

_ROWS_PER_BATCH = 256


def shard_of(sample_id: str, num_shards: int) -> int:
    """Stable shard of a sample (all rows of one sample land in the same file of each table)."""
    return zlib.crc32(sample_id.encode("utf-8")) % num_shards


def shard_file_name(shard: int) -> str:
    """File name of one shard of a table."""
    return f"part-{shard:05d}.parquet"


def _matrix_column(values: list[Any], value_type: pa.DataType) -> pa.Array:
    """A ``list<list<float>>`` column from 2-D arrays of shape ``(n_rows_i, n_cols_i)``, built from offsets."""
    element_type = value_type.value_type
    matrices = [np.asarray(v, dtype=element_type.to_pandas_dtype()) for v in values]
    if any(m.ndim != 2 for m in matrices):
        raise ValueError("a list<list<...>> column needs 2-D arrays")
    row_counts = [m.shape[0] for m in matrices]
    inner_lengths = np.repeat([m.shape[1] for m in matrices], row_counts)
    inner_offsets = np.concatenate([[0], np.cumsum(inner_lengths)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int32)
    flat = np.concatenate([m.reshape(-1) for m in matrices]) if matrices else np.zeros(0)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=element_type))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def _vector_column(values: list[Any], vector_type: pa.FixedSizeListType) -> pa.Array:
    """A ``fixed_size_list<float, dim>`` column from 1-D arrays of length ``dim``."""
    element_type = vector_type.value_type
    flat = np.concatenate([np.asarray(v, dtype=element_type.to_pandas_dtype()).reshape(-1) for v in values]) if values else np.zeros(0)
    if len(flat) != len(values) * vector_type.list_size:
        raise ValueError(f"vectors must all have {vector_type.list_size} values")
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=element_type), vector_type.list_size)


def rows_to_table(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from dict rows (missing keys are nulls; numpy arrays allowed; extra keys ignored)."""
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_list(field.type) and pa.types.is_list(field.type.value_type):
            columns.append(_matrix_column(values, field.type.value_type))
        elif pa.types.is_fixed_size_list(field.type):
            columns.append(_vector_column(values, field.type))
        else:
            values = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
            columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _batched(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _atomic_parquet(path: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer on a temporary name, renamed to ``path`` once closed (readers never see half a file)."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary) as handle:
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            yield writer
    FileSystems.rename([temporary], [path])


def write_rows(path: str, rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> int:
    """Stream dict ``rows`` into a Parquet file at ``path``, atomically; returns the row count."""
    count = 0
    with _atomic_parquet(path, schema) as writer:
        for batch in _batched(rows, _ROWS_PER_BATCH):
            writer.write_table(rows_to_table(batch, schema))
            count += len(batch)
    return count


def write_table(path: str, table: pa.Table) -> None:
    """Write an Arrow table to ``path``, atomically (a file rewritten in place is replaced whole)."""
    with _atomic_parquet(path, table.schema) as writer:
        writer.write_table(table)


class _WriteShardFn(beam.DoFn):
    """Writes one ``((table, shard), rows)`` group to ``{directory}/{table}/part-{shard}.parquet``."""

    def __init__(self, directory: str, schemas: Mapping[str, pa.Schema]) -> None:
        self._directory = directory
        self._schemas = dict(schemas)
        self._rows_written = beam.metrics.Metrics.counter("mmfeat", "rows_written")

    def process(self, element: tuple[tuple[str, int], Iterable[Mapping[str, Any]]]) -> Iterator[tuple[str, str, int]]:
        (table, shard), rows = element
        path = FileSystems.join(self._directory, table, shard_file_name(shard))
        count = write_rows(path, rows, self._schemas[table])
        self._rows_written.inc(count)
        yield table, path, count


class WriteCacheTables(beam.PTransform):
    """``PCollection[(table, row)]`` -> one Parquet file per (table, shard) under ``directory``.

    Args:
        directory: where table folders are created (a run's staging folder).
        schemas: pyarrow schema (with file metadata) of each table name that may occur.
        num_shards: files per table at most; rows are spread by ``shard_of(sample_id)``.

    Output: ``(table, path, n_rows)`` per file written.
    """

    def __init__(self, directory: str, schemas: Mapping[str, pa.Schema], num_shards: int) -> None:
        super().__init__()
        self._directory = directory
        self._schemas = dict(schemas)
        self._num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        num_shards = self._num_shards
        return (
            rows
            | "KeyByTableShard" >> beam.Map(lambda pair: ((pair[0], shard_of(pair[1]["sample_id"], num_shards)), pair[1]))
            | "GroupByTableShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardFn(self._directory, self._schemas))
        )
