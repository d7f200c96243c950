"""Committing a run into the cache: one Delta transaction per table, feature tables first, ``samples`` last.

A run attempt's workers have written data files into the table folders
(unreferenced, so invisible). Committing:

1. **claims** the cache: an empty commit on ``samples`` marked with the
   attempt. The first claim after the latest pinning commit whose process is
   alive holds the cache; a later one waits until that run has committed (then
   plans again on top of it) or fails naming it. This is Delta's optimistic
   concurrency (every claim is an atomic commit), not a lock file: a claim of a
   dead process is simply skipped.
2. **undoes** commits that a run which died before its ``samples`` commit left
   on other tables (``restore`` to the pinned version), so nothing of it stays.
3. commits each table: ``RemoveAction`` for every file holding superseded rows,
   ``AddAction`` for the same file rewritten without them and for the run's new
   files, in one transaction (exactly once: keyed by the attempt).
4. commits ``samples`` last, with the run summary and the version of every
   other table in its metadata: readers pin those versions (``CacheView``).

Superseded rows: every row of a sample the run recomputed; in ``samples``
and ``errors`` of an extraction, the manifest-level failures (re-evaluated by
every run) and earlier embedding errors of samples embedded again.
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.cache.layout import DataFile, commit_order, filesystem, is_feature_or_embedding, table_uri
from schemas.cache.view import (
    ATTEMPT, HOST, KIND, PID, RUN_ID, SUMMARY, VERSIONS, RunInfo, commit_infos, latest_run, log_versions, open_table,
)
from schemas.errors import ConfigError, Stage
from schemas.tables import SCHEMA_VERSION

logger = logging.getLogger(__name__)

CLAIM = "claim"
STALE_CLAIM_S = 600.0
"""A claim from another host older than this is taken to be from a process that died."""


class ConcurrentRunError(RuntimeError):
    """Another run holds the cache's commit and did not finish in time; this run committed nothing."""


class DamagedFileError(RuntimeError):
    """A committed data file cannot be read. ``path`` names it; ``mmfeat repair`` removes it."""

    def __init__(self, table: str, path: str, reason: str) -> None:
        super().__init__(f"data file {path} of table {table} is damaged or missing ({reason}); "
                         "run mmfeat repair --deep on the cache to remove it (its samples are recomputed by the next run)")
        self.table, self.path = table, path


@dataclass
class RunCommit:
    """What one run attempt commits.

    Attributes:
        run_id: the run's name (shown by ``mmfeat status``, used by ``--as-of``).
        attempt: ``run_id`` plus a random token: names the data files and keys the exactly-once commit.
        kind: ``extract``, ``repair`` or ``compact``.
        files: the data files the workers wrote.
        schemas: the schema of each table the run may create (every base table, its embedding sets).
        descriptions: per table, what its description records besides the schema version (encoder, dim).
        superseded: sample ids whose earlier rows leave every table.
        reembedded: sample ids embedded again (their earlier embedding errors leave ``errors``).
        dropped_files: per table, files removed whole (damaged or missing).
        overwrite: remove every earlier file of every table.
        summary: the run summary stored in the ``samples`` commit.
    """

    run_id: str
    attempt: str
    kind: str = "extract"
    files: list[DataFile] = field(default_factory=list)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    descriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    superseded: frozenset[str] = frozenset()
    reembedded: frozenset[str] = frozenset()
    dropped_files: dict[str, set[str]] = field(default_factory=dict)
    overwrite: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    def marks(self, kind: str) -> dict[str, Any]:
        """Commit metadata naming this attempt (``kind``: claim, undo or the run's kind)."""
        return {RUN_ID: self.run_id, ATTEMPT: self.attempt, KIND: kind, HOST: socket.gethostname(), PID: str(os.getpid())}


def new_attempt(run_id: str) -> str:
    """A unique attempt name for ``run_id``."""
    return f"{run_id}-{uuid.uuid4().hex[:8]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _alive(commit: dict[str, Any]) -> bool:
    """Whether the process that made ``commit`` may still be running.

    On this host: its pid exists and started before the commit (not a reused pid). Elsewhere: the
    commit is younger than ``STALE_CLAIM_S``.
    """
    if commit.get(HOST) != socket.gethostname():
        return _now_ms() - int(commit["timestamp"]) < STALE_CLAIM_S * 1000
    try:
        pid = int(commit[PID])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError):
        return True
    started = _process_start_ms(pid)
    return started is None or started <= int(commit["timestamp"]) + 1000


