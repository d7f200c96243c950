"""Manifest rows in batches by bucket of ids, the form in which they meet the cache (``transforms.cache_join``).

A batch is ``(bucket, (blob, rows, extra_types))``: ``blob`` holds the rows
packed as one ``bytes`` value (``packed``: what Beam moves between stages
without looking inside; its own coder decodes nested tuples at about 7 us a
row, twice per grouping), ``rows`` their number and ``extra_types`` the arrow
types of their extra manifest columns (``transforms.extra_columns``), so
that counting and schema inference never open the blob.

Each row carries its id and what tells the join an unchanged JSONL line
(``schemas.records.line_hash``). Its record travels as the row's own JSONL
line when it has one (``transforms.manifest_rows.record_of`` parses it
again, for the rows that need work only: an unchanged rerun parses each
line once, for its id), else as ``ManifestRecord.as_tuple``. A worker
reading a manifest range groups its rows by bucket as it reads them (no
``finish_bundle`` outputs, which Beam's DaskRunner drops).
"""
from __future__ import annotations

import collections
import gc
import marshal
import zlib
from typing import Any, Iterable, Iterator, Optional, TypeVar

import apache_beam as beam

from schemas.records import ManifestRecord
from transforms.extra_columns import InferExtraFields

BatchRow = tuple[str, Optional[str], int, Any]
"""``(sample_id, line hash, position, record)``: ``record`` is the row's JSONL line (``bytes``, starting at byte
``position`` of the batch's shard) or its ``ManifestRecord.as_tuple()``."""
RecordBatch = tuple[int, tuple[bytes, int, dict[str, set[str]]]]

MIN_BUCKETS = 16
BUCKET_BYTES = 1 << 20
"""Buckets: one per MiB of manifest, at least ``MIN_BUCKETS`` (a bucket of 1 MiB of rows holds ~15,000 samples). Each
committed file the join reads sends one element per bucket it has ids of: few buckets keep a small rerun cheap."""
BATCH_ROWS = 250
"""Rows a reader gathers per bucket before sending them on (bounds its memory: at most this many per bucket)."""


def num_buckets(manifest_bytes: int) -> int:
    """How many buckets of ids a run uses for a manifest of ``manifest_bytes`` (0: unknown, e.g. a folder)."""
    return max(MIN_BUCKETS, manifest_bytes // BUCKET_BYTES)


def bucket_of(sample_id: str, buckets: int) -> int:
    """The bucket of ``sample_id`` (stable across processes and runs: CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(sample_id.encode("utf-8")) % buckets


class _Pending:
    """The rows a reader holds for one bucket, and the types of their extra columns."""

    __slots__ = ("rows", "extra_types")

    def __init__(self) -> None:
        self.rows: list[BatchRow] = []
        self.extra_types: dict[str, set[str]] = {}

    def batch(self, source: Any) -> tuple[bytes, int, dict[str, set[str]]]:
        return packed((source, self.rows)), len(self.rows), self.extra_types


def batch_by_bucket(rows: Iterable[tuple[BatchRow, dict[str, Any]]], buckets: int, source: Any = None,
                    batch_rows: int = BATCH_ROWS) -> Iterator[RecordBatch]:
    """``rows`` (each with its extra columns) as batches of at most ``batch_rows`` by bucket of their id (a row
    without an id: the bucket of ""); ``source``: what ``record_of`` needs to parse the rows' lines again."""
    pending: dict[int, _Pending] = collections.defaultdict(_Pending)
    for row, extra in rows:
        bucket = bucket_of(row[0], buckets)
        held = pending[bucket]
        held.rows.append(row)
        InferExtraFields.add_extra(held.extra_types, extra)
        if len(held.rows) >= batch_rows:
            yield bucket, pending.pop(bucket).batch(source)
    for bucket, held in pending.items():
        yield bucket, held.batch(source)


def batch_records(records: Iterable[ManifestRecord], buckets: int, batch_rows: int = BATCH_ROWS) -> Iterator[RecordBatch]:
    """``batch_by_bucket`` of records (a CSV shard's or a folder's)."""
    rows = (((record.sample_id, record.line_hash, 0, record.as_tuple()), record.extra) for record in records)
    return batch_by_bucket(rows, buckets, None, batch_rows)


def rows_of(batch: tuple[bytes, int, dict[str, set[str]]]) -> tuple[Any, list[BatchRow]]:
    """The source and the rows of a batch (its value, without the bucket)."""
    return unpacked(batch[0])


class SummariseBatches(beam.CombineFn):
    """Record batches -> ``(rows, extra_fields)``: how many rows they hold, and the arrow fields of their extra
    manifest columns (``InferExtraFields``), from what each batch carries beside its blob (no blob is opened).

    Accumulator: ``(rows, {column: arrow type names seen})``.
    """

    def create_accumulator(self) -> tuple[int, dict[str, set[str]]]:
        return 0, {}

    def add_input(self, accumulator: tuple[int, dict[str, set[str]]], batch: RecordBatch) -> tuple[int, dict[str, set[str]]]:
        _, rows, extra_types = batch[1]
        return self.merge_accumulators([accumulator, (rows, extra_types)])

    def merge_accumulators(self, accumulators: Iterable[tuple[int, dict[str, set[str]]]]) -> tuple[int, dict[str, set[str]]]:
        accumulators = list(accumulators)
        return sum(rows for rows, _ in accumulators), InferExtraFields().merge_accumulators(types for _, types in accumulators)

    def extract_output(self, accumulator: tuple[int, dict[str, set[str]]]) -> tuple[int, list[Any]]:
        rows, types = accumulator
        return rows, InferExtraFields().extract_output(types)


T = TypeVar("T")


def gc_paused(items: Iterator[T]) -> Iterator[T]:
    """``items``, with Python's cyclic garbage collector paused while each is produced (not while it is consumed).

    Reading and joining rows allocates millions of small acyclic objects, which reference counting frees; each
    allocation burst would otherwise start collections that walk every live object (about a fifth of an
    unchanged rerun's time at 100,000 rows)."""
    while True:
        enabled = gc.isenabled()
        gc.disable()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            if enabled:
                gc.enable()
        yield item


def packed(value: Any) -> bytes:
    """``value`` (plain values only: ``None``, numbers, strings, bytes, tuples, lists, dicts, sets) as the ``bytes`` a
    stage boundary moves untouched (see the module's docstring). ``marshal``: several times faster than pickle for
    these; the format is that of this Python version, which every worker of a Beam job shares."""
    return marshal.dumps(value)


def unpacked(blob: bytes) -> Any:
    """The value ``packed`` gave ``blob`` of."""
    return marshal.loads(blob)
