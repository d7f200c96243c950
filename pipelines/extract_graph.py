"""The Beam graph of an extraction (see ``pipelines.extract`` for the run around it).

Shape (one chain with branches merged by Flatten, safe on every runner; see FACTS.md)::

    manifest rows -> JoinWithCache (buckets of ids; unchanged samples only counted)
    (record, known) -> ParDo(ExtractSampleFn) -> (table, row)
      |-- cache rows (an inline encoder's embedding rows too) -----------------+
      |-- _encode/<modality> items -> EmbedItems (RunInference) --+            |
      |-- samples rows ------------------------------------------+-> Finalize -+-> Flatten
                                                                          |      -> (table, shard) GroupByKey -> write --+
                                    committed files -> rewrite without superseded rows (rule from Finalize) ------------+-> entries

Finalize groups a sample's ``samples`` row with its embedding results (by
``manifest_row``), so that a failed embedding makes the sample ``partial``;
without a model encoder or speech recognition nothing changes a ``samples``
row after its extraction, and the graph has no Finalize (nor its grouping's
stage): the rows go from the extraction to the writers' grouping.
A sample whose rows of a feature table are too large to group writes them
to a file of its own in ExtractSampleFn (``transforms.large_samples``); its
``DataFile`` joins the entries directly, as the unchanged counts do. So do a
chunk's files: after the launcher's join on the direct runner, the process
extracts one chunk, and with ``--workers N`` each worker its share of the
list (``transforms.work_split``), whose feature rows all go to files of its
own as its samples finish; only ``samples`` and ``errors`` rows reach the
grouping.

With ``--transcribe`` (``speech``), the extraction's ``_encode/speech`` items go
through ``TranscribeItems`` (RunInference) and ``TranscriptRowsFn``
(``transforms.asr``): ``words``/``segments`` (and the ``text`` row of a sample
whose text is its transcript) are written; that text's encoder item joins the
extraction's text items before the text encoder; ``asr`` errors and the
``_speech_text`` marker join Finalize, which counts the one and moves the
other onto the ``samples`` row (``n_tokens``, ``text_source``).
"""
from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Union

import apache_beam as beam
import pyarrow as pa

from pipelines.manifest import Corpus
from schemas.cache.layout import INPUTS_COUNT, UNCHANGED_COUNT_PREFIX, DataFile, RunCount
from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import WARNING_KINDS, Stage
from schemas.records import ManifestRecord
from schemas.tables import SKIPPED_TABLE, STATUS_OK, STATUS_PARTIAL, embedding_table_name
from transforms.asr import SPEECH_ITEMS, SPEECH_TEXT, speech_text_updates
from transforms.sample_state import ENCODE_PREFIX, EncodeRequest, RunContext, encode_table
from transforms.extract_sample_fn import ExtractSampleFn
from transforms import large_samples
from transforms.large_samples import WRITTEN_FILE, FeatureFiles
from transforms.cache_join import CachedFiles, JoinWithCache
from transforms.cache_rewrite import CommittedFile, ReplaceSupersededRows
from transforms.embedding_rows import InlineEmbedder
from transforms.unchanged import KnownSample
from transforms.manifest_rows import ReadFolderRows, ReadManifestRows
from transforms.record_batches import SummariseBatches, batch_records, num_buckets
from transforms.work_split import SPREAD_MAX_MANIFEST_BYTES, ShareOut
from transforms.parquet_sink import WriteDataFiles, WritePendingList

if TYPE_CHECKING:  # torch and Beam's ml modules: imported below only when an encoder is on
    from transforms.asr_handler import WhisperModelHandler
    from transforms.embed import EncoderModelHandler
    from transforms.encoders.base import Encoder

EmbeddingSet = Union["EncoderModelHandler", InlineEmbedder]
"""How one encoder's embedding set is made: a model handler (``RunInference``) or, for an inline encoder, by the
extraction itself. Both carry ``encoder`` and ``table``."""


class _FinalizeSamplesFn(beam.DoFn):
    """A sample's ``samples`` row with its embedding (and speech recognition) results: their errors count, ``ok``
    becomes ``partial``; a ``_speech_text`` marker sets ``n_tokens`` and ``text_source`` and is dropped."""

    def process(self, element: tuple[int, Iterable[tuple[str, dict[str, Any]]]]) -> Iterator[tuple[str, dict[str, Any]]]:
        _, rows = element
        rows = list(rows)
        late_errors = sum(1 for table, row in rows if table == "errors" and row["stage"] in (Stage.EMBED, Stage.ASR)
                          and row["error_kind"] not in WARNING_KINDS)
        speech_text = speech_text_updates(rows)
        for table, row in rows:
            if table == SPEECH_TEXT:
                continue
            if table == "samples" and speech_text:
                row = {**row, **speech_text}
            if table == "samples" and late_errors:
                row = {**row, "n_errors": row["n_errors"] + late_errors}
                if row["status"] == STATUS_OK:
                    row["status"] = STATUS_PARTIAL
            yield table, row


