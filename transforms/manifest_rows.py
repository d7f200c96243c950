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
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord, line_hash, line_hasher
from schemas.tables import MODALITIES, SAMPLES_WITH_SPEECH
from transforms.record_batches import BatchRow, batch_by_bucket, batch_records, gc_paused

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


_NORMALISED_AWAY = frozenset({"", ".", ".."})
"""Path components ``os.path.normpath`` removes or resolves (an empty one: ``a//b`` or a trailing ``/``)."""


def _resolve(value: str, base: str) -> str:
    """A URI or absolute path as is; a relative path joined to ``base`` (the manifest's folder)."""
    if "://" in value or value.startswith("/"):
        return value
    if "://" in base:
        return posixpath.join(base, value)
    if base.startswith("/") and _NORMALISED_AWAY.isdisjoint(value.split("/")):  # what normpath would give, without its work
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


_NOT_EXTRA = frozenset({"id", *MODALITIES})
_RESERVED = frozenset(SAMPLES_WITH_SPEECH.names)
"""Column names a manifest may not use: the ``samples`` columns (``text_source`` too, whether or not the run transcribes)."""


def _row_id(row: dict[str, Any]) -> str:
    """A parsed row's id ("" when it has none)."""
    raw_id = row.get("id")
    return "" if raw_id is None else str(raw_id).strip()


def _extra_columns(row: dict[str, Any], is_csv: bool) -> tuple[dict[str, Any], list[str]]:
    """A parsed row's extra columns (reserved ones left out) and the reserved column names it uses."""
    extra = {name: value for name, value in row.items() if name not in _NOT_EXTRA}  # every row of a run comes here
    if is_csv:
        extra = {name: _infer_csv_value(value) for name, value in extra.items()}
    if _RESERVED.isdisjoint(extra):
        return extra, []
    reserved = sorted(_RESERVED.intersection(extra))
    return {name: value for name, value in extra.items() if name not in reserved}, reserved


def _row_fields(row: dict[str, Any], base: str, is_csv: bool) -> tuple[str, dict[str, str], dict[str, Any], list[str]]:
    """A parsed row's id, resolved URIs by modality, extra columns (reserved ones left out) and reserved column names."""
    uris = {}
    for modality in MODALITIES:
        value = row.get(modality)
        if value is not None and not isinstance(value, str):
            value = str(value)
        if value and value.strip():
            uris[modality] = _resolve(value.strip(), base)
    return _row_id(row), uris, *_extra_columns(row, is_csv)


def row_record(row: Any, *, shard: Shard, position: int, is_csv: bool = False, base: Optional[str] = None,
               line_hash: Optional[str] = None) -> ManifestRecord:
    """The record of one parsed manifest row (a dict; anything else is an invalid row).

    ``base``: the folder relative paths are resolved against (default: the shard's; pass it when reading many rows);
    ``line_hash``: the record's (``schemas.records.line_hash`` of its JSONL line).
    """
    key = shard.rank * ROW_KEY_SHARD + position
    if not isinstance(row, dict):
        return ManifestRecord(sample_id="", manifest_row=key, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, is_csv)} is a JSON {type(row).__name__}, not an object"))
    sample_id, uris, extra, reserved = _row_fields(row, _dirname(shard.uri) if base is None else base, is_csv)
    error = None
    where = _where(shard, position, is_csv) if reserved or not sample_id or not uris else ""
    if reserved:
        error = ManifestError(ErrorKind.INVALID_ROW, f"{where} has columns {reserved}, reserved in the samples table; rename them")
    elif not sample_id:
        error = ManifestError(ErrorKind.MISSING_ID, f"{where} has no 'id'")
    elif not uris:
        error = ManifestError(ErrorKind.NO_MODALITY, f"{where} ({sample_id!r}) names none of video, audio, text")
    return ManifestRecord(sample_id=sample_id, manifest_row=key, extra=extra, error=error, line_hash=line_hash, **uris)


def _line_text(line: bytes, position: int) -> str:
    """A JSONL line as text (UTF-8; a byte-order mark is allowed at the start of the shard only).

    Raises:
        UnicodeDecodeError: the line is not UTF-8.
    """
    return line.decode("utf-8-sig" if position == 0 else "utf-8")


_DECODER = json.JSONDecoder()


def _json_value(text: str) -> Any:
    """``json.loads(text)``: a value with no white space around it (a manifest line, as writers write them) is decoded
    directly, at about a third of ``json.loads``'s cost per line; anything else by ``json.loads``, errors included."""
    try:
        value, end = _DECODER.raw_decode(text)
        if end == len(text):
            return value
    except ValueError:
        pass
    return json.loads(text)


