"""Corpus rows read inside the pipeline: manifest shards split by byte ranges, or a folder's files grouped by stem.

Manifest shards (JSONL or CSV) are cut into byte ranges that workers read in
parallel; a JSONL range holds the lines that start inside it. CSV shards
are read whole (a quoted field may span lines). Each row becomes a
``ManifestRecord`` whose ``manifest_row`` is a key unique in the run that
sorts rows in manifest order: ``shard_rank * ROW_KEY_SHARD + position``, the
position being the byte offset of a JSONL line or the rank of a CSV data row.

Problems of one row (unparsable, no id, no modality, a reserved column)
become records with ``error`` set, so the row is still accounted for;
duplicate ids are settled where rows meet by id (``transforms.cache_join``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord
from schemas.tables import MODALITIES, SAMPLES_WITH_SPEECH
from transforms.record_batches import EXTRA_INDEX, RecordBatch, batch_by_bucket

logger = logging.getLogger(__name__)

ROW_KEY_SHARD = 1 << 40
"""``manifest_row`` = shard rank x this + position in the shard (shards up to 1 TiB, 8 million shards)."""
SPLIT_BYTES = 16 << 20
"""JSONL shards are read in byte ranges of this size, in parallel."""
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
MANIFEST_EXTENSIONS = (*JSONL_EXTENSIONS, ".csv")

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".ac3"})
TEXT_EXTENSIONS = frozenset({".txt"})
_MODALITY_OF_EXTENSION = {
    **{ext: "video" for ext in VIDEO_EXTENSIONS},
    **{ext: "audio" for ext in AUDIO_EXTENSIONS},
    **{ext: "text" for ext in TEXT_EXTENSIONS},
}


@dataclass(frozen=True)
class Shard:
    """One manifest file: its URI, its rank among the run's shards (sorted by URI) and its size in bytes."""

    uri: str
    rank: int
    size: int


def modality_of(path: str) -> Optional[str]:
    """``video``, ``audio`` or ``text`` by file extension, or ``None``."""
    return _MODALITY_OF_EXTENSION.get(posixpath.splitext(path)[1].lower())


def _dirname(uri: str) -> str:
    return posixpath.dirname(uri) if "://" in uri else os.path.dirname(os.path.abspath(uri))


_CLEAN_RELATIVE = re.compile(r"(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")
"""A relative path that ``os.path.normpath`` leaves as it is: no empty, ``.`` or ``..`` component, no trailing ``/``."""


def _resolve(value: str, base: str) -> str:
    """A URI or absolute path as is; a relative path joined to ``base`` (the manifest's folder)."""
    if "://" in value or value.startswith("/"):
        return value
    if "://" in base:
        return posixpath.join(base, value)
    if _CLEAN_RELATIVE.fullmatch(value) and base.startswith("/"):  # what normpath would give, without its work
        return f"{base.rstrip('/')}/{value}"
    return os.path.normpath(os.path.join(base, value))


def _infer_csv_value(value: Optional[str]) -> Any:
    if value is None or value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _where(shard: Shard, position: int, is_csv: bool) -> str:
    return f"{'data row' if is_csv else 'line at byte'} {position} of {shard.uri}"


_RESERVED = frozenset(SAMPLES_WITH_SPEECH.names)
"""Column names a manifest may not use: the ``samples`` columns (``text_source`` too, whether or not the run transcribes)."""


def row_record(row: Any, *, shard: Shard, position: int, is_csv: bool = False, base: Optional[str] = None) -> ManifestRecord:
    """The record of one parsed manifest row (a dict; anything else is an invalid row).

    ``base``: the folder relative paths are resolved against (default: the shard's; pass it when reading many rows).
    """
    key = shard.rank * ROW_KEY_SHARD + position
    if not isinstance(row, dict):
        return ManifestRecord(sample_id="", manifest_row=key, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, is_csv)} is a JSON {type(row).__name__}, not an object"))
    raw_id = row.get("id")
    sample_id = "" if raw_id is None else str(raw_id).strip()
    base = _dirname(shard.uri) if base is None else base
    uris = {}
    for modality in MODALITIES:
        value = row.get(modality)
        if value is not None and not isinstance(value, str):
            value = str(value)
        if value and value.strip():
            uris[modality] = _resolve(value.strip(), base)
    extra = {name: (_infer_csv_value(value) if is_csv else value) for name, value in row.items() if name != "id" and name not in MODALITIES}
    reserved = sorted(_RESERVED.intersection(extra))
    error = None
    where = _where(shard, position, is_csv) if reserved or not sample_id or not uris else ""
    if reserved:
        error = ManifestError(ErrorKind.INVALID_ROW, f"{where} has columns {reserved}, reserved in the samples table; rename them")
        extra = {name: value for name, value in extra.items() if name not in reserved}
    elif not sample_id:
        error = ManifestError(ErrorKind.MISSING_ID, f"{where} has no 'id'")
    elif not uris:
        error = ManifestError(ErrorKind.NO_MODALITY, f"{where} ({sample_id!r}) names none of video, audio, text")
    return ManifestRecord(sample_id=sample_id, manifest_row=key, extra=extra, error=error, **uris)


