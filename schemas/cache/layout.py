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
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import pyarrow.fs as pafs

from schemas.tables import EMBEDDINGS_DIR, TABLE_NAMES

PENDING_DIR = "_pending"
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


@dataclass(frozen=True)
class DataFile:
    """One Parquet file written into a table's folder: what its Delta ``AddAction`` needs.

    Attributes:
        table: the table name.
        name: the file name, relative to the table folder.
        size: bytes on storage.
        n_rows: rows in the file.
        min_id, max_id: the smallest and largest ``sample_id`` in it (``None`` when empty).
        modified_ms: modification time, milliseconds since the epoch.
    """

    table: str
    name: str
    size: int
    n_rows: int
    min_id: Optional[str]
    max_id: Optional[str]
    modified_ms: int

    def stats_json(self) -> str:
        """The Delta statistics of the file (row count, min/max and null count of ``sample_id``)."""
        stats: dict[str, Any] = {"numRecords": self.n_rows, "nullCount": {"sample_id": 0}}
        if self.min_id is not None:
            stats |= {"minValues": {"sample_id": self.min_id}, "maxValues": {"sample_id": self.max_id}}
        return json.dumps(stats)

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