def _pending_entries(pair: tuple[str, Any]) -> Iterator[Union[RunCount, DataFile]]:
    """What an extractor's output adds to the pending list directly: a ``RunCount`` of an unchanged sample (by what
    told; the list sums them), the ``DataFile`` of a large sample's own file; nothing for a row."""
    if pair[0] == SKIPPED_TABLE:
        yield RunCount(f"{UNCHANGED_COUNT_PREFIX}{pair[1]['unchanged_by']}", 1)
    elif pair[0] == WRITTEN_FILE:
        yield pair[1]


def _is_cache_row(pair: tuple[str, Any]) -> bool:
    return pair[0] not in ("samples", SKIPPED_TABLE, WRITTEN_FILE) and not pair[0].startswith(ENCODE_PREFIX)


class ExtractToCache(beam.PTransform):
    """``PCollection[(ManifestRecord, KnownSample | None)]`` -> uncommitted Parquet files of every table in the cache.

    Args:
        cache: the cache folder; attempt: the run attempt that names the files.
        handlers: the embedding sets by modality (``build_handlers``; empty: no embeddings).
        context: the run's fingerprint, id and the cache's content (its encoder requests come from ``handlers``).
        committed: the files of the cache state the run started from; those holding rows the run supersedes are
            rewritten without them (``ReplaceSupersededRows``).
        extra_fields: the manifest's extra columns (``InferExtraFields``), which ``samples`` gets: their fields, or a
            one-element PCollection of them; ``None``: none.
        speech: the speech recogniser's handler (``--transcribe``), or ``None``.
        chunk_files: records come as chunks that are each a process's whole share (the launcher's join on the direct
            runner, or a worker's ``SharedChunk``): each writes its feature rows to files of its own (``transforms.large_samples``), so that only
            ``samples`` and ``errors`` rows go to the writers' grouping.

    Output: the ``DataFile`` of every file written, the ``Replacement`` of every committed file rewritten and
    the ``RunCount`` s of unchanged samples (``WritePendingList`` lists them for the commit).
    """

    def __init__(
        self,
        *,
        config: ExtractConfig,
        tokenizer_path: str,
        cache: str,
        attempt: str,
        schemas: dict[str, pa.Schema],
        num_shards: int,
        handlers: Optional[dict[str, EmbeddingSet]] = None,
        context: Optional[RunContext] = None,
        committed: Optional[list[CommittedFile]] = None,
        extra_fields: Union[beam.PCollection, list[pa.Field], None] = None,
        speech: Optional[WhisperModelHandler] = None,
        chunk_files: bool = False,
    ) -> None:
        super().__init__()
        self._chunk_files = chunk_files
        self._speech = speech
        self._committed = committed or []
        self._extra_fields = extra_fields
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._cache = cache
        self._attempt = attempt
        self._schemas = schemas
        self._num_shards = num_shards
        self._handlers = handlers or {}
        self._context = context or RunContext()

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        requests = encode_requests(self._handlers)
        context = replace(self._context, requests=requests, transcribe=self._speech is not None)
        feature_files = FeatureFiles(self._cache, self._attempt, {
            table: schema for table, schema in self._schemas.items() if table not in ("samples", "errors")}, large_samples.LARGE_SAMPLE_BYTES)
        extract = ExtractSampleFn(self._config, self._tokenizer_path, context, feature_files, chunk_files=self._chunk_files)
        rows = records | "Extract" >> beam.ParDo(extract)  # records come spread over workers (a Create or the join's grouping)
        direct = rows | "DirectEntries" >> beam.FlatMap(_pending_entries)
        models = {modality: handler for modality, handler in self._handlers.items() if not isinstance(handler, InlineEmbedder)}
        if models or self._speech is not None:
            written, finalized = self._finalized(rows, requests, models)
        else:  # nothing changes a samples row after its extraction: written as it comes, without a grouping per sample
            written = rows | "RowsToWrite" >> beam.Filter(lambda pair: pair[0] == "samples" or _is_cache_row(pair))
            finalized = None
        data_files = written | "Write" >> WriteDataFiles(self._cache, self._attempt, self._schemas, self._num_shards,
                                                         extra_fields=self._extra_fields)
        entries = [data_files, direct]
        if self._committed:  # a new cache (or --overwrite) has no file to rewrite: no stages for it
            touched = rows | "TouchedUnchanged" >> beam.Filter(lambda pair: pair[0] == SKIPPED_TABLE and "file_identity" in pair[1])
            samples = finalized if finalized is not None else rows | "SamplesRows" >> beam.Filter(lambda pair: pair[0] == "samples")
            entries.append((samples, touched) | "RuleRows" >> beam.Flatten()
                           | "ReplaceSuperseded" >> ReplaceSupersededRows(self._cache, self._attempt, self._committed))
        return entries | "MergeEntries" >> beam.Flatten()

    def _finalized(self, rows: beam.PCollection, requests: dict[str, EncodeRequest],
                   models: dict[str, EmbeddingSet]) -> tuple[beam.PCollection, beam.PCollection]:
        """The rows to write when samples are embedded by a model or transcribed: each ``samples`` row grouped with its
        embedding and speech results (``_FinalizeSamplesFn``), beside the cache rows; and the finalized rows (for the
        supersede rule: their ``samples`` rows and model embeddings)."""
        speech_rows = self._transcribe(rows, requests) if self._speech is not None else None
        cache_rows = rows | "CacheRows" >> beam.Filter(_is_cache_row)
        per_sample = [rows | "SamplesRows" >> beam.Filter(lambda pair: pair[0] == "samples")]
        for modality, handler in sorted(models.items()):
            from transforms.embed import EmbedItems

            items = rows | f"Items_{modality}" >> beam.Filter(lambda pair, table=encode_table(modality): pair[0] == table)
            if speech_rows is not None and modality == "text":  # texts that came from transcripts join the text files'
                transcribed = speech_rows | "TranscriptTextItems" >> beam.Filter(lambda pair: pair[0] == encode_table("text"))
                items = (items, transcribed) | "AllTextItems" >> beam.Flatten()
            per_sample.append(
                items
                | f"Payload_{modality}" >> beam.Map(lambda pair: pair[1])
                | f"Embed_{modality}" >> EmbedItems(handler, num_buckets=self._num_shards)
            )
        written: tuple[beam.PCollection, ...] = ()
        if speech_rows is not None:
            per_sample.append(speech_rows | "SpeechPerSample" >> beam.Filter(lambda pair: pair[0] in ("errors", SPEECH_TEXT)))
            written = (speech_rows | "SpeechCacheRows" >> beam.Filter(lambda pair: pair[0] in ("words", "segments", "text")),)
        finalized = (
            per_sample
            | "MergePerSample" >> beam.Flatten()
            | "KeyByManifestRow" >> beam.Map(lambda pair: (pair[1]["manifest_row"], pair))
            | "GroupPerSample" >> beam.GroupByKey()
            | "FinalizeSamples" >> beam.ParDo(_FinalizeSamplesFn())
        )
        return (cache_rows, finalized, *written) | "MergeAll" >> beam.Flatten(), finalized

    def _transcribe(self, rows: beam.PCollection, requests: dict[str, EncodeRequest]) -> beam.PCollection:
        """The extraction's speech items -> ``(table, row)``: words, segments, transcript texts and their text-encoder
        items, ``_speech_text`` markers and ``asr`` errors (``transforms.asr``)."""
        from transforms.asr import TranscribeItems, TranscriptRowsFn

        text = requests.get("text")
        rows_fn = TranscriptRowsFn(self._tokenizer_path, max_tokens=self._config.text.max_tokens,
                                   text_needs=text.needs if text is not None else None)
        return (
            rows
            | "SpeechItems" >> beam.Filter(lambda pair: pair[0] == SPEECH_ITEMS)
            | "SpeechPayload" >> beam.Map(lambda pair: pair[1])
            | "Transcribe" >> TranscribeItems(self._speech, num_buckets=self._num_shards)
            | "TranscriptRows" >> beam.ParDo(rows_fn)
        )