def _process_start_ms(pid: int) -> Optional[int]:
    """When process ``pid`` started (ms since the epoch), from ``/proc``; ``None`` where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return int((boot + ticks / os.sysconf("SC_CLK_TCK")) * 1000)


def _commit_properties(metadata: dict[str, Any], app_id: Optional[str] = None) -> Any:
    from deltalake import CommitProperties, Transaction

    return CommitProperties(custom_metadata=metadata, app_transactions=[Transaction(app_id, 1)] if app_id else None)


def _create(cache: str, table: str, run: RunCommit, actions: list[Any], metadata: dict[str, Any], app_id: Optional[str] = None) -> Any:
    """Create ``table`` with ``actions``; if another process created it a moment ago, open it instead (returns ``None``)."""
    from deltalake import Schema
    from deltalake.exceptions import DeltaError
    from deltalake.transaction import create_table_with_add_actions

    description = json.dumps({"schema_version": SCHEMA_VERSION, "table": table, **run.descriptions.get(table, {})}, sort_keys=True)
    try:
        # Statistics are written for sample_id only: declaring so keeps readers (deltalake's pyarrow datasets) from
        # taking the other columns' missing statistics for nulls and skipping every file a filter on them touches.
        create_table_with_add_actions(table_uri(cache, table), Schema.from_arrow(run.schemas[table]), actions,
                                      description=description, configuration={"delta.dataSkippingStatsColumns": "sample_id"},
                                      commit_properties=_commit_properties(metadata, app_id))
    except DeltaError as error:
        if "already exists" not in str(error):
            raise
        return open_table(table_uri(cache, table))
    return None


def _samples_table(cache: str, run: RunCommit) -> Any:
    samples = open_table(table_uri(cache, "samples"))
    if samples is None:
        samples = _create(cache, "samples", run, [], run.marks("create")) or open_table(table_uri(cache, "samples"))
    return samples


def _claim(cache: str, run: RunCommit, *, wait_s: float) -> Optional[RunInfo]:
    """Hold the cache for this attempt (see module docstring); returns the state to commit on top of.

    Raises:
        ConcurrentRunError: another live run held it for more than ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    samples = _samples_table(cache, run)
    uri = table_uri(cache, "samples")
    while True:
        pinned = latest_run(uri)
        after = pinned.version if pinned else -1
        samples.update_incremental()
        samples.create_write_transaction([], mode="append", schema=samples.schema(), commit_properties=_commit_properties(run.marks(CLAIM)))
        mine = next(v for v in reversed(log_versions(uri)) if any(c.get(ATTEMPT) == run.attempt for c in commit_infos(uri, [v])))
        claims = [c for c in commit_infos(uri, range(after + 1, mine + 1)) if c.get(KIND) == CLAIM]
        holder = next(c for c in claims if c[ATTEMPT] == run.attempt or _alive(c))
        if holder[ATTEMPT] == run.attempt:
            return pinned
        if time.monotonic() > deadline:
            raise ConcurrentRunError(
                f"run {holder[RUN_ID]} (pid {holder.get(PID)} on {holder.get(HOST)}) is committing to {cache} and did not finish "
                f"within {wait_s:.0f} s; run {run.run_id} committed nothing (its files are removed by mmfeat vacuum); run it again")
        logger.warning("run %s (pid %s on %s) is committing to %s; waiting to commit on top of it",
                       holder[RUN_ID], holder.get(PID), holder.get(HOST), cache)
        while time.monotonic() < deadline and _alive(holder):
            newest = latest_run(uri)
            if newest and newest.version > after:
                break
            time.sleep(0.2)


def _undo_dead_runs(cache: str, dt: Any, table: str, pinned: Optional[int], run: RunCommit) -> None:
    """Take ``table`` back to its pinned version when runs that died before their ``samples`` commit changed it."""
    first = (pinned if pinned is not None else -1) + 1
    dead = sorted({c[RUN_ID] for c in commit_infos(table_uri(cache, table), range(first, dt.version() + 1))
                   if c.get(ATTEMPT) and c[ATTEMPT] != run.attempt})
    if not dead:
        return
    logger.warning("%s: undoing what run(s) %s committed before dying (they never committed samples)", table, ", ".join(dead))
    if pinned is None:
        removes = [_remove(row) for row in _file_rows(dt)]
        dt.create_write_transaction(removes, mode="append", schema=dt.schema(), commit_properties=_commit_properties(run.marks("undo")))
    else:
        dt.restore(pinned, commit_properties=_commit_properties(run.marks("undo")))
    dt.update_incremental()


