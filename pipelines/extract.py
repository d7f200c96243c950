"""An extraction run: a corpus becomes frames, MFCCs, tokens, embeddings and errors in a cache of Delta tables.

The run first removes damaged committed files (``schemas.cache.repair``), runs
the Beam graph (``pipelines.extract_graph``), whose workers write data files
into the table folders under the run attempt's name (new rows, and committed
files rewritten without the rows the run supersedes), checks the accounting
invariant (each input row once, as a ``samples`` row or as unchanged) and
commits them (``schemas.cache.commit_run``: feature tables first, ``samples``
last, which pins the others). Until then nothing of the run is visible; a run
that fails removes its files, one that is killed leaves files that no commit
references, removed by a later vacuum.
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from pipelines.extract_graph import ExtractCorpus, build_handlers
from pipelines.manifest import Corpus
from pipelines.run_report import (
    check_accounting, package_versions, read_run_columns, read_run_schema, runner_metrics, summarise, unchanged_by,
)
from schemas.cache import (
    DEFAULT_RETENTION_HOURS, CacheView, RunCommit, check_format, commit_run, discard_attempt, file_rows, new_attempt, read_pending,
    repair, vacuum,
)
from schemas.cache.commit import new_columns
from schemas.cache.layout import LEGACY_BOOKKEEPING, is_local, normalise
from schemas.config import EncodeConfig, ExtractConfig, SpeechConfig
from schemas.errors import ConfigError
from schemas.tables import SCHEMA_VERSION, SPEECH_TABLES, TABLE_NAMES, embeddings_schema, table_schemas
from transforms.cache_join import cached_file_groups
from transforms.sample_state import RunContext
from transforms.media_io import sha256_of

if TYPE_CHECKING:  # torch and Beam's ml modules are imported only when an encoder is on (pipelines.extract_graph)
    from pipelines.extract_graph import EmbeddingSet
    from transforms.asr_handler import WhisperModelHandler
    from transforms.encoders.base import Encoder

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


def features_fingerprint(config: ExtractConfig, tokenizer_path: str, speech: Optional[SpeechConfig] = None) -> str:
    """Hash of everything that determines the feature tables: schema version, feature configs, tokenizer file, and
    with ``speech`` (``--transcribe``) the speech model's content, language and VAD: a run with another model
    re-transcribes every sample (and turning ``--transcribe`` on or off recomputes them); without it the
    fingerprint is what it was before speech existed."""
    parts = {
        "schema": SCHEMA_VERSION,
        "video": config.video.__dict__,
        "audio": config.audio.__dict__,
        "text": {"max_tokens": config.text.max_tokens, "tokenizer": sha256_of(tokenizer_path)},
    }
    if speech is not None:
        parts["speech"] = speech.fingerprint_parts()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


LEGACY_ENTRIES = ("samples", "frames", "audio", "text", "errors", "embeddings", *LEGACY_BOOKKEEPING)
"""What a schema-version-1 cache (plain Parquet folders and our own commit protocol) left in its folder."""


CACHE_SCHEMES = ("file", "gs", "s3", "abfs", "abfss")
"""URI schemes a cache can live on: those both delta-rs and pyarrow's file systems write (Beam-only schemes cannot)."""


def check_output(output: str, *, overwrite: bool) -> None:
    """Refuse an output Delta Lake cannot write, a cache of another schema version unless ``overwrite``, and an
    output that cannot be written.

    Raises:
        ConfigError: saying what to do.
    """
    scheme = output.split("://", 1)[0] if not is_local(output) else "file"
    if scheme not in CACHE_SCHEMES:
        raise ConfigError(f"--output {output}: the cache is written with Delta Lake, which cannot write {scheme}:// URIs; "
                          f"use a local folder or one of {', '.join(f'{s}://' for s in CACHE_SCHEMES if s != 'file')}")
    if not overwrite:
        check_format(output)
    if is_local(output):
        existing = normalise(output)  # a plain path, also for file:// URIs
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"--output {output}: {existing} is not writable (read-only file system or permissions); "
                              "choose a writable --output")


def _clear_legacy_cache(output: str) -> None:
    """``--overwrite`` of a schema-version-1 cache: delete its folders and bookkeeping files."""
    try:
        check_format(output)
    except ConfigError:
        doomed = [FileSystems.join(output, name) for name in LEGACY_ENTRIES if FileSystems.exists(FileSystems.join(output, name))]
        logger.warning("--overwrite: deleting the schema-version-1 cache at %s", output)
        FileSystems.delete(doomed)


_DISK_ERRORS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system", errno.EDQUOT: "Disk quota exceeded"}


def _disk_error(error: BaseException) -> Optional[OSError]:
    """An ``OSError`` with the errno of a full or read-only disk when ``error`` (or what Beam wrapped in it) is one."""
    while error is not None:
        for number, text in _DISK_ERRORS.items():
            if (isinstance(error, OSError) and error.errno == number) or text in str(error):
                message = str(error).split("[while running")[0].strip()
                return OSError(number, message[message.find(text):] if text in message else f"{text}: {message}")
        error = error.__cause__ or error.__context__
    return None