LAUNCHER_JOIN_MAX_BYTES = 1 << 20
"""A manifest of up to this many bytes (about 15,000 rows) is read and joined with the cache by the launcher
(``ExtractCorpus.join_here``) when the cache files it joins hold up to ``LAUNCHER_JOIN_MAX_CACHED_ROWS`` rows: for
such a corpus Beam's fixed cost of the reading, counting and joining stages (0.1-0.2 s here) is more than their work."""
LAUNCHER_JOIN_MAX_CACHED_ROWS = 50_000
CHUNK_SAMPLES = 64
"""Samples per chunk (``ExtractSampleFn``: extracted side by side in threads) of a corpus the workers join and one
process extracts; the launcher's join hands its samples over as one chunk. At a chunk's end one thread may idle
while another finishes its last sample: 64 samples make that a small share of the chunk."""


@dataclass(frozen=True)
class JoinedCorpus:
    """A small manifest read and joined with the cache in the launcher (``ExtractCorpus.join_here``).

    Attributes:
        records: the rows that need work, each with what the cache holds for it (``KnownSample`` or ``None``).
        counts: the ``RunCount`` of the input rows, and those of the samples unchanged by metadata (added to the
            pending list's by the launcher after the run: ``Pending.counted``).
        extra_fields: the arrow fields of the manifest's extra columns (``InferExtraFields``).
    """

    records: list[tuple[ManifestRecord, Optional[KnownSample]]]
    counts: list[RunCount]
    extra_fields: list[pa.Field]

    def metrics(self) -> dict[str, int]:
        """The counters the join's stage reports when the workers join (``samples_unchanged`` and by what told)."""
        unchanged: dict[str, int] = collections.Counter()
        for count in self.counts:  # one per bucket that has any
            if count.name.startswith(UNCHANGED_COUNT_PREFIX):
                unchanged[f"samples_{count.name}"] += count.value
        return {"samples_unchanged": sum(unchanged.values()), **unchanged} if unchanged else {}


