"""The Beam wrapper of ``SampleExtractor``, with the run's counters and progress logging."""
from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

import apache_beam as beam

from schemas.config import ExtractConfig, decode_threads
from schemas.errors import WARNING_KINDS
from schemas.records import ManifestRecord
from schemas.tables import EMBEDDINGS_DIR, SKIPPED_TABLE
from transforms.large_samples import WRITTEN_FILE, FeatureFiles, SampleRows, chunk_file_name, sample_file_name, share_file_name
from transforms.mfcc import single_threaded_blas
from transforms.sample_state import RunContext, TableRow
from transforms.unchanged import KnownSample
from transforms.text import TextTokenizer
from transforms.work_split import SharedChunk, WorkClaims

if TYPE_CHECKING:  # the media stack (OpenCV, PyAV): imported where samples are extracted, not where the graph is built
    from transforms.extract_sample import SampleExtractor

logger = logging.getLogger(__name__)


Element = tuple[ManifestRecord, Optional[KnownSample]]


class ExtractSampleFn(beam.DoFn):
    """Beam wrapper of ``SampleExtractor``: ``(ManifestRecord, KnownSample | None)`` in, ``(table, row)`` out (one output
    only). An element may also be a *list* of those (a chunk: ``pipelines.extract_graph`` makes them where the direct
    runner extracts in one process), or a ``SharedChunk`` (each worker's of ``--workers N``: the whole list, of which
    it extracts the samples it claims first, ``transforms.work_split``): its samples are extracted side by side in
    up to ``decode_threads()`` threads, each decoding with the cores shared out (one each when they are as many as
    the cores; FFmpeg, OpenCV, numpy and the tokenizer release the GIL), which keeps the cores busier than one sample
    at a time with a video's slice threads.

    Config is kept from ``__init__``; the tokenizer is built in ``setup()``, once per worker. ``scipy.fft`` is
    imported by the first audio stream (a text-only run never pays for it). With ``feature_files``, a sample's feature
    rows past its limit are written to the sample's own files (``transforms.large_samples``): their ``DataFile`` s come
    out as ``(WRITTEN_FILE, DataFile)`` instead of the rows; with ``chunk_files`` too, a chunk writes all its feature
    rows to its own files as its samples finish (a chunk that is its process's whole share; see there). Counters are
    taken in the bundle's thread (Beam's metrics belong to it).
    """

    def __init__(self, config: ExtractConfig, tokenizer_path: str, context: Optional[RunContext] = None,
                 feature_files: Optional[FeatureFiles] = None, chunk_files: bool = False) -> None:
        self._feature_files = feature_files
        self._chunk_files = chunk_files and feature_files is not None
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._context = context or RunContext()
        self._tokenizer: Optional[TextTokenizer] = None
        self._done = 0
        self._last_report = 0.0

    def setup(self) -> None:
        self._tokenizer = TextTokenizer(self._tokenizer_path, max_tokens=self._config.text.max_tokens)

    def process(self, element: Union[Element, list[Element], SharedChunk]) -> Iterator[TableRow]:
        if isinstance(element, list):
            pairs = self._side_by_side(element)
        elif isinstance(element, SharedChunk):
            pairs = self._side_by_side(element.elements, element.claims)
        else:
            extractor = self._extractor()
            pairs = self._counted(self._sample_rows(extractor, element), extractor, element[0].sample_id)
        for table, row in pairs:
            if table == WRITTEN_FILE:  # a file the extraction wrote itself (a large sample's, a chunk's): its DataFile
                counter("mmfeat", "rows_written").inc(row.n_rows)
            yield table, row

    def _side_by_side(self, chunk: list[Element], claims: Optional[WorkClaims] = None) -> Iterator[TableRow]:
        """The rows of a chunk's samples (with ``claims``: those it claims, each as a thread is free to start it),
        extracted in threads (see the class docstring), in the order they finish; with ``chunk_files``, their feature
        rows written to the chunk's own files instead."""
        threads = decode_threads()
        parallel = max(1, min(threads, len(chunk)))
        to_extract = chunk if claims is None else (element for element in chunk if claims.take(element[0].manifest_row))

        def extracted(element: Element) -> tuple[list[TableRow], SampleExtractor, str]:
            extractor = self._extractor(max(1, threads // parallel))
            return list(self._sample_rows(extractor, element)), extractor, element[0].sample_id

        def counted() -> Iterator[TableRow]:
            with single_threaded_blas(), concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                # claimed samples start at once: one waiting for a thread could be another worker's next
                ahead = 2 * parallel if claims is None else parallel
                for rows, extractor, sample_id in _completed(pool, extracted, to_extract, ahead=ahead):
                    yield from self._counted(rows, extractor, sample_id)

        if not self._chunk_files:
            return counted()
        attempt = self._feature_files.attempt
        name = (share_file_name(attempt, claims.slot) if claims is not None
                else chunk_file_name(attempt, min(record.manifest_row for record, _ in chunk)))
        return SampleRows(self._feature_files.of_chunk(), name).written(counted())

    def _extractor(self, decode_threads: Optional[int] = None) -> SampleExtractor:
        from transforms.extract_sample import SampleExtractor

        return SampleExtractor(self._config, self._tokenizer, self._context, decode_threads=decode_threads)

    def _sample_rows(self, extractor: SampleExtractor, element: Element) -> Iterator[TableRow]:
        """One sample's rows, those of a feature table past its limit written to its own files."""
        record, known = element
        rows = extractor.extract(record, known)
        if self._feature_files is None:
            return rows
        return SampleRows(self._feature_files, sample_file_name(self._feature_files.attempt, record.manifest_row)).written(rows)

    def _counted(self, rows: Iterable[TableRow], extractor: SampleExtractor, sample_id: str) -> Iterator[TableRow]:
        """``rows`` of the sample ``sample_id`` (``extractor``'s), counted as they pass (Beam counters, progress logging)."""
        for table, row in rows:
            _count(table, row)
            yield table, row
        if extractor.hashed_files:  # files read whole to compare their content (identity changed, or --verify-content)
            counter("mmfeat", "content_files_hashed").inc(extractor.hashed_files)
            counter("mmfeat", "content_bytes_hashed").inc(extractor.hashed_bytes)
        self._done += 1
        if time.monotonic() - self._last_report > _PROGRESS_EVERY_S:
            self._last_report = time.monotonic()
            logger.info("extracted %d samples in this worker so far (last: %s)", self._done, sample_id)


T = TypeVar("T")


def _completed(pool: concurrent.futures.Executor, fn: Callable[[Element], T], elements: Iterable[Element], ahead: int) -> Iterator[T]:
    """``fn`` of every element, run in ``pool`` with at most ``ahead`` submitted and not yet handed over; results in
    the order they complete (a long video does not hold back those done after it). When it stops early (a failure,
    an interrupt) the submitted elements not yet started are cancelled: only those running are waited for."""
    waiting = iter(elements)
    running = {pool.submit(fn, element) for element in itertools.islice(waiting, ahead)}
    try:
        while running:
            done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            running |= {pool.submit(fn, element) for element in itertools.islice(waiting, len(done))}
            for future in done:
                yield future.result()
    finally:
        for future in running:
            future.cancel()


_PROGRESS_EVERY_S = 10.0


@functools.lru_cache(maxsize=None)
def counter(namespace: str, name: str) -> Any:
    """A Beam counter, made once per name (making one per element costs as much as the element's other work)."""
    return beam.metrics.Metrics.counter(namespace, name)


def _count(table: str, row: dict[str, Any]) -> None:
    """Beam counters (namespace ``mmfeat``) reported at the end of a run, in its summary (the metadata of its ``samples`` commit)."""
    if table == "samples":
        counter("mmfeat", f"samples_{row['status']}").inc()
        counter("mmfeat", "audio_ms").inc(int(1000 * (row["audio_duration_s"] or 0.0)))
    elif table == SKIPPED_TABLE:
        counter("mmfeat", "samples_unchanged").inc()
        counter("mmfeat", f"samples_unchanged_by_{row['unchanged_by']}").inc()
        if "file_identity" in row:  # touched, not edited: its samples row gets the files' identity now
            counter("mmfeat", "file_identities_recorded").inc()
    elif table == "frames":
        counter("mmfeat", "frames").inc()
    elif table == "text":
        counter("mmfeat", "tokens").inc(len(row["token_ids"]))
    elif table.startswith(f"{EMBEDDINGS_DIR}/"):  # an inline encoder's (its failures are errors rows, below)
        counter("mmfeat", f"embeddings_{row['modality']}").inc()
    elif table == "errors":
        outcome = "warnings" if row["error_kind"] in WARNING_KINDS else "failures"
        counter("mmfeat", f"{outcome}_{row['stage']}_{row['error_kind']}").inc()
