"""Committing a finished run into the cache, crash-safely.

The run's files wait in ``{output}/_staging/{run_id}/``. Committing:

1. writes a plan, ``{output}/_commit/{run_id}.json`` (what the run supersedes);
2. drops superseded rows from the cache's files (each rewritten whole, by rename);
3. moves the staged files in as ``{table}/{run_id}-part-NNNNN.parquet``;
4. writes ``_run.json``, ``_SUCCESS`` and the run's record, then removes the plan and the staging folder.

Every step can be repeated without harm (the run's own ``{run_id}-`` files are
never touched by step 2, moved files are no longer staged), so a commit cut
short by a crash is finished by the next run (``recover``), before it starts.

Superseded: a sample recomputed by this run (new or changed files, changed
feature config, ``--recompute``) replaces every earlier row of that sample in
every table and embedding set. Manifest-level failures (duplicate or missing
ids, rows without media) are re-evaluated by every run, so earlier ones go
too, as do earlier embedding errors of samples this run embedded again.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.run_report import embedding_tables, read_columns, table_files
from pipelines.run_state import COMMITTED, FAILED, RUNNING, RunRecord, _read_json, _write_json, now, read_records, write_record
from schemas.errors import Stage
from schemas.tables import TABLE_NAMES
from transforms.parquet_sink import write_table

logger = logging.getLogger(__name__)

COMMIT_DIR = "_commit"
STAGING = "_staging"
RUN_FILE = "_run.json"
SUCCESS_FILE = "_SUCCESS"
EMPTY_FILE = "empty.parquet"


@dataclass
class CommitPlan:
    """What committing run ``run_id`` does; saved before the cache is touched."""

    run_id: str
    recomputed: list[str]
    reembedded: list[str]
    overwrite: bool
    summary: dict[str, Any]


def ensure_dir(path: str) -> None:
    if not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def staging_dir(output: str, run_id: str) -> str:
    return FileSystems.join(output, STAGING, run_id)


def _drop_mask(table_name: str, columns: pa.Table, recomputed: pa.Array, reembedded: pa.Array) -> pa.Array:
    drop = pc.is_in(columns.column("sample_id"), value_set=recomputed)
    if table_name == "samples":
        drop = pc.or_(drop, pc.invert(columns.column("manifest_ok")))
    if table_name == "errors":
        stage = columns.column("stage")
        drop = pc.or_(drop, pc.equal(stage, Stage.MANIFEST))
        drop = pc.or_(drop, pc.and_(pc.equal(stage, Stage.EMBED), pc.is_in(columns.column("sample_id"), value_set=reembedded)))
    return drop


def _cache_files(output: str, table: str, run_id: str) -> list[str]:
    """The table's files that do not belong to run ``run_id``."""
    return [path for path in table_files(output, table) if not FileSystems.split(path)[1].startswith(f"{run_id}-")]


def drop_superseded(output: str, plan: CommitPlan) -> int:
    """Rewrite earlier files of the cache without superseded rows (see module docstring); returns rows dropped."""
    recomputed = pa.array(sorted(plan.recomputed), pa.string())
    reembedded = pa.array(sorted(plan.reembedded), pa.string())
    needed = {"samples": ["sample_id", "manifest_ok"], "errors": ["sample_id", "stage"]}
    dropped = 0
    for table_name in [*TABLE_NAMES, *embedding_tables(output)]:
        for path in _cache_files(output, table_name, plan.run_id):
            drop = _drop_mask(table_name, read_columns([path], needed.get(table_name, ["sample_id"])), recomputed, reembedded)
            n_drop = pc.sum(drop).as_py() or 0
            if not n_drop:
                continue
            with FileSystems.open(path) as handle:
                kept = pq.read_table(handle).filter(pc.invert(drop))
            dropped += n_drop
            if kept.num_rows:
                write_table(path, kept)
            else:
                FileSystems.delete([path])
    if dropped:
        logger.info("dropped %d superseded rows from %s", dropped, output)
    return dropped


