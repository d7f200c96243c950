"""Manifest records in batches by bucket of ids, the form in which they meet the cache (``transforms.cache_join``).

A batch is ``(bucket, [ManifestRecord.as_tuple(), ...])``: plain values, so a
stage boundary encodes a few thousand rows as one element. A worker reading
a manifest range groups its rows by bucket as it reads them (no ``finish_bundle``
outputs, which Beam's DaskRunner drops).
"""
from __future__ import annotations

import collections
import zlib
from typing import Iterable, Iterator

import apache_beam as beam

from schemas.records import ManifestRecord

RecordBatch = tuple[int, list[tuple]]

MIN_BUCKETS = 64
BUCKET_BYTES = 1 << 20
"""Buckets: one per MiB of manifest, at least ``MIN_BUCKETS`` (a bucket of 1 MiB of rows holds ~15,000 samples)."""
BATCH_ROWS = 2_000
"""Rows a reader gathers per bucket before sending them on (bounds its memory)."""
EXTRA_INDEX = 5
"""Where ``ManifestRecord.as_tuple`` puts the extra columns."""


def num_buckets(manifest_bytes: int) -> int:
    """How many buckets of ids a run uses for a manifest of ``manifest_bytes`` (0: unknown, e.g. a folder)."""
    return max(MIN_BUCKETS, manifest_bytes // BUCKET_BYTES)


def bucket_of(sample_id: str, buckets: int) -> int:
    """The bucket of ``sample_id`` (stable across processes and runs: CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(sample_id.encode("utf-8")) % buckets


def batch_by_bucket(records: Iterable[ManifestRecord], buckets: int, batch_rows: int = BATCH_ROWS) -> Iterator[RecordBatch]:
    """``records`` as batches of at most ``batch_rows`` by bucket of their id (a row without an id: the bucket of "")."""
    pending: dict[int, list[tuple]] = collections.defaultdict(list)
    for record in records:
        bucket = bucket_of(record.sample_id, buckets)
        batch = pending[bucket]
        batch.append(record.as_tuple())
        if len(batch) >= batch_rows:
            yield bucket, pending.pop(bucket)
    yield from pending.items()


def records_of(batch: RecordBatch) -> Iterator[ManifestRecord]:
    """The records of a batch."""
    return (ManifestRecord.from_tuple(values) for values in batch[1])


class CountBatchedRecords(beam.PTransform):
    """``PCollection[RecordBatch]`` -> one element: the number of records (0 when none)."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "BatchSizes" >> beam.Map(lambda batch: len(batch[1])) | "Sum" >> beam.CombineGlobally(sum)
