"""Manifest rows meet what the cache holds, by ``sample_id``, inside the pipeline, in buckets.

The cached ``samples`` rows and embedding rows of the state the run started
from are read by the workers (groups of files, ``cached_file_groups``) and joined with the
manifest rows by ``sample_id``. The join groups *buckets* of ids (a stable
hash of the id), not single ids: each side sends a bucket's rows as one value
(``CoGroupByKey`` over buckets; the manifest side's rows packed, the cache
side's an Arrow table), so an unchanged rerun of a million rows moves a few
hundred elements between stages instead of two million.

Each bucket decides its samples: the first row of an id by ``manifest_row``
keeps it, later rows fail as duplicates; a sample the cache holds unchanged by
its files' metadata, with every requested embedding, is only counted (it
never reaches the extractor); every other row goes on with what the cache
holds for it (``KnownSample``, or ``None``). A JSONL line whose hash is the
cached one is the very row the sample was computed from: it is not parsed,
and its files are those the cache recorded. Rows that failed before they had
an id (all in the bucket of "") pass through with ``None``, never as duplicates.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
from typing import Any, Collection, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.cache import table_uri
from schemas.cache.layout import UNCHANGED_COUNT_PREFIX, RunCount, filesystem
from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord, present_uris
from schemas.tables import SAMPLES_BASE
from transforms.extract_sample_fn import counter
from transforms.manifest_rows import record_of
from transforms.record_batches import BatchRow, RecordBatch, bucket_of, gc_paused, rows_of
from transforms.unchanged import UNCHANGED_BY_METADATA, KnownSample, missing_embeddings, same_files

CachedFiles = tuple[str, tuple[str, ...]]
"""A table name and the paths of some of its committed files (relative to the table folder): what one element of the
join's cache side reads (``cached_file_groups``)."""
GROUP_ROWS = 1 << 18
"""The join reads a table's committed files in groups of about this many rows: one read of several files (in parallel
threads) and one slice per bucket, where a file each would send files x buckets slices."""
READ_THREADS = 4

SAMPLE_COLUMNS = ("sample_id", "content_hash", "file_identity", "features_fingerprint", "manifest_hash", "n_frames",
                  "n_audio_windows", "n_tokens", "manifest_line_hash", "video", "audio", "text")
"""The ``samples`` columns an incremental run needs, of its valid rows (``manifest_ok``); ``file_identity`` and
``manifest_line_hash`` are missing from files older than them: read as null."""
DIGEST_BYTES = {"content_hash": 32, "manifest_hash": 32}
"""The hex digests among them and their sizes in bytes: the join moves them as bytes (``hex_as_bytes``), half as many.
An unchanged rerun moves every cached sample through the grouping, whose cost grows with the bytes (about 15 ms a MB
in-process here); the two digests were 38% of them (13.6 of 35.7 MB at 100,000 samples)."""
JOINED_SAMPLES = pa.schema([
    pa.field("same_features", pa.bool_()) if name == "features_fingerprint"
    else pa.field(name, pa.binary(DIGEST_BYTES[name])) if name in DIGEST_BYTES
    else SAMPLES_BASE.field(name).with_nullable(True)
    for name in SAMPLE_COLUMNS])
"""What the join's cache side sends of each cached sample: ``SAMPLE_COLUMNS``, the digests as bytes, and
``features_fingerprint`` as ``same_features`` (whether it is the run's: one bit, where the same 64 characters would
travel with every sample)."""
JOINED_EMBEDDINGS = pa.schema([(name, pa.string()) for name in ("sample_id", "modality", "encoder_fingerprint")])
"""The columns of an embedding set the join reads."""

_SAMPLES, _EMBEDDED = "samples", "embedded"
"""What a bucket's rows from the cache are: cached samples, or the embeddings they have."""


def cached_file_groups(files: Iterable[tuple[str, dict[str, Any]]]) -> list[CachedFiles]:
    """``(table, file)`` of committed files (``file``: a ``schemas.cache.supersede.file_rows`` row) -> the groups the
    join reads: consecutive files of one table, each group holding ``GROUP_ROWS`` rows or more (the last fewer)."""
    groups: list[CachedFiles] = []
    for table, of_table in itertools.groupby(files, key=lambda pair: pair[0]):
        paths: list[str] = []
        rows = 0
        for _, file in of_table:
            paths.append(file["path"])
            rows += file.get("num_records") or 0
            if rows >= GROUP_ROWS:
                groups.append((table, tuple(paths)))
                paths, rows = [], 0
        if paths:
            groups.append((table, tuple(paths)))
    return groups