@dataclass(frozen=True)
class RunReport:
    """The result of a run: where it went and its summary (also in the metadata of its ``samples`` commit)."""

    output: str
    run_id: str
    summary: dict[str, Any]

    @property
    def n_inputs(self) -> int:
        return self.summary["inputs"]["records"]

    @property
    def n_failed(self) -> int:
        return self.summary["samples"]["failed"]


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
    verify_content: bool = False,
    allow_empty: bool = False,
    speech: Optional[SpeechConfig] = None,
    spread_over: int = 0,
) -> RunReport:
    """Run the extraction of ``corpus`` into the cache at ``output`` and commit it.

    An existing cache is extended: samples whose files, feature config and
    encoders are unchanged are not decoded or embedded again (unless
    ``recompute``); a file is unchanged when its identity (size, modification
    time) is, or, where that changed, its content (every file's content under
    ``verify_content``). ``overwrite`` replaces the whole cache (earlier states
    stay readable with ``--as-of`` until vacuumed). An input without rows fails
    unless ``allow_empty``. ``speech`` (``--transcribe``, its model already
    resolved by ``transforms.speech.resolve_speech_config``): every sound track
    is transcribed into ``words`` and ``segments``, and a sample without a text
    file gets its transcript as its text (``transforms.asr``). ``spread_over``: the processes of a direct runner (1: this
    one; N > 1: ``--workers N``, processes of this machine that share the samples to extract, each claiming the next
    as it is free, ``transforms.work_split``), 0 for another runner (its own distribution).

    Raises:
        ConfigError: the cache has another schema version (without ``overwrite``), the output is
            not writable, ``run_id`` is unusable, the input has no rows (without ``allow_empty``), or a manifest
            column changed its type; nothing is committed.
        AccountingError: the runner lost or duplicated samples; nothing is committed.
        ConcurrentRunError: another run kept the cache's commit for too long; nothing is committed.
    """
    run_id = validate_run_id(run_id or default_run_id())
    check_output(output, overwrite=overwrite)
    if overwrite:
        _clear_legacy_cache(output)
    else:
        repair(output)  # damaged or missing committed files leave the cache; their samples are recomputed now
    attempt = new_attempt(run_id)
    handlers = build_handlers(encoders or {}, encode or EncodeConfig(), device)
    speech_handler = build_speech_handler(speech, (encode or EncodeConfig()).device) if speech is not None else None
    # Where the attempt may leave files: its own tables, and every table of the cache (commits rewrite files there).
    view = CacheView.open(output)
    tables = sorted({*TABLE_NAMES, *(SPEECH_TABLES if speech else ()), *(handler.table for handler in handlers.values()), *view.tables()})
    # --workers N: processes of this machine that share the samples, claiming them in a folder of its own
    claims = tempfile.TemporaryDirectory(prefix="mmfeat-claims-") if spread_over > 1 else contextlib.nullcontext()
    try:
        with claims as claims_folder:
            summary = _run(corpus, view, output=output, config=config, tokenizer_path=tokenizer_path, runner=runner,
                           options=options, run_id=run_id, attempt=attempt, overwrite=overwrite, handlers=handlers, device=device,
                           recompute=recompute, verify_content=verify_content, allow_empty=allow_empty, speech=speech_handler,
                           spread_over=spread_over, claims_folder=claims_folder)
    except BaseException as error:
        removed = discard_attempt(output, attempt, tables)
        logger.error("run %s failed: nothing was committed to %s (%d files of it removed)", run_id, output, removed)
        disk_error = _disk_error(error)
        if disk_error:
            raise disk_error from error
        raise
    discard_attempt(output, attempt, [])  # its _pending list: committed now
    removed = vacuum(output)
    if removed:
        logger.info("vacuum removed %d files no longer referenced (older than %d h)", len(removed), DEFAULT_RETENTION_HOURS)
    return RunReport(output=output, run_id=run_id, summary=summary)


def build_speech_handler(speech: SpeechConfig, device: str) -> WhisperModelHandler:
    """The speech recogniser's model handler (imports Beam's inference module, so torch: only when transcribing).
    ``device``: ``auto``, ``cpu`` or ``cuda``, resolved where the model loads; CPU threads: the worker's share."""
    from transforms.asr_handler import WhisperModelHandler

    return WhisperModelHandler(speech, device=device)


