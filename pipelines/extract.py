"""An extraction run: a corpus becomes frames, MFCCs, tokens, embeddings and errors in a Parquet cache.

The run holds the cache's lock, finishes any commit a crash interrupted,
records itself in ``_runs/``, runs the Beam graph (``pipelines.extract_graph``)
into ``{output}/_staging/{run_id}/``, checks the accounting invariant (each
input row once, as a ``samples`` row or as unchanged) and commits
(``pipelines.commit``). A run that fails is recorded as ``failed``; one that is
killed leaves only its staging folder, discarded by the next run.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from pipelines.cache_index import check_schema_version, known_samples
from pipelines.commit import EMPTY_FILE, CommitPlan, commit, ensure_dir, recover, staging_dir
from pipelines.extract_graph import ExtractToCache, build_handlers
from pipelines.manifest import Corpus
from pipelines.run_report import (
    check_accounting, embedding_tables, package_versions, read_columns, runner_metrics, summarise, table_files,
)
from pipelines.run_state import FAILED, RUNNING, OutputLock, RunRecord, now, write_record
from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError
from schemas.tables import SCHEMA_VERSION, TABLE_NAMES, embeddings_schema, table_schemas, with_metadata
from transforms.encoders.base import Encoder
from transforms.extract_sample import RunContext
from transforms.media_io import sha256_of
from transforms.parquet_sink import write_rows

logger = logging.getLogger(__name__)

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


def features_fingerprint(config: ExtractConfig, tokenizer_path: str) -> str:
    """Hash of everything that determines the feature tables: schema version, feature configs, tokenizer file."""
    parts = {
        "schema": SCHEMA_VERSION,
        "video": config.video.__dict__,
        "audio": config.audio.__dict__,
        "text": {"max_tokens": config.text.max_tokens, "tokenizer": sha256_of(tokenizer_path)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_output(output: str, *, overwrite: bool) -> None:
    """An existing cache is extended incrementally; refuse one of another schema version unless ``overwrite``."""
    if not overwrite:
        check_schema_version(output)


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


def _stage_empty_tables(output: str, staging: str, schemas: dict[str, Any]) -> None:
    """Give the staging an empty file of each table the cache has none of, so every table can be opened."""
    for table in TABLE_NAMES:
        if not table_files(output, table):
            write_rows(FileSystems.join(staging, table, EMPTY_FILE), [], schemas[table])


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
    encoders: Optional[dict[str, Encoder]] = None,
    encode: Optional[EncodeConfig] = None,
    device: str = "cpu",
    recompute: bool = False,
) -> RunReport:
    """Run the extraction of ``corpus`` into the cache at ``output`` and commit it.

    An existing cache is extended: samples whose files, feature config and
    encoders are unchanged are not decoded or embedded again (unless
    ``recompute``); ``overwrite`` replaces the whole cache.

    Raises:
        ConfigError: the cache is in use by another run, has another schema
            version (without ``overwrite``), or ``run_id`` is unusable.
        AccountingError: the runner lost or duplicated samples; nothing is committed.
    """
    run_id = validate_run_id(run_id or default_run_id())
    with OutputLock(output, run_id):
        recover(output)
        check_output(output, overwrite=overwrite)
        record = RunRecord(run_id=run_id, state=RUNNING)
        write_record(output, record)
        try:
            summary = _run(corpus, output=output, config=config, tokenizer_path=tokenizer_path, runner=runner,
                           options=options, run_id=run_id, overwrite=overwrite, encoders=encoders or {},
                           encode=encode or EncodeConfig(), device=device, recompute=recompute)
        except BaseException as error:
            record.state, record.finished_at, record.error = FAILED, now(), f"{type(error).__name__}: {error}"
            write_record(output, record)
            raise
    return RunReport(output=output, run_id=run_id, summary=summary)


def _run(
    corpus: Corpus, *, output: str, config: ExtractConfig, tokenizer_path: str, runner: Union[str, PipelineRunner],
    options: Optional[PipelineOptions], run_id: str, overwrite: bool, encoders: dict[str, Encoder], encode: EncodeConfig,
    device: str, recompute: bool,
) -> dict[str, Any]:
    records = corpus.records
    num_shards = config.num_shards or auto_num_shards(len(records))
    fingerprint = features_fingerprint(config, tokenizer_path)
    config_dict = config.to_dict() | {"tokenizer": tokenizer_path, "num_shards": num_shards, "features_fingerprint": fingerprint}
    handlers = build_handlers(encoders, encode, device)
    schemas = {
        name: with_metadata(schema, table=name, run_id=run_id, config=config_dict)
        for name, schema in table_schemas(corpus.extra_fields).items()
    }
    for handler in handlers.values():
        encoder = handler.encoder
        schemas[handler.table] = with_metadata(
            embeddings_schema(encoder.dim, float16=handler.float16, sequence=encoder.keep_sequences),
            table=handler.table,
            run_id=run_id,
            config=config_dict | {"encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint(), "preprocessing": list(encoder.fingerprint_parts())},
        )
    known = {} if (recompute or overwrite) else known_samples(output)
    staging = staging_dir(output, run_id)
    ensure_dir(staging)
    if not overwrite:
        _stage_empty_tables(output, staging, schemas)
    started = time.time()
    logger.info("run %s: %d samples from %s -> %s (%d already cached)", run_id, len(records), corpus.source, output, len(known))

    pipeline = beam.Pipeline(runner=runner, options=options or PipelineOptions())
    _ = (
        pipeline
        | "Records" >> beam.Create(records)
        | "ExtractToCache"
        >> ExtractToCache(
            config=config, tokenizer_path=tokenizer_path, directory=staging, schemas=schemas, num_shards=num_shards,
            handlers=handlers, context=RunContext(features_fingerprint=fingerprint, run_id=run_id, known=known),
        )
    )
    result = pipeline.run()
    result.wait_until_finish()
    check_accounting(staging, len(records))

    samples = read_columns(table_files(staging, "samples"), ["sample_id", "manifest_ok"]).to_pylist()
    recomputed = {row["sample_id"] for row in samples if row["manifest_ok"]}
    embedded = {
        row["sample_id"] for table in embedding_tables(staging) for row in read_columns(table_files(staging, table), ["sample_id"]).to_pylist()
    }
    summary = {
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
        "inputs": {"source": corpus.source, "records": len(records)},
        **summarise(staging),
        "metrics": runner_metrics(result),
        "encoders": {
            modality: {"name": h.encoder.name, "fingerprint": h.encoder.fingerprint(), "dim": h.encoder.dim, "table": h.table}
            for modality, h in handlers.items()
        },
        "device": device,
        "config": config_dict,
        "runner": runner if isinstance(runner, str) else type(runner).__name__,
        "versions": package_versions(),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "wall_time_s": round(time.time() - started, 3),
    }
    commit(output, CommitPlan(run_id=run_id, recomputed=sorted(recomputed), reembedded=sorted(embedded - recomputed), overwrite=overwrite, summary=summary))
    return summary
