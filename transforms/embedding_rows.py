"""The rows of one encoder's embedding set, from a batch of items: one embedding row per item, or an ``errors`` row
(stage ``embed``) for an item the encoder failed on; the rest of its batch keeps its rows.

Two paths build them (no torch is imported here):

* ``EncoderModelHandler`` (``transforms.embed_handler``): a model's batches, under ``RunInference``;
* ``InlineEmbedder``: an encoder without a model whose vector costs microseconds (``Encoder.inline``, e.g.
  ``builtin:mfcc-stats``), computed by the extraction itself from the payload it gathered, one sample at a time,
  with no grouping, batching or ``RunInference`` (which cost 10-100 µs an item, and import torch).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Sequence

import apache_beam as beam
import numpy as np

from schemas.errors import ErrorKind, Stage
from transforms.encoders.base import Encoder

logger = logging.getLogger(__name__)

Item = dict[str, Any]
"""An item to embed: ``{"sample_id", "manifest_row", "payload"}`` (plus ``"window"``; see ``transforms.embed``)."""
TableRow = tuple[str, dict[str, Any]]
EmbedFn = Callable[[list[dict[str, Any]]], tuple[np.ndarray, Optional[list[np.ndarray]]]]
"""Payloads -> their vectors ``(n, dim)`` and, when sequences are kept, per payload ``(steps, dim)`` (else ``None``)."""


@functools.lru_cache(maxsize=None)
def _counter(name: str) -> Any:
    """Beam's ``mmfeat`` counter ``name``, looked up once per process (the lookup costs more than an increment)."""
    return beam.metrics.Metrics.counter("mmfeat", name)


class EmbeddingRows:
    """Builds the rows of one embedding set.

    Args:
        encoder: a probed encoder (``dim`` set).
        table: the embedding set's table name (``embeddings/<modality>/<encoder>-<fingerprint>``).
    """

    def __init__(self, encoder: Encoder, table: str) -> None:
        self.encoder = encoder
        self.table = table
        self._constants: Optional[dict[str, Any]] = None

    def of_batch(self, batch: Sequence[Item], embed: EmbedFn) -> list[TableRow]:
        """One result row per item of ``batch``, in its order: an embedding row, or an ``errors`` row for an item
        ``embed`` failed on (the batch is retried item by item to find it; the other items keep their rows).

        A result whose shape is not ``(len(batch), dim)``, or that holds NaN or infinite values, is a failure."""
        try:
            vectors, sequences = embed([item["payload"] for item in batch])
            # One float32 copy of the batch (the model's buffers may be reused); each row's vector is a view of it.
            vectors = np.array(vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise ValueError(f"the encoder returned shape {vectors.shape} for {len(batch)} items, expected ({len(batch)}, dim)")
            if not np.isfinite(vectors).all() or (sequences and not all(np.isfinite(s).all() for s in sequences)):
                raise ValueError("the encoder produced NaN or infinite values")
            return self._embedding_rows(batch, vectors, sequences)
        except Exception as error:  # isolate the failing items; keep the rest of the batch
            if len(batch) == 1:
                logger.warning("%s failed on %s: %s", self.encoder.name, batch[0]["sample_id"], error)
                return [self._error_row(batch[0], error)]
            return [row for item in batch for row in self.of_batch([item], embed)]

    def count(self, rows: Sequence[TableRow]) -> None:
        """Beam's counters of ``of_batch`` 's ``rows``, in the calling thread (Beam's metrics belong to the bundle's
        thread): ``embeddings_<modality>`` (a windowed encoder's windows are counted once pooled, per sample) and
        the encoder's failures."""
        failed = sum(1 for table, _ in rows if table == "errors")
        if failed:
            _counter(f"failures_{Stage.EMBED}_{ErrorKind.ENCODER_FAILED}").inc(failed)
        if len(rows) > failed and not self.encoder.windowed:
            _counter(f"embeddings_{self.encoder.modality}").inc(len(rows) - failed)

    def _row_constants(self) -> dict[str, Any]:
        """The fields every embedding row of this encoder shares (computed once)."""
        if self._constants is None:
            self._constants = {"modality": self.encoder.modality, "encoder": self.encoder.name,
                               "encoder_fingerprint": self.encoder.fingerprint()}
        return self._constants

    def _embedding_rows(self, batch: Sequence[Item], vectors: np.ndarray, sequences: Optional[list[np.ndarray]]) -> list[TableRow]:
        """The embedding rows of a batch, in its order. ``vectors``: float32 ``(len(batch), dim)`` (each row's
        ``vector`` is a view of it); ``sequences``: per item ``(steps, dim)``, or ``None``."""
        table, constants = self.table, self._row_constants()
        rows = []
        for index, (item, vector) in enumerate(zip(batch, vectors)):
            row = {"sample_id": item["sample_id"], "manifest_row": item["manifest_row"], **constants, "vector": vector}
            if sequences is not None:
                row["sequence"] = np.array(sequences[index], dtype=np.float32)
            if "window" in item:
                row["window"] = item["window"]
            rows.append((table, row))
        return rows

    def _error_row(self, item: Item, error: Exception) -> TableRow:
        row = {
            "sample_id": item["sample_id"],
            "manifest_row": item["manifest_row"],
            "uri": None,
            "stage": Stage.EMBED,
            "error_kind": ErrorKind.ENCODER_FAILED,
            "message": f"{self.encoder.modality} encoder {self.encoder.name}: {type(error).__name__}: {error}",
        }
        if "window" in item:
            row["window"] = item["window"]
        return "errors", row


class InlineEmbedder(EmbeddingRows):
    """The embedding set of an ``inline`` encoder, computed where the extraction gathered its payload.

    Raises:
        ValueError: the encoder is not ``inline``, is windowed, or keeps sequences (those go through ``RunInference``).
    """

    def __init__(self, encoder: Encoder, table: str) -> None:
        if not encoder.inline or encoder.windowed or encoder.keep_sequences:
            raise ValueError(f"{encoder.name} cannot be computed inline: it needs a model, windows or sequences")
        super().__init__(encoder, table)

    def rows(self, item: Item) -> list[TableRow]:
        """The result of one item: its embedding row, or an ``errors`` row when the encoder failed on it (counted by
        the extraction's DoFn, with the sample's other rows)."""
        return self.of_batch([item], self._embed)

    def _embed(self, payloads: list[dict[str, Any]]) -> tuple[np.ndarray, None]:
        return self.encoder.embed(None, payloads, device=None, precision="fp32"), None
