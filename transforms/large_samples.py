"""A sample too large to send through the writers' grouping writes its feature rows to files of its own.

The writers group rows by ``(table, shard)`` (``transforms.parquet_sink``);
a batch runner holds a stage's whole output before it groups it, in memory
on an in-process runner. Most samples' rows are small, but one 2-hour sound
track makes 240 MFCC windows (110 MB) and one long video thousands of
frames: held there, and decoded again for the writer, they raised a run's
peak memory by about 0.9 GB. So the extractor holds each sample's rows of a
feature table until they pass ``LARGE_SAMPLE_BYTES``: below it they go on
to the writers as before; past it they are streamed, as they come, into a
Parquet file of the sample's own (``{attempt}-row-{manifest_row}.parquet``
in the table's folder, written atomically, so a retried bundle replaces it),
and only its ``DataFile`` goes on, to the ``_pending`` list.

A chunk of samples that its process extracts whole (the direct runner's, after the launcher's join: one chunk per
process, or with ``--workers N`` each worker's share of the list) writes its feature rows the same way, every one, to a file of the chunk's own per table
(``{attempt}-chunk-{first manifest_row}.parquet``): as its samples finish, overlapped with the others' extraction,
instead of sending them to another process for the writers' grouping after all extraction has ended (with
``--workers 2``, 25 MB of MFCC and frame rows took 2 s to travel there and be written). Its row groups are small
(``CHUNK_ROW_GROUP_BYTES``), so that they are written while the other samples are extracted.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Mapping, Optional

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from schemas.cache.layout import data_folder
from transforms.parquet_sink import ParquetRowWriter, data_file, row_bytes

LARGE_SAMPLE_BYTES = 16 << 20
"""A sample whose rows of one feature table pass this many bytes (arrays and strings) writes that table's rows itself;
its files' row groups hold as many bytes (the most a worker holds of them)."""
CHUNK_ROW_GROUP_BYTES = 4 << 20
"""A chunk's files' row groups (bytes of Arrow data): with 64 MB ones, a 40-sample chunk held its 25 MB of rows
and wrote them after the extraction, 0.65 s; with 4 MB ones that took 0.02 s."""
WRITTEN_FILE = "_written_file"
"""The marker table of a ``DataFile`` the extractor wrote (not a table of the cache)."""


@dataclass(frozen=True)
class FeatureFiles:
    """Where a sample's own files go: the cache, the run attempt that names them, the schemas of the feature tables
    (those whose rows a large sample writes itself), the limit (``LARGE_SAMPLE_BYTES``; 0: every row) and the files'
    row group size (default: the limit)."""

    cache: str
    attempt: str
    schemas: Mapping[str, pa.Schema]
    limit_bytes: int
    row_group_bytes: Optional[int] = None

    def of_chunk(self) -> FeatureFiles:
        """As written by a chunk: every feature row, in row groups of ``CHUNK_ROW_GROUP_BYTES``."""
        return replace(self, limit_bytes=0, row_group_bytes=CHUNK_ROW_GROUP_BYTES)


class SampleRows:
    """One sample's feature rows (or a chunk's): held per table up to ``files.limit_bytes``, then written to a file of
    their own (``name``; ``sample_file_name`` or ``chunk_file_name``). A limit of 0 writes every row.

    ``add`` every ``(table, row)``; ``finish`` yields the rows held (for the writers) and a ``(WRITTEN_FILE, DataFile)``
    per file written.
    """

    def __init__(self, files: FeatureFiles, name: str) -> None:
        self._files = files
        self._name = name
        self._held: dict[str, list[Mapping[str, Any]]] = {}
        self._held_bytes: dict[str, int] = {}
        self._writers: dict[str, ParquetRowWriter] = {}

    def add(self, table: str, row: Mapping[str, Any]) -> bool:
        """Takes ``row`` of ``table`` when it is a feature table's (``True``), else leaves it to the caller."""
        if table not in self._files.schemas:
            return False
        writer = self._writers.get(table)
        if writer is not None:
            writer.add(row)
            return True
        self._held.setdefault(table, []).append(row)
        self._held_bytes[table] = self._held_bytes.get(table, 0) + row_bytes(row)
        if self._held_bytes[table] > self._files.limit_bytes or not self._files.limit_bytes:
            writer = self._writers[table] = ParquetRowWriter(self._path(table), self._files.schemas[table],
                                                             row_group_bytes=self._files.row_group_bytes or self._files.limit_bytes)
            for held in self._held.pop(table):
                writer.add(held)
        return True

    def finish(self) -> Iterator[tuple[str, Any]]:
        """The rows held, as ``(table, row)``, then ``(WRITTEN_FILE, DataFile)`` of each file written."""
        for table, rows in self._held.items():
            for row in rows:
                yield table, row
        self._held = {}
        for table, writer in self._writers.items():
            count, stats = writer.close()
            yield WRITTEN_FILE, data_file(table, writer.path, count, stats)
        self._writers = {}

    def written(self, pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """``pairs`` (``(table, row)``) passed on but those ``add`` takes, then what ``finish`` yields; when ``pairs``
        fails (or the consumer stops early) the files begun are removed (``abort``) and the failure goes on."""
        try:
            for table, row in pairs:
                if not self.add(table, row):
                    yield table, row
        except BaseException:
            self.abort()
            raise
        yield from self.finish()

    def abort(self) -> None:
        """Removes the files begun (the sample failed before ``finish``)."""
        for writer in self._writers.values():
            writer.abort()
        self._writers = {}

    def _path(self, table: str) -> str:
        return FileSystems.join(data_folder(self._files.cache, table, self._files.attempt), self._name)


def sample_file_name(attempt: str, manifest_row: int) -> str:
    """The name of a large sample's own file, in each table's folder that it writes."""
    return f"{attempt}-row-{manifest_row:016x}.parquet"


def chunk_file_name(attempt: str, first_manifest_row: int) -> str:
    """The name of a chunk's own file (``first_manifest_row``: the least of its samples'): the same on a retry."""
    return f"{attempt}-chunk-{first_manifest_row:016x}.parquet"


def share_file_name(attempt: str, slot: int) -> str:
    """The name of the file of a worker's share of a list (``transforms.work_split``; ``slot``: its key): the same on
    a retry."""
    return f"{attempt}-share-{slot:04x}.parquet"
