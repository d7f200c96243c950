"""Manifest rows meet what the cache holds, by ``sample_id``, inside the pipeline, in buckets.

The cached ``samples`` rows and embedding rows of the state the run started
from are read by the workers (one file per element) and joined with the
manifest rows by ``sample_id``. The join groups *buckets* of ids (a stable
hash of the id), not single ids: each side sends a bucket's rows as one list
(``CoGroupByKey`` over buckets), so an unchanged rerun of a million rows moves
a few hundred elements between stages instead of two million.

Each bucket decides its samples: the first row of an id by ``manifest_row``
keeps it, later rows fail as duplicates; a sample the cache holds unchanged by
its files' metadata, with every requested embedding, is only counted (it
never reaches the extractor); every other row goes on with what the cache
holds for it (``KnownSample``, or ``None``). Rows that failed before they had
an id (all in the bucket of "") pass through with ``None``, never as duplicates.
"""
from __future__ import annotations

import collections
import pickle
from typing import Any, Collection, Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow.parquet as pq

from schemas.cache import table_uri
from schemas.cache.layout import UNCHANGED_COUNT_PREFIX, RunCount, filesystem
from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord
from transforms.extract_sample_fn import counter
from transforms.manifest_rows import record_of
from transforms.record_batches import BatchRow, bucket_of, gc_paused, pickled, rows_of
from transforms.unchanged import UNCHANGED_BY_METADATA, KnownSample, missing_embeddings, unchanged_by_metadata

CachedFile = tuple[str, str]
"""A table name and the path of one of its committed files (relative to the table folder)."""

SAMPLE_COLUMNS = ("sample_id", "manifest_ok", "content_hash", "file_identity", "features_fingerprint", "manifest_hash",
                  "n_frames", "n_audio_windows", "n_tokens")
"""The ``samples`` columns an incremental run needs (``file_identity`` is missing from files older than it: read as null)."""

_SAMPLES, _EMBEDDED = "samples", "embedded"
"""What a bucket's rows from the cache are: cached samples, or the embeddings they have."""


def _read_columns(cache: str, table: str, path: str, wanted: Iterable[str]) -> dict[str, list[Any]]:
    """``wanted`` columns of one committed file (a column the file lacks is all nulls)."""
    fs, local = filesystem(f"{table_uri(cache, table)}/{path}")
    parquet = pq.ParquetFile(local, filesystem=fs)
    present = [c for c in wanted if c in parquet.schema_arrow.names]
    data = parquet.read(columns=present).to_pydict()
    n = parquet.metadata.num_rows
    return {c: data[c] if c in data else [None] * n for c in wanted}


class _CachedRowsFn(beam.DoFn):
    """A committed file -> ``(bucket, (kind, rows))`` per bucket of its ids, ``rows`` pickled (``record_batches.pickled``):
    for a ``samples`` file (kind ``samples``) ``[(sample_id, KnownSample.as_tuple()), ...]`` of its valid rows, for an
    embedding file (kind ``embedded``) ``[(sample_id, modality, encoder_fingerprint), ...]``."""

    def __init__(self, cache: str, buckets: int) -> None:
        self._cache = cache
        self._buckets = buckets

    def process(self, element: CachedFile) -> Iterator[tuple[int, tuple[str, bytes]]]:
        return gc_paused(self._buckets_of(*element))

    def _buckets_of(self, table: str, path: str) -> Iterator[tuple[int, tuple[str, bytes]]]:
        by_bucket = collections.defaultdict(list)
        if table == "samples":
            columns = _read_columns(self._cache, table, path, SAMPLE_COLUMNS)
            for sample_id, ok, content_hash, identity, features, manifest_hash, frames, windows, tokens in zip(*columns.values()):
                if ok:  # KnownSample.as_tuple's values, built directly (an unchanged rerun reads every cached sample)
                    modalities = tuple(m for m, n in (("audio", windows), ("text", tokens), ("video", frames)) if n)
                    known = (content_hash, features, manifest_hash, modalities, identity)
                    by_bucket[bucket_of(sample_id, self._buckets)].append((sample_id, known))
        else:
            columns = _read_columns(self._cache, table, path, ("sample_id", "modality", "encoder_fingerprint"))
            for row in zip(*columns.values()):
                by_bucket[bucket_of(row[0], self._buckets)].append(row)
        kind = _SAMPLES if table == "samples" else _EMBEDDED
        for bucket, rows in by_bucket.items():
            yield bucket, (kind, pickled(rows))


def decide(records: list[ManifestRecord], known: Optional[KnownSample]) -> Iterator[tuple[ManifestRecord, Optional[KnownSample]]]:
    """The records of one id (any order) with what the cache holds for it: the first row by ``manifest_row`` keeps
    the id and ``known``, later ones fail as duplicates."""
    records = sorted(records, key=lambda record: record.manifest_row)
    first = records[0]
    yield first, known
    for record in records[1:]:
        yield record.with_error(ManifestError(
            ErrorKind.DUPLICATE_ID, f"id {first.sample_id!r} of manifest row {record.manifest_row} was already used by manifest "
            f"row {first.manifest_row}; the first row is kept")), None


