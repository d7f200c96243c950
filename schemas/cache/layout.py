"""Where a cache's tables live, how their files are reached, and what committing one data file needs.

A cache folder holds one Delta Lake table per table name (``samples``,
``frames``, ``audio``, ``text``, ``errors``, ``embeddings/<modality>/<set>``)
and ``_pending/``, where each run attempt lists the data files its workers
wrote, the committed files it replaces and the manifest rows it found
unchanged (read by the launcher that commits them, never by readers; removed
after the commit).

Data files are named ``{attempt}-...parquet`` (``attempt`` is the run id plus
a random token), so two runs never write the same name.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from schemas.tables import EMBEDDINGS_DIR, TABLE_NAMES

PENDING_DIR = "_pending"
ATTEMPT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{8}-[a-z]+-[^/]*\.parquet$")
"""The name of a data file a run attempt writes (``{run_id}-{token}-part-…``, ``-row-…``, ``-rewrite-…``)."""
LEGACY_BOOKKEEPING = ("_staging", "_commit", "_runs", "_lock", "_run.json", "_SUCCESS")
"""What a schema-version-1 cache (plain Parquet folders and its own commit protocol) kept beside its table folders."""
ROW_COUNT_COLUMNS = {"frames": "n_frames", "audio": "n_audio_windows", "text": "n_tokens", "errors": "n_errors"}
"""Feature table -> the ``samples`` column that says how many rows a sample has there (0: none)."""


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def normalise(cache: str) -> str:
    """``cache`` as an absolute path (local) or unchanged URI, without a trailing slash."""
    if is_local(cache):
        return os.path.abspath(cache[len("file://"):] if cache.startswith("file://") else cache)
    return cache.rstrip("/")


def table_uri(cache: str, table: str) -> str:
    """Location of ``table`` (a table name such as ``frames`` or ``embeddings/text/minilm-...``) in ``cache``."""
    return f"{normalise(cache)}/{table}"


def pending_uri(cache: str, attempt: str) -> str:
    """The file list of one run attempt."""
    return f"{normalise(cache)}/{PENDING_DIR}/{attempt}.jsonl"


def data_folder(cache: str, table: str, attempt: str) -> str:
    """Where a run attempt's workers write the files of ``table``: the table's folder (unreferenced until committed)."""
    return table_uri(cache, table)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and the path on it for ``uri`` (local path, ``gs://``, ``s3://``, ...)."""
    if is_local(uri):
        return pafs.LocalFileSystem(), normalise(uri)
    return pafs.FileSystem.from_uri(uri)


def now_ms() -> int:
    """Milliseconds since the epoch (Delta's timestamps)."""
    return int(time.time() * 1000)


def is_feature_or_embedding(table: str) -> bool:
    """Every table but ``samples``, which is committed last and pins the others."""
    return table != "samples" and (table in TABLE_NAMES or table.startswith(f"{EMBEDDINGS_DIR}/"))


def commit_order(tables: set[str]) -> list[str]:
    """Feature and embedding tables first (sorted), ``samples`` last."""
    return sorted(t for t in tables if t != "samples") + (["samples"] if "samples" in tables else [])


STATS_COLUMNS = ("sample_id", "manifest_ok", "stage")
"""The columns whose statistics (min, max, null count) a data file's Delta ``add`` records, those of them its table
has: ``sample_id`` everywhere; ``manifest_ok`` of ``samples`` and ``stage`` of ``errors`` tell an extraction which
files hold the manifest-level rows it replaces (``schemas.cache.supersede``), so an unchanged rerun reads none."""


def column_stats(data: pa.Table, stats: Optional[dict[str, list[Any]]] = None) -> dict[str, list[Any]]:
    """``{column: [min, max, null count]}`` of the ``STATS_COLUMNS`` of ``data`` (min and max ``None`` for a column of
    nulls), merged with ``stats``, those of the file's earlier rows."""
    merged = dict(stats or {})
    for name in STATS_COLUMNS:
        if name not in data.column_names:
            continue
        column = data.column(name)
        found = pc.min_max(column).as_py()
        low, high, nulls = merged.get(name, (None, None, 0))
        merged[name] = [min((v for v in (low, found["min"]) if v is not None), default=None),
                        max((v for v in (high, found["max"]) if v is not None), default=None), nulls + column.null_count]
    return merged