def _file_rows(dt: Any) -> list[dict[str, Any]]:
    """One dict per data file: ``path``, ``size_bytes``, ``num_records``, ``min.sample_id``, ``max.sample_id``."""
    return pa.table(dt.get_add_actions(flatten=True)).to_pylist()


def _remove(row: dict[str, Any]) -> Any:
    from deltalake.transaction import RemoveAction

    return RemoveAction(row["path"], True, _now_ms(), size=row["size_bytes"])


def _may_hold(row: dict[str, Any], table: str, run: RunCommit, ids: list[str]) -> bool:
    """Whether the file ``row`` can hold superseded rows (from its min/max ``sample_id``)."""
    if run.kind == "extract" and table in ("samples", "errors"):
        return True
    low, high = row.get("min.sample_id"), row.get("max.sample_id")
    if low is None or high is None:
        return bool(ids)
    start = bisect.bisect_left(ids, low)
    return start < len(ids) and ids[start] <= high


def _drop_mask(data: pa.Table, table: str, run: RunCommit) -> pa.Array:
    ids = data.column("sample_id")
    drop = pc.is_in(ids, value_set=pa.array(sorted(run.superseded), pa.string()))
    if run.kind == "extract" and table == "samples":
        drop = pc.or_(drop, pc.invert(data.column("manifest_ok")))
    if run.kind == "extract" and table == "errors":
        stage = data.column("stage")
        reembedded = pc.is_in(ids, value_set=pa.array(sorted(run.reembedded), pa.string()))
        drop = pc.or_(drop, pc.or_(pc.equal(stage, Stage.MANIFEST), pc.and_(pc.equal(stage, Stage.EMBED), reembedded)))
    return drop


