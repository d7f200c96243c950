"""The cache sink: ``(table, row)`` pairs to Parquet data files, one per (table, shard), and their list.

The shape is the one that gave identical rows on every runner we tried
(FACTS.md): rows arrive as data on one PCollection, are keyed by
``(table, shard)``, grouped with ``GroupByKey``, and each group is streamed
by pyarrow into a temporary file that is then renamed into place. Nothing
is emitted from ``finish_bundle`` and there is a single terminal stage.
Writing a group again (a retried bundle) replaces the same file. The
files' descriptions (``DataFile``: size, rows, min/max ``sample_id``), with
the replacements of committed files (``transforms.cache_rewrite``), are
gathered into one list under ``_pending/``, which the launcher commits.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
import zlib
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.cache.layout import DataFile, PendingEntry, column_stats, data_folder, pending_uri
from schemas.tables import samples_schema
from transforms.extra_columns import extra_value

logger = logging.getLogger(__name__)

_ROWS_PER_BATCH = 256
"""Rows turned into one Arrow table at a time."""
_ROW_GROUP_ROWS = 1 << 16
_ROW_GROUP_BYTES = 64 << 20
"""A Parquet row group holds this many rows or bytes of Arrow data, whichever comes first: every reader of a file pays
per row group and column, and an unchanged rerun reads every ``samples`` file."""


def shard_of(sample_id: str, num_shards: int) -> int:
    """Stable shard of a sample (all rows of one sample land in the same file of each table)."""
    return zlib.crc32(sample_id.encode("utf-8")) % num_shards


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


def _vector_column(values: list[Any], vector_type: pa.ListType) -> pa.Array:
    """A ``list<float>`` column from 1-D arrays, built from offsets (no Python float per value)."""
    element_type = vector_type.value_type
    arrays = [np.asarray(v, dtype=element_type.to_pandas_dtype()).reshape(-1) for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=element_type.to_pandas_dtype())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=element_type))


def rows_to_table(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from dict rows (missing keys are nulls; numpy arrays allowed; extra keys ignored)."""
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_list(field.type) and pa.types.is_list(field.type.value_type):
            columns.append(_matrix_column(values, field.type.value_type))
        elif pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type) and any(
                isinstance(v, np.ndarray) for v in values):
            columns.append(_vector_column(values, field.type))
        else:
            values = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
            columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: all but floating-point data (MFCCs, embeddings), whose values hardly
    repeat; a dictionary of them costs the writer memory (about 20 MB a 16 MiB row group of MFCCs) and time for nothing."""
    def floating(data_type: pa.DataType) -> bool:
        return pa.types.is_floating(data_type) or (pa.types.is_list(data_type) and floating(data_type.value_type))
    return [field.name for field in schema if not floating(field.type)]


def row_bytes(row: Mapping[str, Any]) -> int:
    """About how many bytes a dict row's values hold: arrays and strings by their size, anything else 8."""
    return sum(v.nbytes if isinstance(v, np.ndarray) else len(v) if isinstance(v, (str, bytes, list)) else 8
               for v in row.values())