def stats_columns(schema: pa.Schema) -> str:
    """The ``delta.dataSkippingStatsColumns`` of a table of ``schema``: its ``STATS_COLUMNS``, whose statistics every
    file of it has (a reader could take a column's missing statistics for nulls and skip every file)."""
    return ",".join(name for name in STATS_COLUMNS if name in schema.names)


@dataclass(frozen=True)
class DataFile:
    """One Parquet file written into a table's folder: what its Delta ``AddAction`` needs.

    Attributes:
        table: the table name.
        name: the file name, relative to the table folder.
        size: bytes on storage.
        n_rows: rows in the file.
        stats: ``column_stats`` of its ``STATS_COLUMNS`` (empty when it has no rows).
        modified_ms: modification time, milliseconds since the epoch.
    """

    table: str
    name: str
    size: int
    n_rows: int
    stats: dict[str, list[Any]]
    modified_ms: int

    def stats_json(self) -> str:
        """The Delta statistics of the file: row count, and min, max and null count of its ``STATS_COLUMNS``."""
        bounded = {name: (low, high) for name, (low, high, _) in self.stats.items() if low is not None}
        return json.dumps({"numRecords": self.n_rows, "nullCount": {name: nulls for name, (_, _, nulls) in self.stats.items()},
                           "minValues": {name: low for name, (low, _) in bounded.items()},
                           "maxValues": {name: high for name, (_, high) in bounded.items()}})

    def add_action(self) -> Any:
        """The ``deltalake`` ``AddAction`` committing this file."""
        from deltalake.transaction import AddAction

        return AddAction(self.name, self.size, {}, self.modified_ms, True, self.stats_json())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Replacement:
    """A committed data file that leaves its table because it holds superseded rows, and the rewrite of the rows it keeps.

    Attributes:
        table: the table name.
        path: the committed file, relative to the table folder.
        size: its committed size, bytes.
        rewrite: the kept rows as a new file; ``None`` when every row was superseded.
    """

    table: str
    path: str
    size: int
    rewrite: Optional[DataFile]

    def actions(self) -> list[Any]:
        """The ``RemoveAction`` of the file and the ``AddAction`` of its rewrite (one commit)."""
        from deltalake.transaction import RemoveAction

        return [RemoveAction(self.path, True, now_ms(), size=self.size), *([self.rewrite.add_action()] if self.rewrite else [])]

    def to_json(self) -> str:
        return json.dumps({"replaces": self.path, "table": self.table, "size": self.size,
                           "rewrite": asdict(self.rewrite) if self.rewrite else None}, sort_keys=True)


INPUTS_COUNT = "inputs"
"""The ``RunCount`` of the input rows a run's workers read."""
UNCHANGED_COUNT_PREFIX = "unchanged_by_"
"""``RunCount`` s of the samples a run found cached, by what told (``unchanged_by_metadata``, ``unchanged_by_content``)."""


@dataclass(frozen=True)
class RunCount:
    """A count the workers of a run attempt took (``name``: e.g. ``inputs``), for the launcher's accounting."""

    name: str
    value: int

    def to_json(self) -> str:
        return json.dumps({"count": self.name, "value": self.value}, sort_keys=True)


PendingEntry = Union[DataFile, Replacement, RunCount]


def pending_entry(line: str) -> PendingEntry:
    """A line of a ``_pending`` list: a ``DataFile``, a ``Replacement`` or a ``RunCount``."""
    entry = json.loads(line)
    if "count" in entry:
        return RunCount(entry["count"], entry["value"])
    if "replaces" not in entry:
        return DataFile(**entry)
    rewrite = DataFile(**entry["rewrite"]) if entry["rewrite"] else None
    return Replacement(table=entry["table"], path=entry["replaces"], size=entry["size"], rewrite=rewrite)
