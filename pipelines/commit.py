"""Committing a finished run: superseded rows leave the cache, the run's files move in.

A sample recomputed by this run (new or changed files, changed feature
config, ``--recompute``) replaces every earlier row of that sample, in every
table and embedding set. Manifest-level failures (duplicate or missing ids,
rows without media) are re-evaluated by every run, so earlier ones go too,
as do earlier embedding errors of samples this run embedded again.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.run_report import embedding_tables, read_columns, table_files
from schemas.errors import Stage
from schemas.tables import TABLE_NAMES
from transforms.parquet_sink import shard_file_name, write_rows, write_table

logger = logging.getLogger(__name__)


def ensure_dir(path: str) -> None:
    if not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def _drop_mask(table_name: str, columns: pa.Table, recomputed: pa.Array, reembedded: pa.Array) -> pa.Array:
    drop = pc.is_in(columns.column("sample_id"), value_set=recomputed)
    if table_name == "samples":
        drop = pc.or_(drop, pc.invert(columns.column("manifest_ok")))
    if table_name == "errors":
        stage = columns.column("stage")
        drop = pc.or_(drop, pc.equal(stage, Stage.MANIFEST))
        drop = pc.or_(drop, pc.and_(pc.equal(stage, Stage.EMBED), pc.is_in(columns.column("sample_id"), value_set=reembedded)))
    return drop


def drop_superseded(output: str, *, recomputed: set[str], reembedded: set[str]) -> int:
    """Rewrite the cache's files without superseded rows (see module docstring); returns rows dropped."""
    recomputed_ids = pa.array(sorted(recomputed), pa.string())
    reembedded_ids = pa.array(sorted(reembedded), pa.string())
    needed = {"samples": ["sample_id", "manifest_ok"], "errors": ["sample_id", "stage"]}
    dropped = 0
    for table_name in [*TABLE_NAMES, *embedding_tables(output)]:
        for path in table_files(output, table_name):
            columns = read_columns([path], needed.get(table_name, ["sample_id"]))
            drop = _drop_mask(table_name, columns, recomputed_ids, reembedded_ids)
            n_drop = pc.sum(drop).as_py() or 0
            if not n_drop:
                continue
            with FileSystems.open(path) as handle:
                full = pq.read_table(handle)
            kept = full.filter(pc.invert(drop))
            dropped += n_drop
            if kept.num_rows:
                write_table(path, kept)
            else:
                FileSystems.delete([path])
    if dropped:
        logger.info("dropped %d superseded rows from %s", dropped, output)
    return dropped


def move_into_cache(staging: str, output: str, run_id: str, tables: list[str], schemas: dict[str, pa.Schema]) -> None:
    """Move each staged table's files to ``{output}/{table}/{run_id}-part-NNNNN.parquet``.

    A table of ``TABLE_NAMES`` left without any file gets an empty one, so that every table can be opened.
    """
    for table in tables:
        staged = table_files(staging, table)
        target_dir = FileSystems.join(output, table)
        if staged:
            ensure_dir(target_dir)
            targets = [FileSystems.join(target_dir, f"{run_id}-{FileSystems.split(path)[1]}") for path in staged]
            FileSystems.rename(staged, targets)
        if table in TABLE_NAMES and not table_files(output, table):
            write_rows(FileSystems.join(target_dir, f"{run_id}-{shard_file_name(0)}"), [], schemas[table])
