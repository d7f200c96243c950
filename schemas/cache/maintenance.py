"""Keeping a cache healthy: the files a run attempt wrote, repair of damaged files, vacuum and compaction."""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.cache.commit import RunCommit, commit_run, new_attempt
from schemas.cache.layout import (
    PENDING_DIR, ROW_COUNT_COLUMNS, DataFile, Replacement, RunCount, filesystem, normalise, pending_entry, pending_uri, table_uri,
)
from schemas.cache.supersede import file_rows
from schemas.cache.view import CacheView, RunInfo, open_table
from schemas.config import DEFAULT_RETENTION_HOURS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """What a run attempt's workers left to commit: the data files they wrote, the committed files they replaced, and
    the counts they took (by name, summed over the entries of one name)."""

    files: list[DataFile]
    replacements: list[Replacement]
    counts: dict[str, int]

    def counted(self, counts: Iterable[RunCount]) -> Pending:
        """This list with ``counts`` added (the counts of one name are summed: a count taken in several places)."""
        summed = collections.Counter(self.counts)
        for count in counts:
            summed[count.name] += count.value
        return Pending(self.files, self.replacements, dict(summed))


def read_pending(cache: str, attempt: str) -> Pending:
    """The attempt's ``_pending`` list (empty when its workers wrote nothing)."""
    fs, path = filesystem(pending_uri(cache, attempt))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return Pending([], [], {})
    with fs.open_input_stream(path) as handle:
        entries = [pending_entry(line) for line in handle.read().decode("utf-8").splitlines() if line.strip()]
    return Pending([e for e in entries if isinstance(e, DataFile)], [e for e in entries if isinstance(e, Replacement)],
                   {}).counted(e for e in entries if isinstance(e, RunCount))


def discard_attempt(cache: str, attempt: str, tables: list[str]) -> int:
    """Delete every file of an uncommitted attempt (its data files in ``tables`` and its ``_pending`` entries); returns the count."""
    removed = 0
    for folder in [table_uri(cache, table) for table in tables] + [f"{normalise(cache)}/{PENDING_DIR}"]:
        fs, path = filesystem(folder)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        for info in fs.get_file_info(pafs.FileSelector(path)):
            if info.base_name.startswith(f"{attempt}-") or info.base_name.startswith(f"{attempt}."):
                fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)
                removed += 1
    return removed


def find_damaged(view: CacheView, *, deep: bool = False) -> dict[str, set[str]]:
    """Committed data files of ``view`` that are missing, have another size than committed, or (``deep``) do not parse."""
    damaged: dict[str, set[str]] = collections.defaultdict(set)
    for table in view.tables():
        fs, root = filesystem(table_uri(view.cache, table))
        rows = file_rows(view.table(table))
        infos = fs.get_file_info([f"{root}/{row['path']}" for row in rows])
        for row, info in zip(rows, infos):
            reason = None
            if info.type == pafs.FileType.NotFound:
                reason = "missing"
            elif info.size != row["size_bytes"]:
                reason = f"{info.size} bytes, committed with {row['size_bytes']}"
            elif deep:
                try:
                    pq.read_table(info.path, filesystem=fs)
                except (OSError, pa.ArrowInvalid) as error:
                    reason = f"{type(error).__name__}: {error}"
            if reason:
                logger.warning("damaged data file %s of table %s: %s", info.path, table, reason)
                damaged[table].add(row["path"])
    return dict(damaged)


def _ids(view: CacheView, table: str, skip: set[str], columns: list[str]) -> pa.Table:
    """``columns`` of the readable files of ``table`` (all but ``skip``)."""
    fs, root = filesystem(table_uri(view.cache, table))
    parts = [pq.read_table(f"{root}/{row['path']}", columns=columns, filesystem=fs) for row in file_rows(view.table(table))
             if row["path"] not in skip]
    return pa.concat_tables(parts) if parts else pa.schema(view.table(table).schema().to_arrow()).empty_table().select(columns)