class ParquetRowWriter:
    """Dict rows streamed into a Parquet file at ``path``, written under a temporary name and renamed into place by
    ``close`` (a retried bundle replaces the file whole; a failed write leaves no file).

    Memory: at most one row group of rows is held (``_ROW_GROUP_ROWS`` rows or ``row_group_bytes`` of Arrow data,
    default ``_ROW_GROUP_BYTES``), and rows not yet converted to Arrow: ``_ROWS_PER_BATCH`` or a quarter of
    ``row_group_bytes``, whichever comes first.

    Raises (any method):
        OSError: naming ``path`` ("No space left on device" alone does not say which disk).
    """

    def __init__(self, path: str, schema: pa.Schema, row_group_bytes: Optional[int] = None) -> None:
        self.path = path
        self._schema = schema
        self._row_group_bytes = row_group_bytes or _ROW_GROUP_BYTES
        self._temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        self._handle: Any = None
        self._writer: Optional[pq.ParquetWriter] = None
        self._batch: list[Mapping[str, Any]] = []
        self._batch_bytes = 0
        self._held: list[pa.Table] = []
        self.count = 0
        self.stats: dict[str, list[Any]] = {}
        with self._failing():
            self._handle = FileSystems.create(self._temporary)
            self._writer = pq.ParquetWriter(self._handle, schema, compression="zstd", use_dictionary=_dictionary_columns(schema))

    def add(self, row: Mapping[str, Any]) -> None:
        self._batch.append(row)
        self._batch_bytes += row_bytes(row)
        if len(self._batch) == _ROWS_PER_BATCH or 4 * self._batch_bytes >= self._row_group_bytes:
            with self._failing():
                self._convert_batch()

    def close(self) -> tuple[int, dict[str, list[Any]]]:
        """Writes what is held and renames the file into place; returns the row count and the ``column_stats``."""
        with self._failing():
            self._convert_batch()
            self._write_held()
            self._writer.close()
            self._handle.close()
            FileSystems.rename([self._temporary], [self.path])
        return self.count, self.stats

    def abort(self) -> None:
        """Closes and removes the temporary file (nothing is renamed into place); never raises."""
        for cleanup in (self._writer, self._handle):
            if cleanup is not None:
                with contextlib.suppress(Exception):
                    cleanup.close()
        with contextlib.suppress(Exception):
            FileSystems.delete([self._temporary])

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """On an error: ``abort``, then the error raised (an ``OSError`` naming ``path``)."""
        try:
            yield
        except BaseException as error:
            self.abort()
            if isinstance(error, OSError):
                raise OSError(error.errno, f"{error.strerror or error} writing {self.path}") from error
            raise

    def _convert_batch(self) -> None:
        if not self._batch:
            return
        table = rows_to_table(self._batch, self._schema)
        self._batch, self._batch_bytes = [], 0
        self._held.append(table)
        self.count += table.num_rows
        self.stats = column_stats(table, self.stats)
        if sum(t.num_rows for t in self._held) >= _ROW_GROUP_ROWS or sum(t.nbytes for t in self._held) >= self._row_group_bytes:
            self._write_held()

    def _write_held(self) -> None:
        if self._held:
            self._writer.write_table(pa.concat_tables(self._held))
            self._held = []


def write_rows(path: str, rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> tuple[int, dict[str, list[Any]]]:
    """Stream dict ``rows`` into a Parquet file at ``path``, atomically (``ParquetRowWriter``); returns the row count and
    the ``column_stats``."""
    writer = ParquetRowWriter(path, schema)
    try:
        for row in rows:
            writer.add(row)
    except BaseException:  # the rows failed, not the writer
        writer.abort()
        raise
    return writer.close()


def data_file(table: str, path: str, count: int, stats: dict[str, list[Any]]) -> DataFile:
    """The ``DataFile`` of a file just written at ``path`` in ``table``'s folder, for the ``_pending`` list."""
    metadata = FileSystems.match([path])[0].metadata_list[0]
    return DataFile(table=table, name=FileSystems.split(path)[1], size=metadata.size_in_bytes, n_rows=count, stats=stats,
                    modified_ms=int(metadata.last_updated_in_seconds * 1000))


class _WriteShardFn(beam.DoFn):
    """Writes one ``((table, shard), rows)`` group as ``{attempt}-part-{shard}.parquet`` in the table's folder; emits its ``DataFile``."""

    def __init__(self, cache: str, attempt: str, schemas: Mapping[str, pa.Schema]) -> None:
        self._cache = cache
        self._attempt = attempt
        self._schemas = dict(schemas)
        self._rows_written = beam.metrics.Metrics.counter("mmfeat", "rows_written")

    def process(self, element: tuple[tuple[str, int], Iterable[Mapping[str, Any]]], extra_fields: Sequence[pa.Field] = ()) -> Iterator[DataFile]:
        (table, shard), rows = element
        name = f"{self._attempt}-part-{shard:05d}.parquet"
        path = FileSystems.join(data_folder(self._cache, table, self._attempt), name)
        schema = self._schemas[table]
        if table == "samples" and extra_fields:
            schema = samples_schema(list(extra_fields), base=schema)  # base: the run's samples columns (SAMPLES_BASE, or with text_source)
            rows = ({**row, **{f.name: extra_value(row.get(f.name), f) for f in extra_fields}} for row in rows)
        count, stats = write_rows(path, rows, schema)
        self._rows_written.inc(count)
        yield data_file(table, path, count, stats)


class _WritePendingListFn(beam.DoFn):
    """Writes every entry of the run attempt (``DataFile`` or ``Replacement``), one JSON line each, to its ``_pending``
    list (what the launcher commits)."""

    def __init__(self, cache: str, attempt: str) -> None:
        self._path = pending_uri(cache, attempt)

    def process(self, element: tuple[None, Iterable[PendingEntry]]) -> Iterator[int]:
        yield write_pending_list(self._path, element[1])


def write_pending_list(path: str, entries: Iterable[PendingEntry]) -> int:
    """Writes ``entries`` as the ``_pending`` list at ``path`` (``layout.pending_uri``; a temporary file renamed into
    place); returns the number of data files among them."""
    entries = sorted(entries, key=lambda e: e.to_json())
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary) as handle:
        handle.write("".join(f"{e.to_json()}\n" for e in entries).encode("utf-8"))
    FileSystems.rename([temporary], [path])
    return sum(1 for e in entries if isinstance(e, DataFile))