def _read_file(fs: pafs.FileSystem, path: str, table: str, names: tuple[str, ...]) -> pa.Table:
    """The columns ``names`` of one committed file of ``table`` (``path`` on ``fs``), of its valid rows for ``samples``
    (a column the file lacks is all nulls, of the type the table's schema gives it)."""
    parquet = pq.ParquetFile(path, filesystem=fs)
    present = set(parquet.schema_arrow.names)
    data = parquet.read(columns=[c for c in (*names, "manifest_ok") if c in present], use_threads=False)
    if table == "samples":
        data = data.filter(data.column("manifest_ok"))
    types = SAMPLES_BASE if table == "samples" else JOINED_EMBEDDINGS
    return pa.table([data.column(name) if name in present else pa.nulls(data.num_rows, types.field(name).type) for name in names],
                    names=list(names))


def _read_columns(cache: str, table: str, paths: Collection[str], names: tuple[str, ...]) -> pa.Table:
    """``_read_file`` of some committed files of ``table``, as one table (the files read by ``READ_THREADS`` threads:
    much of a small file's read is opening it)."""
    fs, root = filesystem(table_uri(cache, table))
    with concurrent.futures.ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        parts = list(pool.map(lambda path: _read_file(fs, f"{root}/{path}", table, names), paths))
    return pa.concat_tables(parts)


_HEX_VALUES = np.full(256, 16, np.uint8)  # 16: not a lower-case hex digit
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def hex_as_bytes(column: pa.ChunkedArray, size: int) -> pa.Array:
    """Lower-case hex digests of ``size`` bytes (strings) -> the digests as ``pa.binary(size)``, decoded without a
    Python value per row. A value that is no such digest becomes null: a cache holding it then recomputes, never
    wrongly skips."""
    if not len(column):
        return pa.array([], pa.binary(size))
    right_length = pc.fill_null(pc.equal(pc.binary_length(column), 2 * size), False).combine_chunks()
    digits = pc.if_else(right_length, column, "0" * (2 * size)).combine_chunks().cast(pa.string())
    _, offsets, data = digits.buffers()
    start = int(np.frombuffer(offsets, np.int32)[digits.offset])  # every value is 2 * size characters from here
    nibbles = _HEX_VALUES[np.frombuffer(data, np.uint8)[start:start + 2 * size * len(digits)].reshape(-1, 2 * size)]
    valid = right_length.to_numpy(zero_copy_only=False) & (nibbles < 16).all(axis=1)
    digests = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return pa.Array.from_buffers(pa.binary(size), len(digits), [pa.array(valid).buffers()[1], pa.py_buffer(digests.tobytes())])


def _joined_samples(data: pa.Table, features_fingerprint: str) -> pa.Table:
    """``SAMPLE_COLUMNS`` as read -> ``JOINED_SAMPLES`` (for the run's ``features_fingerprint``)."""
    columns = {
        name: pc.fill_null(pc.equal(data.column(name), features_fingerprint), False) if name == "features_fingerprint"
        else hex_as_bytes(data.column(name), DIGEST_BYTES[name]) if name in DIGEST_BYTES
        else data.column(name)
        for name in SAMPLE_COLUMNS}
    return pa.table(list(columns.values()), schema=JOINED_SAMPLES)


def _unpacked_tables(blobs: Iterable[bytes], schema: pa.Schema) -> Optional[pa.Table]:
    """The record batches of ``schema`` that ``_CachedRowsFn`` serialized as ``blobs``, as one table (``None``: none)."""
    batches = [pa.ipc.read_record_batch(pa.py_buffer(blob), schema) for blob in blobs]
    return pa.Table.from_batches(batches, schema) if batches else None