def lost_samples(view: CacheView, damaged: dict[str, set[str]]) -> set[str]:
    """Samples whose rows were in ``damaged`` files: the next run recomputes them.

    A sample lost rows of a feature table when ``samples`` says it has some (``n_frames``, ...) and none are left;
    rows of samples that lost their ``samples`` row are superseded too.
    """
    counted = [c for t, c in ROW_COUNT_COLUMNS.items() if t in damaged]
    samples = _ids(view, "samples", damaged.get("samples", set()), ["sample_id", "manifest_ok", *counted])
    valid = samples.filter(samples.column("manifest_ok"))
    known = set(valid.column("sample_id").to_pylist())
    lost: set[str] = set()
    for table, column in ROW_COUNT_COLUMNS.items():
        if table in damaged:
            present = set(_ids(view, table, damaged[table], ["sample_id"]).column("sample_id").to_pylist())
            expected = valid.filter(pc.greater(valid.column(column), 0)).column("sample_id").to_pylist()
            lost |= {sample_id for sample_id in expected if sample_id not in present}
    if "samples" in damaged:
        for table in view.tables():
            if table != "samples":
                lost |= set(_ids(view, table, damaged.get(table, set()), ["sample_id"]).column("sample_id").to_pylist()) - known
    return lost


def repair(cache: str, *, deep: bool = False, run_id: Optional[str] = None) -> Optional[RunInfo]:
    """Remove damaged or missing data files from their tables (one commit per table, ``samples`` last, pinned as a run).

    The samples whose rows were in them leave the cache, so the next run recomputes them. Returns ``None``
    when nothing is damaged.
    """
    view = CacheView.open(cache)
    damaged = find_damaged(view, deep=deep)
    if not damaged:
        return None
    lost = lost_samples(view, damaged)
    run_id = run_id or time.strftime("repair-%Y%m%dT%H%M%SZ", time.gmtime())
    summary = {"damaged_files": {t: sorted(p) for t, p in damaged.items()}, "samples_to_recompute": len(lost)}
    logger.warning("repairing %s: removing %d damaged files; %d samples will be recomputed by the next run",
                   cache, sum(map(len, damaged.values())), len(lost))
    return commit_run(cache, RunCommit(run_id=run_id, attempt=new_attempt(run_id), kind="repair", dropped_files=damaged,
                                       superseded=frozenset(lost), summary=summary))


def compact(cache: str, *, run_id: Optional[str] = None) -> RunInfo:
    """Merge the small files of every table (Delta's ``optimize.compact``), pinned as a run."""
    run_id = run_id or time.strftime("compact-%Y%m%dT%H%M%SZ", time.gmtime())
    return commit_run(cache, RunCommit(run_id=run_id, attempt=new_attempt(run_id), kind="compact"))


def vacuum(cache: str, *, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False) -> list[str]:
    """Delete files that no table version within ``retention_hours`` references (files of killed or failed runs,
    rows superseded long ago) and old ``_pending`` entries; the files of the latest state are always kept."""
    view = CacheView.open(cache)
    removed: list[str] = []
    for table, version in view.versions.items():
        latest = open_table(table_uri(cache, table))
        options = {"enforce_retention_duration": False, "full": True, "keep_versions": [version]}
        found = latest.vacuum(retention_hours, dry_run=True, **options)
        if found and not dry_run:  # a real vacuum writes two commits: only where there is something to delete
            found = latest.vacuum(retention_hours, dry_run=False, **options)
        removed += [f"{table}/{path}" for path in found]
    fs, pending = filesystem(f"{normalise(cache)}/{PENDING_DIR}")
    if fs.get_file_info(pending).type == pafs.FileType.Directory:
        cutoff = time.time() - retention_hours * 3600
        for info in fs.get_file_info(pafs.FileSelector(pending)):
            if info.mtime is not None and info.mtime.timestamp() < cutoff:
                removed.append(f"{PENDING_DIR}/{info.base_name}")
                if not dry_run:
                    fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)
    return removed
