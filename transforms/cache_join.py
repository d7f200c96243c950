"""Manifest rows meet what the cache holds, by ``sample_id``, inside the pipeline.

The cached ``samples`` rows and embedding rows of the state the run started
from are read by the workers (one file per element) and joined with the
manifest rows (``CoGroupByKey``). Each group decides its sample: the first
row by ``manifest_row`` keeps the id and carries what the cache holds for it
(``KnownSample``, or ``None``); later rows with the same id fail as
duplicates. Rows that failed before they had an id skip the join.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow.parquet as pq

from schemas.cache import table_uri
from schemas.cache.layout import filesystem
from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord
from transforms.extract_sample import KnownSample

CachedFile = tuple[str, str]
"""A table name and the path of one of its committed files (relative to the table folder)."""

SAMPLE_COLUMNS = ("sample_id", "content_hash", "file_identity", "features_fingerprint", "manifest_hash", "manifest_ok",
                  "n_frames", "n_audio_windows", "n_tokens")
"""The ``samples`` columns an incremental run needs (``file_identity`` is missing from files older than it: read as null)."""


def _read_columns(cache: str, table: str, path: str, wanted: Iterable[str]) -> dict[str, list[Any]]:
    """``wanted`` columns of one committed file (a column the file lacks is all nulls)."""
    fs, local = filesystem(f"{table_uri(cache, table)}/{path}")
    parquet = pq.ParquetFile(local, filesystem=fs)
    present = [c for c in wanted if c in parquet.schema_arrow.names]
    data = parquet.read(columns=present).to_pydict()
    n = parquet.metadata.num_rows
    return {c: data[c] if c in data else [None] * n for c in wanted}


class _CachedSamplesFn(beam.DoFn):
    """A committed ``samples`` file -> ``(sample_id, KnownSample)`` for each valid row (embeddings filled in later)."""

    def __init__(self, cache: str) -> None:
        self._cache = cache

    def process(self, path: str) -> Iterator[tuple[str, tuple]]:
        columns = _read_columns(self._cache, "samples", path, SAMPLE_COLUMNS)
        for i, sample_id in enumerate(columns["sample_id"]):
            if not columns["manifest_ok"][i]:
                continue
            counts = {"video": columns["n_frames"][i], "audio": columns["n_audio_windows"][i], "text": columns["n_tokens"][i]}
            yield sample_id, KnownSample(
                content_hash=columns["content_hash"][i], features_fingerprint=columns["features_fingerprint"][i],
                manifest_hash=columns["manifest_hash"][i], file_identity=columns["file_identity"][i],
                modalities_with_features=frozenset(m for m, n in counts.items() if n),
            ).as_tuple()


class _CachedEmbeddingsFn(beam.DoFn):
    """A committed embedding file -> ``(sample_id, (modality, encoder_fingerprint))`` per row."""

    def __init__(self, cache: str) -> None:
        self._cache = cache

    def process(self, element: CachedFile) -> Iterator[tuple[str, tuple[str, str]]]:
        table, path = element
        columns = _read_columns(self._cache, table, path, ("sample_id", "modality", "encoder_fingerprint"))
        yield from zip(columns["sample_id"], zip(columns["modality"], columns["encoder_fingerprint"]))


def decide(sample_id: str, group: dict[str, list[Any]]) -> Iterator[tuple[ManifestRecord, Optional[KnownSample]]]:
    """The records of one id with what the cache holds for it: the first row keeps the id, later ones are duplicates.

    ``group``: ``manifest`` (records ``as_tuple``), ``cached`` (a ``KnownSample`` ``as_tuple``, or none), ``embedded``
    (``(modality, encoder fingerprint)`` pairs)."""
    records = sorted((ManifestRecord.from_tuple(values) for values in group["manifest"]), key=lambda record: record.manifest_row)
    known = None
    if group["cached"]:
        embedded = frozenset(tuple(e) for e in group["embedded"])
        known = KnownSample.from_tuple(group["cached"][0]).with_embedded(embedded)
    for index, record in enumerate(records):
        if index == 0:
            yield record, known
        else:
            yield record.with_error(ManifestError(
                ErrorKind.DUPLICATE_ID, f"id {sample_id!r} of manifest row {record.manifest_row} was already used by manifest row "
                f"{records[0].manifest_row}; the first row is kept")), None


class JoinWithCache(beam.PTransform):
    """``PCollection[ManifestRecord]`` -> ``PCollection[(ManifestRecord, KnownSample | None)]``, one per record.

    Args:
        cache: the cache folder.
        samples_files: the committed files of ``samples`` in the state the run started from (none: compute everything).
        embedding_files: the committed files of its embedding sets, as ``(table, path)``.
    """

    def __init__(self, cache: str, samples_files: list[str], embedding_files: list[CachedFile]) -> None:
        super().__init__()
        self._cache = cache
        self._samples_files = samples_files
        self._embedding_files = embedding_files

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        pipeline = records.pipeline
        failed = records | "RowFailures" >> beam.Filter(lambda record: not record.sample_id) | "NothingCached" >> beam.Map(lambda r: (r, None))
        keyed = (records | "WithId" >> beam.Filter(lambda record: bool(record.sample_id))
                 | "KeyById" >> beam.Map(lambda r: (r.sample_id, r.as_tuple())))  # plain values travel faster than dataclasses
        cached = (pipeline | "SamplesFiles" >> beam.Create(self._samples_files)
                  | "ReadCachedSamples" >> beam.ParDo(_CachedSamplesFn(self._cache)))
        embedded = (pipeline | "EmbeddingFiles" >> beam.Create(self._embedding_files)
                    | "ReadCachedEmbeddings" >> beam.ParDo(_CachedEmbeddingsFn(self._cache)))
        decided = (
            {"manifest": keyed, "cached": cached, "embedded": embedded}
            | "JoinById" >> beam.CoGroupByKey()
            | "Decide" >> beam.FlatMapTuple(decide)
        )
        return (failed, decided) | "AllRecords" >> beam.Flatten()
