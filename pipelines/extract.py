"""The extraction pipeline: a corpus becomes frames, MFCCs, tokens and errors in a Parquet cache.

Shape (one chain, safe on every runner; see FACTS.md)::

    Create(records) -> Reshuffle -> ParDo(ExtractSampleFn) -> (table, row)
        -> key (table, shard) -> GroupByKey -> write each group atomically

A run writes into ``{output}/_staging/{run_id}/``; when the pipeline has
finished and the accounting invariant holds (one ``samples`` row per input
row), its files are moved to ``{output}/{table}/{run_id}-part-NNNNN.parquet``
and ``{output}/_run.json`` is written.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from pipelines.manifest import Corpus
from pipelines.run_report import check_accounting, package_versions, summarise, table_files
from schemas.config import ExtractConfig
from schemas.errors import ConfigError
from schemas.records import ManifestRecord
from schemas.tables import SCHEMA_VERSION, TABLE_NAMES, table_schemas, with_metadata
from transforms.extract_sample import ExtractSampleFn
from transforms.parquet_sink import WriteCacheTables, shard_file_name, write_rows

logger = logging.getLogger(__name__)

RUN_FILE = "_run.json"
STAGING = "_staging"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_run_id() -> str:
    """A UTC timestamp such as ``20261123T091500Z``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def validate_run_id(run_id: str) -> str:
    """``run_id`` when it is usable in file names. Raises ``ConfigError`` otherwise."""
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"--run-id must be letters, digits, '.', '_' or '-' (got {run_id!r})")
    return run_id


def auto_num_shards(n_records: int) -> int:
    """Files per table when ``--num-shards`` is 0: one per 100 samples, between 1 and 64."""
    return max(1, min(64, math.ceil(n_records / 100)))


def check_output(output: str, *, overwrite: bool) -> None:
    """Refuse an output folder that already holds a cache, unless ``overwrite``.

    Raises:
        ConfigError: saying how to proceed.
    """
    if overwrite:
        return
    existing = FileSystems.exists(FileSystems.join(output, RUN_FILE)) or any(
        table_files(output, table) for table in TABLE_NAMES
    )
    if existing:
        raise ConfigError(f"--output {output} already holds a cache; choose a new folder or pass --overwrite to replace it")


class ExtractToCache(beam.PTransform):
    """``PCollection[ManifestRecord]`` -> Parquet files of every table under ``directory``.

    Output: ``(table, path, n_rows)`` for each file written.
    """

    def __init__(
        self, *, config: ExtractConfig, tokenizer_path: str, directory: str, schemas: dict[str, pa.Schema], num_shards: int
    ) -> None:
        super().__init__()
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._directory = directory
        self._schemas = schemas
        self._num_shards = num_shards

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return (
            records
            # Spread samples over workers: Create alone hands them all to one bundle.
            | "Spread" >> beam.Reshuffle()
            | "Extract" >> beam.ParDo(ExtractSampleFn(self._config, self._tokenizer_path))
            | "Write" >> WriteCacheTables(self._directory, self._schemas, self._num_shards)
        )


@dataclass(frozen=True)
class RunReport:
    """The result of a run: where it went and the content of ``_run.json``."""

    output: str
    run_id: str
    summary: dict[str, Any]

    @property
    def n_inputs(self) -> int:
        return self.summary["inputs"]["records"]

    @property
    def n_failed(self) -> int:
        return self.summary["samples"]["failed"]


def _ensure_dir(path: str) -> None:
    if not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def _remove_staging(output: str, staging: str) -> None:
    """Delete a run's staging folder, and the ``_staging`` parent when no other run uses it."""
    FileSystems.delete([staging])
    parent = FileSystems.join(output, STAGING)
    if not FileSystems.match([FileSystems.join(parent, "*")])[0].metadata_list:
        FileSystems.delete([parent])


def _commit(staging: str, output: str, run_id: str, schemas: dict[str, pa.Schema], *, overwrite: bool) -> None:
    """Move a finished run's files from ``staging`` into the cache; every table gets at least an empty file."""
    for table in TABLE_NAMES:
        staged = table_files(staging, table)
        if not staged:
            empty = FileSystems.join(staging, table, shard_file_name(0))
            write_rows(empty, [], schemas[table])
            staged = [empty]
        if overwrite:
            old = table_files(output, table)
            if old:
                FileSystems.delete(old)
        target_dir = FileSystems.join(output, table)
        _ensure_dir(target_dir)
        targets = [FileSystems.join(target_dir, f"{run_id}-{FileSystems.split(path)[1]}") for path in staged]
        FileSystems.rename(staged, targets)


def run_extract(
    corpus: Corpus,
    *,
    output: str,
    config: ExtractConfig,
    tokenizer_path: str,
    runner: Union[str, PipelineRunner],
    options: Optional[PipelineOptions] = None,
    run_id: Optional[str] = None,
    overwrite: bool = False,
) -> RunReport:
    """Run the extraction of ``corpus`` into the cache at ``output`` and commit it.

    Raises:
        ConfigError: the output already holds a cache (without ``overwrite``) or ``run_id`` is unusable.
        AccountingError: the runner lost or duplicated samples; nothing is committed.
    """
    run_id = validate_run_id(run_id or default_run_id())
    check_output(output, overwrite=overwrite)
    records: list[ManifestRecord] = corpus.records
    num_shards = config.num_shards or auto_num_shards(len(records))
    config_dict = config.to_dict() | {"tokenizer": tokenizer_path, "num_shards": num_shards}
    schemas = {
        name: with_metadata(schema, table=name, run_id=run_id, config=config_dict)
        for name, schema in table_schemas(corpus.extra_fields).items()
    }
    staging = FileSystems.join(output, STAGING, run_id)
    _ensure_dir(staging)
    started = time.time()
    logger.info("run %s: %d samples from %s -> %s", run_id, len(records), corpus.source, output)

    with beam.Pipeline(runner=runner, options=options or PipelineOptions()) as pipeline:
        _ = (
            pipeline
            | "Records" >> beam.Create(records)
            | "ExtractToCache"
            >> ExtractToCache(
                config=config, tokenizer_path=tokenizer_path, directory=staging, schemas=schemas, num_shards=num_shards
            )
        )
    check_accounting(staging, len(records))
    _commit(staging, output, run_id, schemas, overwrite=overwrite)
    _remove_staging(output, staging)
    wall_time_s = time.time() - started

    summary = {
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
        "inputs": {"source": corpus.source, "records": len(records)},
        **summarise(output),
        "config": config_dict,
        "runner": runner if isinstance(runner, str) else type(runner).__name__,
        "versions": package_versions(),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "wall_time_s": round(wall_time_s, 3),
    }
    with FileSystems.create(FileSystems.join(output, RUN_FILE)) as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    return RunReport(output=output, run_id=run_id, summary=summary)