class ExtractCorpus(beam.PTransform):
    """The whole extraction graph, from a pipeline's start: ``corpus`` rows read by the workers (``ReadManifestRows``
    or ``ReadFolderRows``), joined with the cache (``JoinWithCache``), extracted and written (``ExtractToCache``),
    counted; the files, replacements and counts listed in the attempt's ``_pending`` list. After ``join_here`` (a
    small manifest, read and joined by the launcher) the graph starts from the rows that need work instead, and the
    join's counts are the launcher's to add (``JoinedCorpus.counts``).

    Args:
        corpus: what to read. cached_files: the committed files of ``samples`` and of the embedding sets the join reads,
            in groups (``transforms.cache_join.cached_file_groups``; none: compute everything). spread_over: the
            processes of a direct runner (1: the launcher's; N > 1: ``--workers N``, each given one key of a grouping,
            which share the records of a small manifest, claiming them in ``claims_folder``, a new folder of this
            machine: ``transforms.work_split``), or 0 (another runner: its own distribution). Others: as
            ``ExtractToCache``.

    Output: the number of data files written (one element).
    """

    def __init__(self, corpus: Corpus, *, cache: str, attempt: str, cached_files: list[CachedFiles], spread_over: int = 0,
                 claims_folder: Optional[str] = None, **extract: Any) -> None:
        super().__init__()
        if spread_over > 1 and claims_folder is None:
            raise ValueError("spread_over > 1 (worker processes) needs a claims_folder for the samples they share")
        self._spread_over = spread_over
        self._claims_folder = claims_folder
        self._corpus = corpus
        self._cache = cache
        self._attempt = attempt
        self._cached_files = cached_files
        self._extract = extract
        self._joined: Optional[JoinedCorpus] = None

    def join_here(self, cached_rows: int) -> Optional[JoinedCorpus]:
        """Reads a small manifest and joins it with the cache in this process (``cached_rows``: the rows of the cache
        files it joins), by the functions the workers' stages run, and builds the graph from the rows that need work;
        ``None`` (nothing done) for a folder, or a manifest or cache above ``LAUNCHER_JOIN_MAX_BYTES`` or
        ``LAUNCHER_JOIN_MAX_CACHED_ROWS``."""
        manifest_bytes = self._manifest_bytes()
        if self._corpus.folder or manifest_bytes > LAUNCHER_JOIN_MAX_BYTES or cached_rows > LAUNCHER_JOIN_MAX_CACHED_ROWS:
            return None
        buckets = num_buckets(manifest_bytes)
        batches = list(ReadManifestRows(self._corpus.shards, buckets=buckets).read_here())
        summarise = SummariseBatches()
        rows, extra_fields = summarise.extract_output(functools.reduce(summarise.add_input, batches, summarise.create_accumulator()))
        records, unchanged = self._join(buckets).join_here(batches)
        self._joined = JoinedCorpus(records, [RunCount(INPUTS_COUNT, rows), *unchanged], extra_fields)
        return self._joined

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        corpus = self._corpus
        manifest_bytes = self._manifest_bytes()
        if self._joined is not None:
            records = self._joined.records
            if self._spread_over == 1:  # the launcher's process: one chunk, its samples extracted side by side in threads
                to_extract = begin | "Records" >> beam.Create([records] if records else [])
            else:  # redistributed over another runner's workers, or shared out below
                to_extract = begin | "Records" >> beam.Create(records, reshuffle=self._spread_over == 0)
            counts = []  # the launcher adds its join's counts to the pending list's (pipelines.extract)
            extra_fields: Union[beam.PCollection, list[pa.Field]] = self._joined.extra_fields
        else:
            buckets = num_buckets(manifest_bytes)
            if corpus.folder:
                batches = (begin | "ReadCorpus" >> ReadFolderRows(corpus.folder)
                           | "Batches" >> beam.FlatMap(lambda record: batch_records([record], buckets)))
            else:
                batches = begin | "ReadCorpus" >> ReadManifestRows(corpus.shards, buckets=buckets)
            summary = batches | "SummariseInputs" >> beam.CombineGlobally(SummariseBatches())  # (rows, extra column fields)
            inputs = summary | "InputCount" >> beam.Map(lambda rows_and_fields: RunCount(INPUTS_COUNT, rows_and_fields[0]))
            to_extract, unchanged = batches | "JoinCache" >> self._join(buckets)
            counts = [unchanged, inputs]
            extra_fields = summary | "ExtraColumns" >> beam.Map(lambda rows_and_fields: rows_and_fields[1])
        shared = self._spread_over > 1 and not corpus.folder and manifest_bytes <= SPREAD_MAX_MANIFEST_BYTES
        if shared:  # each worker process's chunk: the whole list, of which it extracts the samples it claims first
            to_extract = to_extract | "SpreadOverWorkers" >> ShareOut(self._spread_over, self._claims_folder)
        elif self._spread_over == 1 and self._joined is None:  # one process: chunks, their samples extracted side by side
            to_extract = to_extract | "Chunks" >> beam.BatchElements(min_batch_size=CHUNK_SAMPLES, max_batch_size=CHUNK_SAMPLES)
        entries = to_extract | "ExtractToCache" >> ExtractToCache(
            cache=self._cache, attempt=self._attempt, extra_fields=extra_fields,
            chunk_files=shared or (self._joined is not None and self._spread_over == 1), **self._extract)
        if counts:  # (after the launcher's join none: no stage merges them)
            entries = (entries, *counts) | "AllEntries" >> beam.Flatten()
        return entries | "ListPending" >> WritePendingList(self._cache, self._attempt)

    def _manifest_bytes(self) -> int:
        return sum(shard.size for shard in self._corpus.shards)

    def _join(self, buckets: int) -> JoinWithCache:
        context = self._extract.get("context") or RunContext()
        return JoinWithCache(
            self._cache, self._cached_files, buckets=buckets,
            features_fingerprint=context.features_fingerprint, verify_content=context.verify_content,
            requests={m: request.fingerprint for m, request in encode_requests(self._extract.get("handlers") or {}).items()})