def parse_jsonl_line(line: bytes, *, shard: Shard, position: int, base: Optional[str] = None) -> Optional[ManifestRecord]:
    """The record of one JSONL line starting at byte ``position`` of ``shard`` (``None`` for a blank line); ``base``:
    as ``row_record``."""
    try:
        text = _line_text(line, position)
    except UnicodeDecodeError as error:
        return ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD + position, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, False)} is not UTF-8 (byte {error.start} of the line)"))
    if not text.strip():
        return None
    try:
        row = _json_value(text)
    except json.JSONDecodeError as error:
        return ManifestRecord(sample_id="", manifest_row=shard.rank * ROW_KEY_SHARD + position, error=ManifestError(
            ErrorKind.INVALID_ROW, f"{_where(shard, position, False)} is not valid JSON ({error.msg})"))
    base = _dirname(shard.uri) if base is None else base
    return row_record(row, shard=shard, position=position, base=base, line_hash=line_hash(line, base))


def _open(uri: str) -> Any:
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def _jsonl_lines(shard: Shard, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(position, line)`` of every line of ``shard`` that starts in bytes ``[start, end)``, line ends removed (the
    range is read in one piece, and the line that straddles ``end`` finished)."""
    with _open(shard.uri) as handle:
        position = 0
        if start > 0:  # the line that straddles ``start`` belongs to the range before
            handle.seek(start - 1)
            position = start - 1 + len(handle.readline())
        if position >= end:
            return
        handle.seek(position)
        block = handle.read(end - position)
        if block and not block.endswith(b"\n"):
            block += handle.readline()
        lines = block.split(b"\n")
        if not lines[-1]:  # what follows the last line end
            lines.pop()
        for line in lines:
            yield position, line.rstrip(b"\r\n")
            position += len(line) + 1


def read_jsonl_range(shard: Shard, start: int, end: int) -> Iterator[ManifestRecord]:
    """Records of the lines of ``shard`` that start in bytes ``[start, end)``."""
    base = _dirname(shard.uri)
    for position, line in _jsonl_lines(shard, start, end):
        record = parse_jsonl_line(line, shard=shard, position=position, base=base)
        if record is not None:
            yield record


def read_jsonl_rows(shard: Shard, start: int, end: int) -> Iterator[tuple[BatchRow, dict[str, Any]]]:
    """``read_jsonl_range`` as batch rows (``transforms.record_batches``), each with its extra columns: every
    non-blank line travels as itself, with its id and ``line_hash`` ("" and ``None`` for a line that is not a JSON
    object with an id). No record is built: ``record_of`` parses the line again, for the rows that need work only."""
    hash_line = line_hasher(_dirname(shard.uri))
    for position, line in _jsonl_lines(shard, start, end):
        try:
            text = _line_text(line, position)
            row = _json_value(text)
        except UnicodeDecodeError:
            row = None
        except ValueError:  # not JSON, or blank
            if not text.strip():
                continue
            row = None
        sample_id, extra = (_row_id(row), _extra_columns(row, is_csv=False)[0]) if isinstance(row, dict) else ("", {})
        yield (sample_id, hash_line(line) if sample_id else None, position, line), extra


def line_source(shard: Shard) -> tuple[str, int, int, str]:
    """What ``record_of`` needs to parse the lines of ``shard`` again, as plain values: its URI, rank, size and the
    folder its relative paths resolve against."""
    return shard.uri, shard.rank, shard.size, _dirname(shard.uri)


def record_of(source: Optional[tuple[str, int, int, str]], row: BatchRow) -> ManifestRecord:
    """The record of a batch row; ``source``: the batch's ``line_source`` when its rows are lines."""
    _, _, position, payload = row
    if isinstance(payload, bytes):
        uri, rank, size, base = source
        return parse_jsonl_line(payload, shard=Shard(uri, rank, size), position=position, base=base)
    return ManifestRecord.from_tuple(payload)


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
        is_csv = shard.uri.lower().endswith(".csv")
        if self._buckets is None:
            yield from read_csv_shard(shard) if is_csv else read_jsonl_range(shard, start, end)
        elif is_csv:
            yield from gc_paused(batch_records(read_csv_shard(shard), self._buckets))
        else:
            rows = read_jsonl_rows(shard, start, end)
            yield from gc_paused(batch_by_bucket(rows, self._buckets, source=line_source(shard)))


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

    def read_here(self) -> Iterator[Any]:
        """What ``expand`` outputs, read in this process (a small manifest, joined with the cache by the launcher)."""
        read = _ReadRangeFn(self._buckets)
        for element in self._ranges:
            yield from read.process(element)


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