class _DecideBucketFn(beam.DoFn):
    """One bucket's manifest rows and cache rows -> ``(ManifestRecord, KnownSample | None)`` for every row that needs
    work, and one ``RunCount`` of the samples unchanged by metadata (when any; one output: Beam's DaskRunner mixes
    tagged outputs).

    Args:
        features_fingerprint: the run's feature config.
        requests: ``{modality: encoder fingerprint}`` of the encoders the run feeds.
        verify_content: compare content hashes even of unchanged identities (nothing is decided here then).
    """

    def __init__(self, features_fingerprint: str, requests: dict[str, str], verify_content: bool) -> None:
        self._features_fingerprint = features_fingerprint
        self._requests = requests
        self._verify_content = verify_content

    def process(self, element: tuple[int, dict[str, list]]) -> Iterator[Any]:
        return gc_paused(self._decide_bucket(*element))

    def _decide_bucket(self, bucket: int, group: dict[str, list]) -> Iterator[Any]:
        by_id: dict[str, list[tuple[Any, BatchRow]]] = collections.defaultdict(list)
        for batch in group["manifest"]:
            source, rows = rows_of(batch)
            for row in rows:
                if row[0]:
                    by_id[row[0]].append((source, row))
                else:
                    yield record_of(source, row), None  # failed before it had an id: nothing to join
        cached: dict[str, tuple] = {}
        embedded: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
        for kind, rows in group["cache"]:
            if kind == _SAMPLES:
                cached.update(pickle.loads(rows))
            else:
                for sample_id, modality, fingerprint in pickle.loads(rows):
                    if sample_id in by_id:
                        embedded[sample_id].add((modality, fingerprint))
        unchanged = 0
        for sample_id, rows in by_id.items():
            known = cached.get(sample_id)
            if len(rows) == 1 and self._unchanged(*rows[0], known, embedded.get(sample_id, ())):
                unchanged += 1
                continue
            if known is not None:
                known = KnownSample.from_tuple(known, frozenset(embedded.get(sample_id, ())))
            yield from decide([record_of(source, row) for source, row in rows], known)
        if unchanged:
            counter("mmfeat", "samples_unchanged").inc(unchanged)
            counter("mmfeat", f"samples_unchanged_by_{UNCHANGED_BY_METADATA}").inc(unchanged)
            yield RunCount(f"{UNCHANGED_COUNT_PREFIX}{UNCHANGED_BY_METADATA}", unchanged)

    def _unchanged(self, source: Any, row: BatchRow, known: Optional[tuple], embedded: Collection[tuple[str, str]]) -> bool:
        _, manifest_hash, identity, _, _ = row
        return (not self._verify_content and unchanged_by_metadata(manifest_hash, identity, known, self._features_fingerprint,
                                                                    uris=lambda: record_of(source, row).uris())
                and not missing_embeddings(known[3], embedded, self._requests))


class JoinWithCache(beam.PTransform):
    """``PCollection[RecordBatch]`` -> ``(records, unchanged)``: ``PCollection[(ManifestRecord, KnownSample | None)]``
    of the rows that need work (one per row), and the ``RunCount`` s of the samples unchanged by metadata (one per
    bucket that has any; the pending list sums them).

    Args:
        cache: the cache folder.
        cached_files: the committed files the join reads, as ``(table, path)``: those of ``samples`` and of the
            embedding sets in the state the run started from (none: compute everything).
        buckets: the number of buckets the batches were made with (``record_batches.num_buckets``).
        features_fingerprint, requests, verify_content: as ``_DecideBucketFn``.
    """

    def __init__(self, cache: str, cached_files: list[CachedFile], *, buckets: int, features_fingerprint: str = "",
                 requests: Optional[dict[str, str]] = None, verify_content: bool = False) -> None:
        super().__init__()
        self._cache = cache
        self._cached_files = cached_files
        self._buckets = buckets
        self._decide = _DecideBucketFn(features_fingerprint, requests or {}, verify_content)

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        cached = (batches.pipeline | "CachedFiles" >> beam.Create(self._cached_files)  # Create spreads them over workers
                  | "ReadCachedRows" >> beam.ParDo(_CachedRowsFn(self._cache, self._buckets)))
        decided = {"manifest": batches, "cache": cached} | "JoinByBucket" >> beam.CoGroupByKey() | "Decide" >> beam.ParDo(self._decide)
        records = decided | "RecordsToExtract" >> beam.Filter(lambda element: not isinstance(element, RunCount))
        unchanged = decided | "UnchangedCounts" >> beam.Filter(lambda element: isinstance(element, RunCount))
        return records, unchanged