def _read(cache: str, table: str, path: str, columns: Optional[list[str]] = None) -> pa.Table:
    uri = f"{table_uri(cache, table)}/{path}"
    fs, local = filesystem(uri)
    try:
        return pq.read_table(local, columns=columns, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as error:
        raise DamagedFileError(table, uri, f"{type(error).__name__}: {error}") from error


def write_data_file(cache: str, table: str, name: str, data: pa.Table) -> DataFile:
    """Write ``data`` as ``{table}/{name}`` and describe it for its ``AddAction``."""
    uri = f"{table_uri(cache, table)}/{name}"
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(data, path, filesystem=fs, compression="zstd")
    ids = data.column("sample_id")
    bounds = pc.min_max(ids).as_py() if data.num_rows else {"min": None, "max": None}
    return DataFile(table=table, name=name, size=fs.get_file_info(path).size, n_rows=data.num_rows,
                    min_id=bounds["min"], max_id=bounds["max"], modified_ms=_now_ms())


def _table_actions(cache: str, dt: Any, table: str, run: RunCommit) -> list[Any]:
    """Remove actions for files with superseded rows, add actions for their rewrites and the run's new files.

    The commit's cost is dominated by rewriting the files that hold superseded rows.
    """
    actions = [f.add_action() for f in run.files if f.table == table]
    if dt is None:
        return actions
    ids = sorted(run.superseded)
    dropped = run.dropped_files.get(table, set())
    needed = ["sample_id", *(["manifest_ok"] if table == "samples" else ["stage"] if table == "errors" else [])]

    def supersede(row: dict[str, Any]) -> list[Any]:
        if run.overwrite or row["path"] in dropped:
            return [_remove(row)]
        if not _may_hold(row, table, run, ids):
            return []
        drop = _drop_mask(_read(cache, table, row["path"], needed), table, run)
        if not pc.any(drop).as_py():
            return []
        kept = _read(cache, table, row["path"]).filter(pc.invert(drop))
        if not kept.num_rows:
            return [_remove(row)]
        rewrite = write_data_file(cache, table, f"{run.attempt}-rewrite-{uuid.uuid4().hex[:8]}.parquet", kept)
        return [_remove(row), rewrite.add_action()]

    for row in _file_rows(dt):
        actions += supersede(row)
    return actions


def _commit_table(cache: str, table: str, run: RunCommit, pinned: Optional[int], metadata: dict[str, Any]) -> int:
    """Commit ``run``'s changes to ``table`` (exactly once per attempt); returns the version readers pin."""
    dt = open_table(table_uri(cache, table))
    if dt is not None:
        if table != "samples":  # a run's samples commit is its last: a dead run left none
            _undo_dead_runs(cache, dt, table, pinned, run)
        if dt.transaction_version(f"mmfeat:{run.attempt}") is not None:
            return dt.version()
    if run.kind == "compact":  # every pinned table exists; samples then gets the pinning commit below
        dt.optimize.compact(commit_properties=_commit_properties(run.marks(run.kind)))
        dt.update_incremental()
        if table != "samples":
            return dt.version()
    actions = [] if run.kind == "compact" else _table_actions(cache, dt, table, run)
    if dt is None:
        dt = _create(cache, table, run, actions, metadata, f"mmfeat:{run.attempt}")
        if dt is None:
            return open_table(table_uri(cache, table)).version()
        actions = _table_actions(cache, dt, table, run)
    if not actions and table != "samples":
        return dt.version()
    if table in run.schemas and run.kind == "extract":
        _add_new_columns(dt, run.schemas[table], table, run)
    dt.create_write_transaction(actions, mode="append", schema=dt.schema(), commit_properties=_commit_properties(metadata, f"mmfeat:{run.attempt}"))
    dt.update_incremental()
    return dt.version()


def new_columns(dt: Any, wanted: pa.Schema, table: str) -> list[pa.Field]:
    """The columns of ``wanted`` that ``table`` lacks (new manifest columns).

    Raises:
        ConfigError: a column the table has comes with another type (a manifest column changed its type).
    """
    current = pa.schema(dt.schema().to_arrow())
    changed = [f"{f.name}: {current.field(f.name).type} in the cache, {f.type} now" for f in wanted
               if f.name in current.names and not current.field(f.name).type.equals(f.type)]
    if changed:
        raise ConfigError(f"{table}: columns changed type ({'; '.join(changed)}); rename them in the manifest, or rerun with --overwrite")
    return [f for f in wanted if f.name not in current.names]


def _add_new_columns(dt: Any, wanted: pa.Schema, table: str, run: RunCommit) -> None:
    """Add the columns only this run has to the table's schema, as nullable columns (a metadata commit)."""
    from deltalake import Field

    new = new_columns(dt, wanted, table)
    if new:
        logger.info("%s: new columns %s", table, [f.name for f in new])
        dt.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in new], commit_properties=_commit_properties(run.marks(run.kind)))
        dt.update_incremental()


def commit_run(cache: str, run: RunCommit, *, wait_s: float = 300.0) -> RunInfo:
    """Commit ``run`` (see module docstring); returns the state it pinned.

    Raises:
        ConcurrentRunError: another run held the cache for longer than ``wait_s``.
        DamagedFileError: a file that must be rewritten cannot be read (run ``mmfeat repair``).
    """
    started = time.monotonic()
    pinned = _claim(cache, run, wait_s=wait_s)
    base = dict(pinned.versions) if pinned else {}
    tables = set(base) | {f.table for f in run.files} | {t for t in run.schemas if is_feature_or_embedding(t)}
    versions: dict[str, int] = {}
    for table in commit_order(tables - {"samples"}):
        versions[table] = _commit_table(cache, table, run, base.get(table), run.marks(run.kind))
    summary = run.summary | {"commit_s": round(time.monotonic() - started, 3)}
    metadata = run.marks(run.kind) | {VERSIONS: json.dumps(versions, sort_keys=True), SUMMARY: json.dumps(summary, sort_keys=True, default=str)}
    version = _commit_table(cache, "samples", run, pinned.version if pinned else None, metadata)
    logger.info("run %s committed to %s: samples version %d, %d other tables", run.run_id, cache, version, len(versions))
    summary |= {"commit_s": round(time.monotonic() - started, 3)}  # the stored summary cannot hold its own commit's time
    return RunInfo(run_id=run.run_id, kind=run.kind, version=version, timestamp_ms=_now_ms(), versions=versions, summary=summary)
