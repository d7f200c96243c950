"""Reading a corpus description into ``ManifestRecord`` s, on the launcher, before the pipeline starts.

Two inputs: a manifest (JSONL or CSV, one row per sample: ``id``, any of
``video``/``audio``/``text``, and extra columns) or a folder whose files are
grouped by stem (``a.mp4``, ``a.wav``, ``a.txt`` -> sample ``a``).

Problems of the whole input (missing file, no ``id`` column, unknown format)
raise ``ConfigError``. Problems of one row (no id, duplicate id, no
modality, unparsable line) become a record with ``error`` set, so the row
is still accounted for in ``samples`` and ``errors``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Optional

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from schemas.errors import ConfigError, ErrorKind
from schemas.records import ManifestError, ManifestRecord
from schemas.tables import MODALITIES, SAMPLES_BASE

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma"})
TEXT_EXTENSIONS = frozenset({".txt"})
_MODALITY_OF_EXTENSION = {
    **{ext: "video" for ext in VIDEO_EXTENSIONS},
    **{ext: "audio" for ext in AUDIO_EXTENSIONS},
    **{ext: "text" for ext in TEXT_EXTENSIONS},
}


@dataclass(frozen=True)
class Corpus:
    """The records of one input and the arrow fields of its extra columns (for the ``samples`` schema)."""

    source: str
    records: list[ManifestRecord]
    extra_fields: list[pa.Field]


def _dirname(uri: str) -> str:
    return posixpath.dirname(uri) if "://" in uri else os.path.dirname(os.path.abspath(uri))


def _resolve(value: str, base: str) -> str:
    """A URI or absolute path as is; a relative path joined to ``base`` (the manifest's folder)."""
    if "://" in value or value.startswith("/"):
        return value
    if "://" in base:
        return posixpath.join(base, value)
    return os.path.normpath(os.path.join(base, value))


def _read_text(uri: str) -> str:
    if not FileSystems.exists(uri):
        raise ConfigError(f"--manifest: no such file: {uri}")
    with FileSystems.open(uri) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"--manifest: {uri} is not UTF-8 text (byte offset {error.start})") from error


def _parse_rows(uri: str, content: str) -> list[Any]:
    """Rows as dicts; a JSONL line that is not a JSON object becomes a ``ManifestError`` in its place."""
    lowered = uri.lower()
    if lowered.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(content))
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise ConfigError(f"--manifest: the CSV header of {uri} has no 'id' column (found {reader.fieldnames})")
        return [{key: (value if value != "" else None) for key, value in row.items()} for row in reader]
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        rows: list[Any] = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(ManifestError(ErrorKind.INVALID_ROW, f"line {number} is not valid JSON ({error.msg})"))
                continue
            if not isinstance(row, dict):
                rows.append(ManifestError(ErrorKind.INVALID_ROW, f"line {number} is a JSON {type(row).__name__}, not an object"))
                continue
            rows.append(row)
        return rows
    raise ConfigError(f"--manifest: {uri} must end in .jsonl, .ndjson, .json (JSON lines) or .csv")


def _infer_csv_value(value: Optional[str]) -> Any:
    if value is None:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _extra_fields(records: list[ManifestRecord], columns: list[str]) -> tuple[list[pa.Field], list[ManifestRecord]]:
    """Arrow fields for the extra columns, inferred over all rows; mixed-type columns become strings."""
    fields = []
    for name in columns:
        values = [record.extra.get(name) for record in records]
        try:
            array = pa.array(values)
            if pa.types.is_null(array.type):
                array = array.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            logger.warning("manifest column %r mixes types; it is stored as JSON text", name)
            records = [
                replace(r, extra={**r.extra, name: None if r.extra.get(name) is None else json.dumps(r.extra[name])})
                for r in records
            ]
            array = pa.array([r.extra.get(name) for r in records], type=pa.string())
        fields.append(pa.field(name, array.type))
    return fields, records