def encode_requests(handlers: dict[str, EmbeddingSet]) -> dict[str, EncodeRequest]:
    """What the extraction hands each encoder (payload fields) and the fingerprint its embeddings carry, by modality;
    an inline encoder's embedder goes with it (the extraction computes its rows)."""
    return {modality: EncodeRequest(modality, handler.encoder.needs, handler.encoder.fingerprint(),
                                    inline=handler if isinstance(handler, InlineEmbedder) else None)
            for modality, handler in handlers.items()}


def build_handlers(encoders: dict[str, Encoder], encode: EncodeConfig, device: str) -> dict[str, EmbeddingSet]:
    """One embedding set per encoder: an ``InlineEmbedder`` for an inline encoder, else a model handler with its
    modality's batch budget (Beam's inference module, and so torch, is imported only for one of those)."""
    budgets = {"text": encode.max_batch_tokens, "video": encode.max_batch_frames, "audio": encode.max_batch_audio_s}
    handlers: dict[str, EmbeddingSet] = {}
    for modality, encoder in encoders.items():
        table = embedding_table_name(modality, encoder.name, encoder.fingerprint())
        if encoder.inline:
            handlers[modality] = InlineEmbedder(encoder, table)
            continue
        from transforms.embed import EncoderModelHandler

        handlers[modality] = EncoderModelHandler(encoder, table=table, device=device, precision=encode.precision,
                                                 min_batch_size=encode.min_batch_size, max_batch_size=encode.max_batch_size,
                                                 budget=budgets[modality])
    return handlers