class WriteDataFiles(beam.PTransform):
    """``PCollection[(table, row)]`` -> ``PCollection[DataFile]``: one Parquet file per (table, shard) in the cache's table folders.

    The files stay invisible until the launcher commits them (``schemas.cache.commit_run``).

    Args:
        cache: the cache folder (local path or URI).
        attempt: the run attempt; names the files.
        schemas: pyarrow schema of each table name that may occur.
        num_shards: files per table at most; rows are spread by ``shard_of(sample_id)``.
        extra_fields: the manifest's extra columns, added to ``samples`` (``transforms.extra_columns.InferExtraFields``):
            their fields, or a one-element PCollection of them; ``None``: ``schemas["samples"]`` as it is.
    """

    def __init__(self, cache: str, attempt: str, schemas: Mapping[str, pa.Schema], num_shards: int,
                 extra_fields: Union[beam.PCollection, Sequence[pa.Field], None] = None) -> None:
        super().__init__()
        self._cache = cache
        self._attempt = attempt
        self._schemas = dict(schemas)
        self._num_shards = num_shards
        self._extra_fields = extra_fields

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        num_shards = self._num_shards
        fields = self._extra_fields
        side = ({} if fields is None else {"extra_fields": beam.pvalue.AsSingleton(fields)} if isinstance(fields, beam.PCollection)
                else {"extra_fields": list(fields)})
        return (
            rows
            | "KeyByTableShard" >> beam.Map(lambda pair: ((pair[0], shard_of(pair[1]["sample_id"], num_shards)), pair[1]))
            | "GroupByTableShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardFn(self._cache, self._attempt, self._schemas), **side)
        )


class WritePendingList(beam.PTransform):
    """``PCollection[DataFile | Replacement]`` -> the attempt's ``_pending`` list; outputs the number of data files (one element)."""

    def __init__(self, cache: str, attempt: str) -> None:
        super().__init__()
        self._cache = cache
        self._attempt = attempt

    def expand(self, entries: beam.PCollection) -> beam.PCollection:
        return (
            entries
            | "OneList" >> beam.Map(lambda entry: (None, entry))
            | "GroupEntries" >> beam.GroupByKey()
            | "WritePendingList" >> beam.ParDo(_WritePendingListFn(self._cache, self._attempt))
        )


class WriteCacheTables(beam.PTransform):
    """``PCollection[(table, row)]`` -> data files (``WriteDataFiles``) listed in ``_pending``; outputs the number of files."""

    def __init__(self, cache: str, attempt: str, schemas: Mapping[str, pa.Schema], num_shards: int) -> None:
        super().__init__()
        self._write = WriteDataFiles(cache, attempt, schemas, num_shards)
        self._list = WritePendingList(cache, attempt)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "WriteDataFiles" >> self._write | "ListFiles" >> self._list
