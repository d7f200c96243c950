"""The extraction pipeline: a corpus becomes frames, MFCCs, tokens, embeddings and errors in a Parquet cache.

Shape (one chain with branches merged by Flatten, safe on every runner; see FACTS.md)::

    Create(records) -> Reshuffle -> ParDo(ExtractSampleFn) -> (table, row)
      |-- cache rows ----------------------------------------------------------+
      |-- _encode/<modality> items -> EmbedItems (RunInference) --+            |
      |-- samples rows ------------------------------------------+-> Finalize -+-> Flatten
                                                                                 -> (table, shard) GroupByKey -> write

Finalize groups a sample's ``samples`` row with its embedding results (by
``manifest_row``), so that a failed embedding makes the sample ``partial``.

A run writes into ``{output}/_staging/{run_id}/``; when the pipeline has
finished and the accounting invariant holds (each input row once, as a
``samples`` row or as unchanged), superseded rows leave the cache, the run's
files move to ``{output}/{table}/{run_id}-part-NNNNN.parquet`` and
``{output}/_run.json`` is written.
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
from typing import Any, Iterable, Iterator, Optional, Union

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from pipelines.cache_index import check_schema_version, known_samples
from pipelines.commit import drop_superseded, ensure_dir, move_into_cache
from pipelines.manifest import Corpus
from pipelines.run_report import check_accounting, embedding_tables, package_versions, read_columns, summarise, table_files
from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError, Stage
from schemas.tables import (
    SCHEMA_VERSION, STATUS_OK, STATUS_PARTIAL, TABLE_NAMES, embedding_table_name, embeddings_schema,
    table_schemas, with_metadata,
)
from transforms.embed import EmbedItems, EncoderModelHandler
from transforms.encoders.base import Encoder
from transforms.extract_sample import ENCODE_PREFIX, EncodeRequest, ExtractSampleFn, KnownSample, encode_table
from transforms.media_io import sha256_of
from transforms.parquet_sink import WriteCacheTables

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


class _FinalizeSamplesFn(beam.DoFn):
    """A sample's ``samples`` row with its embedding results: embedding errors count, ``ok`` becomes ``partial``."""

    def process(self, element: tuple[int, Iterable[tuple[str, dict[str, Any]]]]) -> Iterator[tuple[str, dict[str, Any]]]:
        _, rows = element
        rows = list(rows)
        embed_errors = sum(1 for table, row in rows if table == "errors" and row["stage"] == Stage.EMBED)
        for table, row in rows:
            if table == "samples" and embed_errors:
                row = {**row, "n_errors": row["n_errors"] + embed_errors}
                if row["status"] == STATUS_OK:
                    row["status"] = STATUS_PARTIAL
            yield table, row


def _is_cache_row(pair: tuple[str, dict]) -> bool:
    return pair[0] != "samples" and not pair[0].startswith(ENCODE_PREFIX)