class _CachedRowsFn(beam.DoFn):
    """A group of committed files of one table (``cached_file_groups``) -> ``(bucket, (kind, rows))`` per bucket of
    their ids, ``rows`` an Arrow record batch serialized without its schema: for ``samples`` files (kind ``samples``)
    the ``JOINED_SAMPLES`` of their valid rows, for embedding files (kind ``embedded``) their ``JOINED_EMBEDDINGS``. The
    rows are sorted by bucket once and cut into slices: an unchanged rerun reads every cached sample, and builds no
    Python value per row here but its id.

    Args:
        cache: the cache folder; buckets: the number of buckets; features_fingerprint: the run's feature config
            (``same_features`` tells whether a sample was computed with it).
    """

    def __init__(self, cache: str, buckets: int, features_fingerprint: str) -> None:
        self._cache = cache
        self._buckets = buckets
        self._features_fingerprint = features_fingerprint

    def process(self, element: CachedFiles) -> Iterator[tuple[int, tuple[str, bytes]]]:
        return gc_paused(self._buckets_of(*element))

    def _buckets_of(self, table: str, paths: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, bytes]]]:
        kind = _SAMPLES if table == "samples" else _EMBEDDED
        data = _read_columns(self._cache, table, paths, SAMPLE_COLUMNS if kind == _SAMPLES else tuple(JOINED_EMBEDDINGS.names))
        if not data.num_rows:
            return
        if kind == _SAMPLES:
            data = _joined_samples(data, self._features_fingerprint)
        ids = data.column("sample_id").to_pylist()
        buckets = np.fromiter((bucket_of(sample_id, self._buckets) for sample_id in ids), np.int64, len(ids))
        order = np.argsort(buckets, kind="stable")
        rows = data.take(order).combine_chunks().to_batches()[0]
        buckets = buckets[order]
        bounds = [0, *(np.flatnonzero(np.diff(buckets)) + 1), len(ids)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield int(buckets[start]), (kind, rows.slice(start, end - start).serialize().to_pybytes())


class _CachedSamples:
    """A bucket's cached samples (``JOINED_SAMPLES``) found by id (``index``). The columns every unchanged sample is
    told by are Python lists from the start; the others become lists when first asked for (``column``); digests are
    hex strings again, as the rest of the pipeline holds them."""

    def __init__(self, data: Optional[pa.Table]) -> None:
        self._data = JOINED_SAMPLES.empty_table() if data is None else data
        self._lists: dict[str, list[Any]] = {}
        self.index: dict[str, int] = dict(zip(self.column("sample_id"), range(self._data.num_rows)))
        self.line_hash, self.same_features, self.identity, self.video, self.audio, self.text = (self.column(c) for c in (
            "manifest_line_hash", "same_features", "file_identity", "video", "audio", "text"))

    def column(self, name: str) -> list[Any]:
        if name not in self._lists:
            values = self._data.column(name).to_pylist()
            self._lists[name] = [None if v is None else v.hex() for v in values] if name in DIGEST_BYTES else values
        return self._lists[name]

    def modalities(self, i: int) -> tuple[str, ...]:
        """The modalities row ``i`` has features of (sorted)."""
        counts = (("audio", "n_audio_windows"), ("text", "n_tokens"), ("video", "n_frames"))
        return tuple(modality for modality, name in counts if self.column(name)[i])

    def known(self, i: int, embedded: frozenset[tuple[str, str]]) -> KnownSample:
        """Row ``i`` as a ``KnownSample`` with the embeddings it has."""
        return KnownSample(self.column("content_hash")[i], self.same_features[i], self.column("manifest_hash")[i],
                           frozenset(self.modalities(i)), self.identity[i], embedded)

    def uris(self, i: int) -> dict[str, str]:
        return present_uris(self.video[i], self.audio[i], self.text[i])


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
        requests: ``{modality: encoder fingerprint}`` of the encoders the run feeds.
        verify_content: compare content hashes even of unchanged identities (nothing is decided here then).
    """

    def __init__(self, requests: dict[str, str], verify_content: bool) -> None:
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
        cache = group.get("cache", ())  # none: the run joins no committed files (a new cache)
        cached = _CachedSamples(_unpacked_tables((blob for kind, blob in cache if kind == _SAMPLES), JOINED_SAMPLES))
        embedded: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
        embeddings = _unpacked_tables((blob for kind, blob in cache if kind == _EMBEDDED), JOINED_EMBEDDINGS)
        if embeddings is not None:
            for sample_id, modality, fingerprint in zip(*(embeddings.column(c).to_pylist() for c in JOINED_EMBEDDINGS.names)):
                if sample_id in by_id:
                    embedded[sample_id].add((modality, fingerprint))
        unchanged = 0
        index, line_hashes, same_features = cached.index, cached.line_hash, cached.same_features
        for sample_id, rows in by_id.items():
            i = index.get(sample_id)
            if i is not None and len(rows) == 1 and not self._verify_content and same_features[i]:
                source, row = rows[0]
                record = None if row[1] is not None and row[1] == line_hashes[i] else record_of(source, row)
                if self._unchanged(record, cached, i, embedded.get(sample_id, ())):
                    unchanged += 1
                    continue
                records = [record or record_of(source, row)]
            else:
                records = [record_of(source, row) for source, row in rows]
            yield from decide(records, None if i is None else cached.known(i, frozenset(embedded.get(sample_id, ()))))
        if unchanged:
            counter("mmfeat", "samples_unchanged").inc(unchanged)
            counter("mmfeat", f"samples_unchanged_by_{UNCHANGED_BY_METADATA}").inc(unchanged)
            yield RunCount(f"{UNCHANGED_COUNT_PREFIX}{UNCHANGED_BY_METADATA}", unchanged)

    def _unchanged(self, record: Optional[ManifestRecord], cached: _CachedSamples, i: int, embedded: Collection[tuple[str, str]]) -> bool:
        """The sample of ``record`` (``None``: of the very line cached row ``i`` was computed from), cached from the
        run's feature config, is cached unchanged by its files' metadata, with every requested embedding."""
        if self._requests and missing_embeddings(cached.modalities(i), embedded, self._requests):
            return False
        if record is None:  # the same line: the same row, so the cached URIs are the row's
            return same_files(cached.identity[i], cached.uris(i))
        return (record.error is None and record.fingerprint() == cached.column("manifest_hash")[i]
                and same_files(cached.identity[i], record.uris()))


class JoinWithCache(beam.PTransform):
    """``PCollection[RecordBatch]`` -> ``(records, unchanged)``: ``PCollection[(ManifestRecord, KnownSample | None)]``
    of the rows that need work (one per row), and the ``RunCount`` s of the samples unchanged by metadata (one per
    bucket that has any; the pending list sums them).

    Args:
        cache: the cache folder.
        cached_files: the committed files the join reads, in groups (``cached_file_groups``): those of ``samples`` and
            of the embedding sets in the state the run started from (none: compute everything).
        buckets: the number of buckets the batches were made with (``record_batches.num_buckets``).
        features_fingerprint: the run's feature config (a cached sample computed with another is recomputed).
        requests, verify_content: as ``_DecideBucketFn``.
    """

    def __init__(self, cache: str, cached_files: list[CachedFiles], *, buckets: int, features_fingerprint: str = "",
                 requests: Optional[dict[str, str]] = None, verify_content: bool = False) -> None:
        super().__init__()
        self._cache = cache
        self._cached_files = cached_files
        self._buckets = buckets
        self._features_fingerprint = features_fingerprint
        self._decide = _DecideBucketFn(requests or {}, verify_content)

    def join_here(self, batches: Iterable[RecordBatch]) -> tuple[list[tuple[ManifestRecord, Optional[KnownSample]]], list[RunCount]]:
        """What ``expand`` outputs for ``batches``, computed in this process by the same functions (a small manifest
        and cache, joined by the launcher): the rows that need work, and the ``RunCount`` s of unchanged samples."""
        groups: dict[int, dict[str, list]] = collections.defaultdict(lambda: {"manifest": [], "cache": []})
        for bucket, batch in batches:
            groups[bucket]["manifest"].append(batch)
        read = _CachedRowsFn(self._cache, self._buckets, self._features_fingerprint)
        for files in self._cached_files:
            for bucket, rows in read.process(files):
                if bucket in groups:  # cached samples of a bucket without manifest rows: nothing to decide
                    groups[bucket]["cache"].append(rows)
        decided = [element for bucket, group in groups.items() for element in self._decide.process((bucket, group))]
        return ([element for element in decided if not isinstance(element, RunCount)],
                [element for element in decided if isinstance(element, RunCount)])

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        sides = {"manifest": batches}
        if self._cached_files:  # a new cache has none: no stage to read them (a first run's fixed cost)
            sides["cache"] = (batches.pipeline | "CachedFiles" >> beam.Create(self._cached_files)  # Create spreads them over workers
                              | "ReadCachedRows" >> beam.ParDo(_CachedRowsFn(self._cache, self._buckets, self._features_fingerprint)))
        decided = sides | "JoinByBucket" >> beam.CoGroupByKey() | "Decide" >> beam.ParDo(self._decide)
        records = decided | "RecordsToExtract" >> beam.Filter(lambda element: not isinstance(element, RunCount))
        unchanged = decided | "UnchangedCounts" >> beam.Filter(lambda element: isinstance(element, RunCount))
        return records, unchanged