def parse_jsonl_line(line: bytes, *, shard: Shard, position: int, base: Optional[str] = None) -> Optional[ManifestRecord]:
    """The record of one JSONL line starting at byte ``position`` of ``shard`` (``None`` for a blank line); ``base``:
    as ``row_record``."""
    try:
        text = line.decode("utf-8-sig" if position == 0 else "utf-8")
    except UnicodeDecodeError as error:
        return ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD + position, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, False)} is not UTF-8 (byte {error.start} of the line)"))
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD + position, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, False)} is not valid JSON ({error.msg})"))
    return row_record(row, shard=shard, position=position, base=base)


def _open(uri: str) -> Any:
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def read_jsonl_range(shard: Shard, start: int, end: int) -> Iterator[ManifestRecord]:
    """Records of the lines of ``shard`` that start in bytes ``[start, end)``."""
    base = _dirname(shard.uri)
    with _open(shard.uri) as handle:
        position = start
        if start > 0:  # the line that straddles ``start`` belongs to the range before
            handle.seek(start - 1)
            skipped = handle.readline()
            position = start - 1 + len(skipped)
        else:
            handle.seek(0)
        while position < end:
            line = handle.readline()
            if not line:
                return
            record = parse_jsonl_line(line.rstrip(b"\r\n"), shard=shard, position=position, base=base)
            if record is not None:
                yield record
            position += len(line)


def read_csv_shard(shard: Shard) -> Iterator[ManifestRecord]:
    """Records of every data row of a CSV shard (read whole: a quoted field may span lines)."""
    with _open(shard.uri) as handle:
        raw = handle.read()
    try:
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        yield ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{shard.uri} is not a readable UTF-8 CSV file ({error}); none of its rows can be read"))
        return
    if reader.fieldnames is None or "id" not in reader.fieldnames:
        yield ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD, error=ManifestError(
            ErrorKind.MISSING_ID, f"the CSV header of {shard.uri} has no 'id' column (found {reader.fieldnames}); none of its rows can be read"))
        return
    base = _dirname(shard.uri)
    for index, row in enumerate(rows):
        yield row_record({k: v for k, v in row.items() if k is not None}, shard=shard, position=index, is_csv=True, base=base)


def shard_ranges(shard: Shard, split_bytes: int = SPLIT_BYTES) -> list[tuple[Shard, int, int]]:
    """The byte ranges ``(shard, start, end)`` workers read: one for a CSV shard, ``split_bytes`` each for JSONL."""
    if shard.uri.lower().endswith(".csv"):
        return [(shard, 0, max(shard.size, 1))]
    return [(shard, start, min(start + split_bytes, shard.size)) for start in range(0, max(shard.size, 1), split_bytes)]


class _ReadRangeFn(beam.DoFn):
    """A byte range -> its records, or (``buckets`` set) their ``transforms.record_batches`` batches."""

    def __init__(self, buckets: Optional[int] = None) -> None:
        self._buckets = buckets

    def process(self, element: tuple[Shard, int, int]) -> Iterator[Any]:
        shard, start, end = element
        records = read_csv_shard(shard) if shard.uri.lower().endswith(".csv") else read_jsonl_range(shard, start, end)
        if self._buckets is None:
            yield from records
        else:
            yield from batch_by_bucket(records, self._buckets)


class ReadManifestRows(beam.PTransform):
    """Manifest shards -> ``PCollection[ManifestRecord]``, one per non-blank row, read by the workers in byte ranges.

    Args:
        shards: the run's manifest files (``pipelines.manifest.open_manifest``).
        split_bytes: the size of the ranges a JSONL shard is read in.
        buckets: when set, the output is batches by bucket of ids (``transforms.record_batches``), not records.
    """

    def __init__(self, shards: Iterable[Shard], split_bytes: int = SPLIT_BYTES, buckets: Optional[int] = None) -> None:
        super().__init__()
        self._ranges = [r for shard in shards for r in shard_ranges(shard, split_bytes)]
        self._buckets = buckets

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "ManifestRanges" >> beam.Create(self._ranges)  # Create spreads its elements over workers
            | "ReadRanges" >> beam.ParDo(_ReadRangeFn(self._buckets))
        )