class ExtractToCache(beam.PTransform):
    """``PCollection[ManifestRecord]`` -> Parquet files of every table under ``directory``.

    Args:
        handlers: model handlers by modality (empty: no embeddings).
        known: what the cache already holds (incremental runs), by sample id.

    Output: ``(table, path, n_rows)`` for each file written.
    """

    def __init__(
        self,
        *,
        config: ExtractConfig,
        tokenizer_path: str,
        directory: str,
        schemas: dict[str, pa.Schema],
        num_shards: int,
        handlers: Optional[dict[str, EncoderModelHandler]] = None,
        known: Optional[dict[str, KnownSample]] = None,
        features_fingerprint: str = "",
        run_id: str = "",
    ) -> None:
        super().__init__()
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._directory = directory
        self._schemas = schemas
        self._num_shards = num_shards
        self._handlers = handlers or {}
        self._known = known or {}
        self._features_fingerprint = features_fingerprint
        self._run_id = run_id

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        requests = {
            modality: EncodeRequest(modality, handler.encoder.needs, handler.encoder.fingerprint())
            for modality, handler in self._handlers.items()
        }
        extract = ExtractSampleFn(
            self._config,
            self._tokenizer_path,
            features_fingerprint=self._features_fingerprint,
            run_id=self._run_id,
            requests=requests,
            known=self._known,
        )
        rows = (
            records
            # Spread samples over workers: Create alone hands them all to one bundle.
            | "Spread" >> beam.Reshuffle()
            | "Extract" >> beam.ParDo(extract)
        )
        cache_rows = rows | "CacheRows" >> beam.Filter(_is_cache_row)
        per_sample = [rows | "SamplesRows" >> beam.Filter(lambda pair: pair[0] == "samples")]
        for modality, handler in sorted(self._handlers.items()):
            per_sample.append(
                rows
                | f"Items_{modality}" >> beam.Filter(lambda pair, table=encode_table(modality): pair[0] == table)
                | f"Payload_{modality}" >> beam.Map(lambda pair: pair[1])
                | f"Embed_{modality}" >> EmbedItems(handler, num_buckets=self._num_shards)
            )
        finalized = (
            per_sample
            | "MergePerSample" >> beam.Flatten()
            | "KeyByManifestRow" >> beam.Map(lambda pair: (pair[1]["manifest_row"], pair))
            | "GroupPerSample" >> beam.GroupByKey()
            | "FinalizeSamples" >> beam.ParDo(_FinalizeSamplesFn())
        )
        return (
            (cache_rows, finalized)
            | "MergeAll" >> beam.Flatten()
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


def _remove_staging(output: str, staging: str) -> None:
    """Delete a run's staging folder, and the ``_staging`` parent when no other run uses it."""
    FileSystems.delete([staging])
    parent = FileSystems.join(output, STAGING)
    if not FileSystems.match([FileSystems.join(parent, "*")])[0].metadata_list:
        FileSystems.delete([parent])


def build_handlers(encoders: dict[str, Encoder], encode: EncodeConfig, device: str) -> dict[str, EncoderModelHandler]:
    """One model handler per encoder, with its modality's batch budget."""
    budgets = {"text": encode.max_batch_tokens, "video": encode.max_batch_frames, "audio": encode.max_batch_audio_s}
    return {
        modality: EncoderModelHandler(
            encoder,
            table=embedding_table_name(modality, encoder.name, encoder.fingerprint()),
            device=device,
            precision=encode.precision,
            min_batch_size=encode.min_batch_size,
            max_batch_size=encode.max_batch_size,
            budget=budgets[modality],
            float16=encode.embedding_dtype == "float16",
        )
        for modality, encoder in encoders.items()
    }


def _delete_cache(output: str) -> None:
    old = [path for table in [*TABLE_NAMES, *embedding_tables(output)] for path in table_files(output, table)]
    if old:
        FileSystems.delete(old)


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
        ConfigError: the cache has another schema version (without ``overwrite``) or ``run_id`` is unusable.
        AccountingError: the runner lost or duplicated samples; nothing is committed.
    """
    run_id = validate_run_id(run_id or default_run_id())
    check_output(output, overwrite=overwrite)
    encoders = encoders or {}
    encode = encode or EncodeConfig()
    records = corpus.records
    num_shards = config.num_shards or auto_num_shards(len(records))
    fingerprint = features_fingerprint(config, tokenizer_path)
    config_dict = config.to_dict() | {"tokenizer": tokenizer_path, "num_shards": num_shards, "features_fingerprint": fingerprint}
    handlers = build_handlers(encoders, encode, device)
    schemas = {
        name: with_metadata(schema, table=name, run_id=run_id, config=config_dict)
        for name, schema in table_schemas(corpus.extra_fields).items()
    }
    for modality, handler in handlers.items():
        encoder = handler.encoder
        schemas[handler.table] = with_metadata(
            embeddings_schema(encoder.dim, float16=handler.float16),
            table=handler.table,
            run_id=run_id,
            config=config_dict | {"encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint(), "preprocessing": list(encoder.fingerprint_parts())},
        )
    known = {} if (recompute or overwrite) else known_samples(output)
    staging = FileSystems.join(output, STAGING, run_id)
    ensure_dir(staging)
    started = time.time()
    logger.info("run %s: %d samples from %s -> %s (%d already cached)", run_id, len(records), corpus.source, output, len(known))

    with beam.Pipeline(runner=runner, options=options or PipelineOptions()) as pipeline:
        _ = (
            pipeline
            | "Records" >> beam.Create(records)
            | "ExtractToCache"
            >> ExtractToCache(
                config=config, tokenizer_path=tokenizer_path, directory=staging, schemas=schemas, num_shards=num_shards,
                handlers=handlers, known=known, features_fingerprint=fingerprint, run_id=run_id,
            )
        )
    check_accounting(staging, len(records))
    run_counts = summarise(staging)
    staged_tables = [*TABLE_NAMES, *embedding_tables(staging)]
    if overwrite:
        _delete_cache(output)
    else:
        samples = read_columns(table_files(staging, "samples"), ["sample_id", "manifest_ok"]).to_pylist()
        recomputed = {row["sample_id"] for row in samples if row["manifest_ok"]}
        embedded = {
            row["sample_id"] for table in embedding_tables(staging) for row in read_columns(table_files(staging, table), ["sample_id"]).to_pylist()
        }
        drop_superseded(output, recomputed=recomputed, reembedded=embedded - recomputed)
    move_into_cache(staging, output, run_id, staged_tables, schemas)
    _remove_staging(output, staging)
    wall_time_s = time.time() - started

    summary = {
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
        "inputs": {"source": corpus.source, "records": len(records)},
        **run_counts,
        "cache": {"rows": summarise(output)["rows"]},
        "encoders": {
            modality: {"name": h.encoder.name, "fingerprint": h.encoder.fingerprint(), "dim": h.encoder.dim, "table": h.table}
            for modality, h in handlers.items()
        },
        "device": device,
        "config": config_dict,
        "runner": runner if isinstance(runner, str) else type(runner).__name__,
        "versions": package_versions(),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "wall_time_s": round(wall_time_s, 3),
    }
    with FileSystems.create(FileSystems.join(output, RUN_FILE)) as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    return RunReport(output=output, run_id=run_id, summary=summary)
