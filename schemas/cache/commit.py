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
   ``AddAction`` for the same file rewritten without them (``schemas.cache.supersede``;
   normally made by the workers) and for the run's new files, in one
   transaction (exactly once: keyed by the attempt).
4. commits ``samples`` last, with the run summary and the version of every
   other table in its metadata: readers pin those versions (``CacheView``).

Superseded rows: see ``SupersedeRule``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from schemas.cache.layout import DataFile, Replacement, commit_order, is_feature_or_embedding, now_ms, stats_columns, table_uri
from schemas.cache.supersede import SupersedeRule, file_rows, replace_file
from schemas.cache.view import (
    ATTEMPT, HOST, KIND, PID, RUN_ID, SUMMARY, VERSIONS, RunInfo, commit_infos, latest_run, log_versions, open_table,
)
from schemas.errors import ConcurrentRunError, ConfigError
from schemas.tables import SCHEMA_VERSION

logger = logging.getLogger(__name__)

CLAIM = "claim"
STALE_CLAIM_S = 600.0
"""A claim from another host older than this is taken to be from a process that died."""


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
        reembedded_in: per embedding table, sample ids embedded again there (their earlier rows there and their
            earlier embedding errors leave).
        dropped_files: per table, files removed whole (damaged or missing).
        overwrite: remove every earlier file of every table.
        summary: the run summary stored in the ``samples`` commit.
        replacements: files with superseded rows and their rewrites, made by the workers against the state
            pinned by ``samples`` version ``replaced_on``; they apply when that is still the latest state,
            otherwise the commit makes them again (``None``: nothing planned, the commit makes them).
    """

    run_id: str
    attempt: str
    kind: str = "extract"
    files: list[DataFile] = field(default_factory=list)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    descriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    superseded: frozenset[str] = frozenset()
    reembedded_in: dict[str, frozenset[str]] = field(default_factory=dict)
    dropped_files: dict[str, set[str]] = field(default_factory=dict)
    overwrite: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    replacements: list[Replacement] = field(default_factory=list)
    replaced_on: Optional[int] = None

    def marks(self, kind: str) -> dict[str, Any]:
        """Commit metadata naming this attempt (``kind``: claim, undo or the run's kind)."""
        return {RUN_ID: self.run_id, ATTEMPT: self.attempt, KIND: kind, HOST: socket.gethostname(), PID: str(os.getpid())}


def new_attempt(run_id: str) -> str:
    """A unique attempt name for ``run_id``."""
    return f"{run_id}-{uuid.uuid4().hex[:8]}"


def _alive(commit: dict[str, Any]) -> bool:
    """Whether the process that made ``commit`` may still be running.

    On this host: its pid exists and started before the commit (not a reused pid). Elsewhere: the
    commit is younger than ``STALE_CLAIM_S``.
    """
    if commit.get(HOST) != socket.gethostname():
        return now_ms() - int(commit["timestamp"]) < STALE_CLAIM_S * 1000
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
        # Statistics are written for the STATS_COLUMNS only: declaring so keeps readers (deltalake's pyarrow datasets)
        # from taking the other columns' missing statistics for nulls and skipping every file a filter on them touches.
        create_table_with_add_actions(table_uri(cache, table), Schema.from_arrow(run.schemas[table]), actions, description=description,
                                      configuration={"delta.dataSkippingStatsColumns": stats_columns(run.schemas[table])},
                                      commit_properties=_commit_properties(metadata, app_id))
    except DeltaError as error:  # "already exists", or a commit conflict with a creator that won the race
        existing = open_table(table_uri(cache, table))
        if existing is None:
            raise
        logger.debug("%s was created by another run a moment ago (%s); committing on top of it", table, error)
        return existing
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
    from deltalake.exceptions import CommitFailedError

    deadline = time.monotonic() + wait_s
    samples = _samples_table(cache, run)
    uri = table_uri(cache, "samples")
    while True:
        pinned = latest_run(uri)
        after = pinned.version if pinned else -1
        samples.update_incremental()
        try:
            samples.create_write_transaction([], mode="append", schema=samples.schema(),
                                             commit_properties=_commit_properties(run.marks(CLAIM)))
        except CommitFailedError as error:  # another run committed between our read and our claim: read, claim again
            if time.monotonic() > deadline:
                raise ConcurrentRunError(f"run {run.run_id} could not claim {cache} within {wait_s:.0f} s ({error}); "
                                         "it committed nothing (its files are removed by mmfeat vacuum); run it again") from error
            logger.debug("claim of %s lost a commit race (%s); claiming again", cache, error)
            continue
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
        removes = [action for row in file_rows(dt) for action in Replacement(table, row["path"], row["size_bytes"], None).actions()]
        dt.create_write_transaction(removes, mode="append", schema=dt.schema(), commit_properties=_commit_properties(run.marks("undo")))
    else:
        dt.restore(pinned, commit_properties=_commit_properties(run.marks("undo")))
    dt.update_incremental()


def _table_actions(cache: str, dt: Any, table: str, run: RunCommit, planned: bool) -> list[Any]:
    """Add actions for the run's new files; remove actions for files with superseded rows and add actions for their
    rewrites: those the workers made when ``planned`` (the cache did not change since), otherwise made now."""
    actions = [f.add_action() for f in run.files if f.table == table]
    if dt is None:
        return actions
    if planned:
        return actions + [action for r in run.replacements if r.table == table for action in r.actions()]
    if run.replaced_on is not None:
        logger.info("%s: the cache changed after run %s planned its rewrites; rewriting superseded rows at commit", table, run.run_id)
    rule = SupersedeRule.of(run.kind, run.superseded, run.reembedded_in)
    dropped = run.dropped_files.get(table, set())
    for file in file_rows(dt):
        if run.overwrite or file["path"] in dropped:
            actions += Replacement(table, file["path"], file["size_bytes"], None).actions()
        else:
            replacement = replace_file(cache, table, file, rule, run.attempt)
            actions += replacement.actions() if replacement else []
    return actions


def _commit_table(cache: str, table: str, run: RunCommit, pinned: Optional[int], metadata: dict[str, Any], planned: bool = False) -> int:
    """Commit ``run``'s changes to ``table`` (exactly once per attempt); returns the version readers pin.

    ``planned``: the workers' replacements apply (the cache is still in the state they read).
    """
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
    actions = [] if run.kind == "compact" else _table_actions(cache, dt, table, run, planned)
    if dt is None:
        dt = _create(cache, table, run, actions, metadata, f"mmfeat:{run.attempt}")
        if dt is None:
            return open_table(table_uri(cache, table)).version()
        actions = _table_actions(cache, dt, table, run, planned=False)
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
    planned = run.replaced_on is not None and pinned is not None and run.replaced_on == pinned.version
    base = dict(pinned.versions) if pinned else {}
    tables = set(base) | {f.table for f in run.files} | {t for t in run.schemas if is_feature_or_embedding(t)}
    versions: dict[str, int] = {}
    for table in commit_order(tables - {"samples"}):
        versions[table] = _commit_table(cache, table, run, base.get(table), run.marks(run.kind), planned)
    summary = run.summary | {"commit_s": round(time.monotonic() - started, 3)}
    metadata = run.marks(run.kind) | {VERSIONS: json.dumps(versions, sort_keys=True), SUMMARY: json.dumps(summary, sort_keys=True, default=str)}
    version = _commit_table(cache, "samples", run, pinned.version if pinned else None, metadata, planned)
    logger.info("run %s committed to %s: samples version %d, %d other tables", run.run_id, cache, version, len(versions))
    summary |= {"commit_s": round(time.monotonic() - started, 3)}  # the stored summary cannot hold its own commit's time
    return RunInfo(run_id=run.run_id, kind=run.kind, version=version, timestamp_ms=now_ms(), versions=versions, summary=summary)