def _run(
    corpus: Corpus, view: CacheView, *, output: str, config: ExtractConfig, tokenizer_path: str, runner: Union[str, PipelineRunner],
    options: Optional[PipelineOptions], run_id: str, attempt: str, overwrite: bool, handlers: dict[str, EmbeddingSet],
    device: str, recompute: bool, verify_content: bool, allow_empty: bool, speech: Optional[WhisperModelHandler] = None,
    spread_over: int = 0, claims_folder: Optional[str] = None,
) -> dict[str, Any]:
    num_shards = config.num_shards or corpus.auto_num_shards()
    fingerprint = features_fingerprint(config, tokenizer_path, speech.config if speech else None)
    config_dict = config.to_dict() | {"tokenizer": tokenizer_path, "num_shards": num_shards, "features_fingerprint": fingerprint,
                                      "verify_content": verify_content}
    if speech is not None:
        config_dict["speech"] = speech.config.__dict__ | {"device": speech.device}
    # samples gets the manifest's extra columns from the workers (InferExtraFields)
    schemas = table_schemas([], speech=speech is not None)
    descriptions: dict[str, dict[str, Any]] = {}
    for handler in handlers.values():
        encoder = handler.encoder
        schemas[handler.table] = embeddings_schema(sequence=encoder.keep_sequences)
        descriptions[handler.table] = {"modality": encoder.modality, "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint(),
                                       "dim": encoder.dim, "preprocessing": list(encoder.fingerprint_parts())}
    # The workers read the cache state the run starts from: what it holds (to skip unchanged samples), and the
    # files holding rows this run supersedes (rewritten without them). Only file lists travel in the graph.
    committed = [] if overwrite else [(table, file) for table in view.tables() for file in file_rows(view.table(table))]
    incremental = not (recompute or overwrite)
    joined_tables = {"samples", *view.embedding_tables()}
    to_join = [(table, file) for table, file in committed if table in joined_tables] if incremental else []
    cached_files = cached_file_groups(to_join)
    started = time.time()
    logger.info("run %s: %s -> %s (%d cache files to join)", run_id, corpus.source, output,
                sum(len(paths) for _, paths in cached_files))
    extract = ExtractCorpus(
        corpus, cache=output, attempt=attempt, cached_files=cached_files, spread_over=spread_over, claims_folder=claims_folder,
        config=config, tokenizer_path=tokenizer_path, schemas=schemas, num_shards=num_shards, handlers=handlers,
        context=RunContext(features_fingerprint=fingerprint, run_id=run_id, verify_content=verify_content), committed=committed,
        **({"speech": speech} if speech is not None else {}),
    )
    joined = extract.join_here(cached_rows=sum(file.get("num_records") or 0 for _, file in to_join))
    metrics = collections.Counter(joined.metrics() if joined is not None else {})  # the launcher's join's counters
    if joined is not None and not joined.records:  # a small corpus with nothing to compute: no pipeline at all
        logger.info("run %s: no sample to extract or embed; no pipeline runs", run_id)
    else:
        pipeline = beam.Pipeline(runner=runner, options=options or PipelineOptions([]))
        _ = pipeline | "Extract" >> extract
        result = pipeline.run()
        result.wait_until_finish()
        metrics.update(runner_metrics(result))
    pipeline_s = time.time() - started
    pending = read_pending(output, attempt)
    if joined is not None:  # the launcher's join counted the inputs and the unchanged samples itself
        pending = pending.counted(joined.counts)
    n_inputs = check_accounting(pending)
    if n_inputs == 0 and not allow_empty:
        raise ConfigError(f"{corpus.source} holds no rows to extract; pass --allow-empty to run on an empty input "
                          "(a scheduled job whose input may be empty)")
    files_written = pending.files
    written = read_run_columns(output, attempt, files_written, "samples", ["sample_id", "manifest_ok", "status"]).to_pydict()
    samples_file = next((f for f in files_written if f.table == "samples"), None)
    if samples_file is not None:  # the schema the workers wrote, with the manifest's extra columns
        schemas["samples"] = read_run_schema(output, attempt, samples_file)
    if view.has("samples") and not overwrite:
        new_columns(view.table("samples"), schemas["samples"], "samples")  # a manifest column that changed type: nothing is committed

    recomputed = {sample_id for sample_id, ok in zip(written["sample_id"], written["manifest_ok"]) if ok}
    embedded = {table: frozenset(read_run_columns(output, attempt, files_written, table, ["sample_id"]).column("sample_id").to_pylist())
                for table in (h.table for h in handlers.values())}
    summary = {
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
        "inputs": {"source": corpus.source, "records": n_inputs, "shards": len(corpus.shards)},
        **summarise(written["status"], read_run_columns(output, attempt, files_written, "errors", ["stage", "error_kind"]),
                    unchanged_by(pending), files_written,
                    [*TABLE_NAMES, *(SPEECH_TABLES if speech else ()), *(h.table for h in handlers.values())]),
        "metrics": dict(sorted(metrics.items())),
        "encoders": {
            modality: {"name": h.encoder.name, "fingerprint": h.encoder.fingerprint(), "dim": h.encoder.dim, "table": h.table,
                       "source": h.encoder.source}
            for modality, h in handlers.items()
        },
        "device": device,
        "config": config_dict,
        "runner": runner if isinstance(runner, str) else type(runner).__name__,
        "versions": package_versions(),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "pipeline_s": round(pipeline_s, 3),
        "wall_time_s": round(time.time() - started, 3),
    }
    info = commit_run(output, RunCommit(
        run_id=run_id, attempt=attempt, files=files_written, schemas=schemas,
        descriptions=descriptions, superseded=frozenset(recomputed), reembedded_in=embedded,
        overwrite=overwrite, summary=summary, replacements=pending.replacements,
        replaced_on=view.run.version if view.run and not overwrite else None,
    ))
    return info.summary | {"wall_time_s": round(time.time() - started, 3)}
