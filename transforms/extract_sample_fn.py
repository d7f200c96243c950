"""The Beam wrapper of ``SampleExtractor``, with the run's counters and progress logging."""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Iterator, Optional

import apache_beam as beam

from schemas.config import ExtractConfig
from schemas.errors import WARNING_KINDS
from schemas.records import ManifestRecord
from schemas.tables import SKIPPED_TABLE
from transforms.extract_sample import SampleExtractor
from transforms.large_samples import WRITTEN_FILE, FeatureFiles, SampleRows
from transforms.sample_state import RunContext, TableRow
from transforms.unchanged import KnownSample
from transforms.text import TextTokenizer

logger = logging.getLogger(__name__)


class ExtractSampleFn(beam.DoFn):
    """Beam wrapper of ``SampleExtractor``: ``(ManifestRecord, KnownSample | None)`` in, ``(table, row)`` out (one output only).

    Config is kept from ``__init__``; the tokenizer is built in ``setup()``, once per worker. ``scipy.fft`` is
    imported by the first audio stream (a text-only run never pays for it). With ``feature_files``, a sample's feature
    rows past its limit are written to the sample's own files (``transforms.large_samples``): their ``DataFile`` s come
    out as ``(WRITTEN_FILE, DataFile)`` instead of the rows.
    """

    def __init__(self, config: ExtractConfig, tokenizer_path: str, context: Optional[RunContext] = None,
                 feature_files: Optional[FeatureFiles] = None) -> None:
        self._feature_files = feature_files
        self._config = config
        self._tokenizer_path = tokenizer_path
        self._context = context or RunContext()
        self._extractor: Optional[SampleExtractor] = None
        self._done = 0
        self._last_report = 0.0

    def setup(self) -> None:
        tokenizer = TextTokenizer(self._tokenizer_path, max_tokens=self._config.text.max_tokens)
        self._extractor = SampleExtractor(self._config, tokenizer, self._context)

    def process(self, element: tuple[ManifestRecord, Optional[KnownSample]]) -> Iterator[TableRow]:
        record, known = element
        files, content = self._extractor.hashed_files, self._extractor.hashed_bytes
        features = SampleRows(self._feature_files, record.manifest_row) if self._feature_files else None
        try:
            for table, row in self._extractor.extract(record, known):
                _count(table, row)
                if features is None or not features.add(table, row):
                    yield table, row
        except BaseException:
            if features is not None:
                features.abort()
            raise
        if features is not None:
            for table, row in features.finish():
                if table == WRITTEN_FILE:
                    counter("mmfeat", "rows_written").inc(row.n_rows)
                yield table, row
        if self._extractor.hashed_files > files:  # files read whole to compare their content (identity changed, or --verify-content)
            counter("mmfeat", "content_files_hashed").inc(self._extractor.hashed_files - files)
            counter("mmfeat", "content_bytes_hashed").inc(self._extractor.hashed_bytes - content)
        self._done += 1
        if time.monotonic() - self._last_report > _PROGRESS_EVERY_S:
            self._last_report = time.monotonic()
            logger.info("extracted %d samples in this worker so far (last: %s)", self._done, record.sample_id)


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
    elif table == "frames":
        counter("mmfeat", "frames").inc()
    elif table == "text":
        counter("mmfeat", "tokens").inc(len(row["token_ids"]))
    elif table == "errors":
        outcome = "warnings" if row["error_kind"] in WARNING_KINDS else "failures"
        counter("mmfeat", f"{outcome}_{row['stage']}_{row['error_kind']}").inc()