def stem_key(stem: str) -> int:
    """A 63-bit ``manifest_row`` for the sample of a folder's stem (stable across runs; collisions need 2^31 stems)."""
    return int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:8], "big") >> 1


def folder_record(stem: str, paths: Iterable[str]) -> ManifestRecord:
    """The record of one stem of a folder: its files by modality; several files of one modality fail it."""
    found: dict[str, list[str]] = {}
    for path in paths:
        found.setdefault(modality_of(path), []).append(path)
    uris = {modality: sorted(paths)[0] for modality, paths in found.items()}
    clashes = {modality: sorted(paths) for modality, paths in found.items() if len(paths) > 1}
    error = ManifestError(ErrorKind.AMBIGUOUS_FILES, f"stem {stem!r} has several files of one modality: {clashes}") if clashes else None
    return ManifestRecord(sample_id=stem, manifest_row=stem_key(stem), error=error, **uris)


def _by_stem(metadata: Any) -> Iterator[tuple[str, str]]:
    path = metadata.path
    if modality_of(path) is None:
        beam.metrics.Metrics.counter("mmfeat", "input_files_ignored").inc()
        logger.warning("--input: %s has no known media extension; it is not read", path)
        return
    yield posixpath.splitext(posixpath.basename(path))[0], path


class ReadFolderRows(beam.PTransform):
    """The files directly in a folder -> ``PCollection[ManifestRecord]``, one per stem (``a.mp4``, ``a.wav`` -> ``a``)."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self._pattern = posixpath.join(folder.rstrip("/"), "*")

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "MatchFiles" >> fileio.MatchFiles(self._pattern)
            | "ByStem" >> beam.FlatMap(_by_stem)
            | "GroupByStem" >> beam.GroupByKey()
            | "Records" >> beam.MapTuple(folder_record)
        )


class InferExtraFields(beam.CombineFn):
    """Records -> the arrow fields of their extra manifest columns, sorted by name (a column of mixed types is a string
    column holding JSON text; one with only nulls a string column).

    Accumulator: column name -> set of arrow type strings seen.
    """

    def create_accumulator(self) -> dict[str, set[str]]:
        return {}

    def add_input(self, accumulator: dict[str, set[str]], record: ManifestRecord) -> dict[str, set[str]]:
        return self.add_extra(accumulator, record.extra)

    @staticmethod
    def add_extra(accumulator: dict[str, set[str]], extra: dict[str, Any]) -> dict[str, set[str]]:
        """``accumulator`` with the types of one record's extra columns."""
        for name, value in extra.items():
            seen = accumulator.setdefault(name, set())
            if value is not None:
                seen.add(_arrow_type_of(value))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, set[str]]]) -> dict[str, set[str]]:
        merged: dict[str, set[str]] = {}
        for accumulator in accumulators:
            for name, seen in accumulator.items():
                merged.setdefault(name, set()).update(seen)
        return merged

    def extract_output(self, accumulator: dict[str, set[str]]) -> list[pa.Field]:
        return [pa.field(name, _common_type(seen)) for name, seen in sorted(accumulator.items())]


class InferBatchExtraFields(InferExtraFields):
    """``InferExtraFields`` over record batches (``transforms.record_batches``)."""

    def add_input(self, accumulator: dict[str, set[str]], batch: RecordBatch) -> dict[str, set[str]]:  # type: ignore[override]
        for values in batch[1]:
            self.add_extra(accumulator, values[EXTRA_INDEX])
        return accumulator


_SCALAR_TYPES = {bool: "bool", int: "int64", float: "double", str: "string"}


def _arrow_type_of(value: Any) -> str:
    """The arrow type name pyarrow infers for ``value`` (``json`` where it infers none)."""
    scalar = _SCALAR_TYPES.get(type(value))
    if scalar:
        return scalar
    try:
        return str(pa.array([value]).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return "json"


def _common_type(seen: set[str]) -> pa.DataType:
    if seen == {"int64", "double"}:
        return pa.float64()
    if len(seen) != 1 or "json" in seen:
        return pa.string()
    found = next(iter(seen))
    try:
        return pa.type_for_alias(found)
    except ValueError:
        return pa.string()


def extra_value(value: Any, field: pa.Field) -> Any:
    """``value`` of an extra column as its ``field`` stores it: JSON text in a string column that mixes types."""
    if value is None or not pa.types.is_string(field.type) or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