def read_manifest(uri: str) -> Corpus:
    """Parse and validate a JSONL or CSV manifest into records (one per data row, in order).

    Raises:
        ConfigError: the manifest is missing, not UTF-8, of an unknown format,
            has no ``id`` column at all, or has a column named like a reserved ``samples`` column.
    """
    content = _read_text(uri)
    rows = _parse_rows(uri, content)
    base = _dirname(uri)
    is_csv = uri.lower().endswith(".csv")
    dict_rows = [row for row in rows if isinstance(row, dict)]
    if dict_rows and not any("id" in row for row in dict_rows):
        raise ConfigError(f"--manifest: no row of {uri} has an 'id' field; every row needs a unique 'id'")
    columns: list[str] = []
    for row in dict_rows:
        columns.extend(key for key in row if key not in columns and key != "id" and key not in MODALITIES)
    reserved = sorted(set(columns) & set(SAMPLES_BASE.names))
    if reserved:
        raise ConfigError(f"--manifest: columns {reserved} are reserved in the samples table; rename them in {uri}")

    records: list[ManifestRecord] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if isinstance(row, ManifestError):
            records.append(ManifestRecord(sample_id="", manifest_row=index, error=row))
            continue
        extra = {key: (_infer_csv_value(row.get(key)) if is_csv else row.get(key)) for key in columns}
        raw_id = row.get("id")
        sample_id = "" if raw_id is None else str(raw_id).strip()
        uris = {}
        for modality in MODALITIES:
            value = row.get(modality)
            if value is not None and not isinstance(value, str):
                value = str(value)
            if value and value.strip():
                uris[modality] = _resolve(value.strip(), base)
        error = None
        if not sample_id:
            error = ManifestError(ErrorKind.MISSING_ID, f"row {index} has no 'id'")
        elif sample_id in seen:
            error = ManifestError(
                ErrorKind.DUPLICATE_ID, f"id {sample_id!r} of row {index} was already used by row {seen[sample_id]}; the first row is kept"
            )
        elif not uris:
            error = ManifestError(ErrorKind.NO_MODALITY, f"row {index} ({sample_id!r}) names none of video, audio, text")
        if sample_id and sample_id not in seen:
            seen[sample_id] = index
        records.append(ManifestRecord(sample_id=sample_id, manifest_row=index, extra=extra, error=error, **uris))
    fields, records = _extra_fields(records, columns)
    return Corpus(source=uri, records=records, extra_fields=fields)


def modality_of(path: str) -> Optional[str]:
    """``video``, ``audio`` or ``text`` by file extension, or ``None``."""
    return _MODALITY_OF_EXTENSION.get(posixpath.splitext(path)[1].lower())


def read_folder(uri: str) -> Corpus:
    """Group the files directly in folder ``uri`` by stem into records (sorted by stem).

    Files of unknown extensions are listed in a warning and not read. Two
    files of one modality under one stem (``a.wav`` and ``a.flac``) make that
    sample fail with ``ambiguous_files``.

    Raises:
        ConfigError: the folder is missing or holds no media file.
    """
    pattern = posixpath.join(uri.rstrip("/"), "*")
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # Beam raises BeamIOError (or OSError) for a missing folder
        raise ConfigError(f"--input: cannot list {uri} ({error})") from error
    by_stem: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    ignored = []
    for metadata in matches:
        path = metadata.path
        modality = modality_of(path)
        if modality is None:
            ignored.append(posixpath.basename(path))
            continue
        stem = posixpath.splitext(posixpath.basename(path))[0]
        by_stem[stem][modality].append(path)
    if ignored:
        logger.warning("--input: %d files with no known media extension are not read: %s", len(ignored), sorted(ignored)[:20])
    if not by_stem:
        raise ConfigError(f"--input: {uri} holds no video, audio or text file")
    records = []
    for index, stem in enumerate(sorted(by_stem)):
        found = by_stem[stem]
        uris = {modality: sorted(paths)[0] for modality, paths in found.items()}
        clashes = {modality: sorted(paths) for modality, paths in found.items() if len(paths) > 1}
        error = None
        if clashes:
            error = ManifestError(ErrorKind.AMBIGUOUS_FILES, f"stem {stem!r} has several files of one modality: {clashes}")
        records.append(ManifestRecord(sample_id=stem, manifest_row=index, error=error, **uris))
    return Corpus(source=uri, records=records, extra_fields=[])