def _move_staged(output: str, run_id: str) -> None:
    staging = staging_dir(output, run_id)
    for table in [*TABLE_NAMES, *embedding_tables(staging)]:
        staged = table_files(staging, table)
        placeholders = [path for path in staged if FileSystems.split(path)[1] == EMPTY_FILE]
        if placeholders and len(staged) > len(placeholders):  # the table got rows: no empty file needed
            FileSystems.delete(placeholders)
            staged = [path for path in staged if path not in placeholders]
        if staged:
            ensure_dir(FileSystems.join(output, table))
            targets = [FileSystems.join(output, table, f"{run_id}-{FileSystems.split(path)[1]}") for path in staged]
            FileSystems.rename(staged, targets)


def _plan_path(output: str, run_id: str) -> str:
    return FileSystems.join(output, COMMIT_DIR, f"{run_id}.json")


def apply(output: str, plan: CommitPlan) -> None:
    """Steps 2-4 of the module docstring (repeatable)."""
    if plan.overwrite:
        old = [path for table in [*TABLE_NAMES, *embedding_tables(output)] for path in _cache_files(output, table, plan.run_id)]
        if old:
            FileSystems.delete(old)
    else:
        drop_superseded(output, plan)
    _move_staged(output, plan.run_id)
    _write_json(FileSystems.join(output, RUN_FILE), plan.summary)
    with FileSystems.create(FileSystems.join(output, SUCCESS_FILE)) as handle:
        handle.write(f"{plan.run_id}\n".encode("utf-8"))
    record = next((r for r in read_records(output) if r.run_id == plan.run_id), RunRecord(run_id=plan.run_id, state=RUNNING))
    record.state, record.finished_at, record.summary = COMMITTED, now(), plan.summary
    write_record(output, record)
    FileSystems.delete([_plan_path(output, plan.run_id)])
    staging = staging_dir(output, plan.run_id)
    if FileSystems.exists(staging):
        FileSystems.delete([staging])
    _remove_if_empty(FileSystems.join(output, STAGING))
    _remove_if_empty(FileSystems.join(output, COMMIT_DIR))


def _remove_if_empty(folder: str) -> None:
    if FileSystems.exists(folder) and not FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list:
        FileSystems.delete([folder])


def commit(output: str, plan: CommitPlan) -> None:
    """Save the plan, then apply it."""
    ensure_dir(FileSystems.join(output, COMMIT_DIR))
    _write_json(_plan_path(output, plan.run_id), asdict(plan))
    apply(output, plan)


def _staged_run_ids(output: str) -> list[str]:
    """Runs with files under ``_staging/`` (Beam's ``*`` also matches ``/``: take the first path component)."""
    prefix = FileSystems.join(output, STAGING) + "/"
    paths = [m.path for m in FileSystems.match([prefix + "*"])[0].metadata_list]
    return sorted({path[len(prefix):].split("/", 1)[0] for path in paths})


def recover(output: str) -> None:
    """Finish commits cut short, and discard staging of runs that died before committing (call under the lock)."""
    for metadata in FileSystems.match([FileSystems.join(output, COMMIT_DIR, "*.json")])[0].metadata_list:
        plan = CommitPlan(**_read_json(metadata.path))
        logger.warning("finishing the commit of run %s, which was interrupted", plan.run_id)
        apply(output, plan)
    for run_id in _staged_run_ids(output):
        logger.warning("discarding the uncommitted files of run %s, whose process ended before its commit", run_id)
        FileSystems.delete([staging_dir(output, run_id)])
    for record in read_records(output):
        if record.state == RUNNING and not record.alive():
            record.state, record.finished_at = FAILED, now()
            record.error = "the process ended before committing (killed?); nothing of it reached the cache"
            write_record(output, record)
    _remove_if_empty(FileSystems.join(output, STAGING))
