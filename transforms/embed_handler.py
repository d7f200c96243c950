"""The ``ModelHandler`` of an ``Encoder`` (see ``transforms.embed`` for the batching around it).

Kept apart from ``transforms.embed`` because Beam's ``apache_beam.ml.inference.base``
imports torch: this module is imported only when a handler is built, so a run
with every encoder off never imports torch.

Models are loaded once per worker process (``RunInference`` shares them
through Beam's ``Shared``), when the first batch arrives (never on the
launcher, never in a worker with nothing to embed).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from schemas.errors import ErrorKind, Stage
from transforms.encoders.base import Encoder

logger = logging.getLogger(__name__)

Item = dict[str, Any]
"""An item to embed: ``{"sample_id", "manifest_row", "payload"}`` (plus ``"window"``; see ``transforms.embed``)."""
TableRow = tuple[str, dict[str, Any]]


class LoadedEncoder:
    """An encoder's model, loaded on first use, in an object Beam's ``Shared`` can weak-reference (a bare ``None``
    or tuple cannot). ``RunInference`` asks for the model when a worker starts; loading it only when a batch
    arrives means a worker with nothing to embed (an unchanged rerun) never loads it.

    Args:
        load: returns the model (called at most once, under a lock).
    """

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load: Optional[Callable[[], Any]] = load
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._load is None

    @property
    def model(self) -> Any:
        if self._load is not None:
            with self._lock:
                if self._load is not None:
                    self._model = self._load()
                    self._load = None
        return self._model


class EncoderModelHandler(ModelHandler[Item, TableRow, LoadedEncoder]):
    """A ``ModelHandler`` over one ``Encoder``: inference mode, device placement, per-item failure isolation.

    Args:
        encoder: a probed encoder (``dim`` set).
        table: the embedding set's table name (``embeddings/<modality>/<encoder>-<fingerprint>``).
        device: ``cpu`` or ``cuda`` (already resolved).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        budget: the size budget of one batch, in the encoder's cost units.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        table: str,
        device: str,
        precision: str,
        min_batch_size: int,
        max_batch_size: int,
        budget: float,
    ) -> None:
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_weight=max(1, int(budget)),
            element_size_fn=lambda item: max(1, int(encoder.cost(item["payload"]))),
        )
        self.encoder = encoder
        self.table = table
        self.device = device
        self.precision = precision
        self.budget = budget
        self.max_batch_size = max_batch_size
        self._constants: Optional[dict[str, Any]] = None

    def load_model(self) -> LoadedEncoder:
        """The encoder's model on ``device``, once per worker process (Beam's ``Shared``), loaded when the first
        batch needs it; torch is imported then."""

        def load() -> Any:
            import torch

            logger.info("loading the %s encoder %s on %s", self.encoder.modality, self.encoder.name, self.device)
            return self.encoder.load(torch.device(self.device))

        return LoadedEncoder(load)

    def run_inference(
        self, batch: Sequence[Item], model: LoadedEncoder, inference_args: Optional[dict[str, Any]] = None
    ) -> list[TableRow]:
        """One result row per item of ``batch``, in its order: an embedding row, or an ``errors`` row for an item the
        encoder failed on (the batch is retried item by item to find it; the other items keep their rows)."""
        import torch

        device = torch.device(self.device)
        try:
            payloads = [item["payload"] for item in batch]
            with torch.inference_mode():
                if self.encoder.keep_sequences and not self.encoder.windowed:  # a windowed encoder's sequence is its windows
                    vectors, sequences = self.encoder.embed_with_sequences(model.model, payloads, device=device, precision=self.precision)
                else:
                    vectors, sequences = self.encoder.embed(model.model, payloads, device=device, precision=self.precision), None
            # One float32 copy of the batch (the model's buffers may be reused); each row's vector is a view of it.
            vectors = np.array(vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise ValueError(f"the encoder returned shape {vectors.shape} for {len(batch)} items, expected ({len(batch)}, dim)")
            if not np.isfinite(vectors).all() or (sequences and not all(np.isfinite(s).all() for s in sequences)):
                raise ValueError("the encoder produced NaN or infinite values")
            if not self.encoder.windowed:  # windows are counted once pooled, per sample
                beam.metrics.Metrics.counter("mmfeat", f"embeddings_{self.encoder.modality}").inc(len(batch))
            return self._embedding_rows(batch, vectors, sequences)
        except Exception as error:  # isolate the failing items; keep the rest of the batch
            if len(batch) == 1:
                logger.warning("%s failed on %s: %s", self.encoder.name, batch[0]["sample_id"], error)
                beam.metrics.Metrics.counter("mmfeat", f"failures_{Stage.EMBED}_{ErrorKind.ENCODER_FAILED}").inc()
                return [self._error_row(batch[0], error)]
            return [row for item in batch for row in self.run_inference([item], model, inference_args)]

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        return int(sum(self.encoder.cost(item["payload"]) for item in batch))

    def get_metrics_namespace(self) -> str:
        return f"mmfeat_embed_{self.encoder.modality}"

    def _row_constants(self) -> dict[str, Any]:
        """The fields every embedding row of this encoder shares (computed once per handler)."""
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
