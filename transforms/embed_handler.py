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

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from transforms.embedding_rows import EmbeddingRows, Item, TableRow
from transforms.encoders.base import Encoder

logger = logging.getLogger(__name__)


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
        self._rows = EmbeddingRows(encoder, table)

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
        """One result row per item of ``batch``, in its order (``EmbeddingRows.of_batch``): an embedding row, or an
        ``errors`` row for an item the encoder failed on."""
        import torch

        device = torch.device(self.device)

        def embed(payloads: list[dict[str, Any]]) -> tuple[np.ndarray, Optional[list[np.ndarray]]]:
            with torch.inference_mode():
                if self.encoder.keep_sequences and not self.encoder.windowed:  # a windowed encoder's sequence is its windows
                    return self.encoder.embed_with_sequences(model.model, payloads, device=device, precision=self.precision)
                return self.encoder.embed(model.model, payloads, device=device, precision=self.precision), None

        rows = self._rows.of_batch(batch, embed)
        self._rows.count(rows)
        return rows

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        return int(sum(self.encoder.cost(item["payload"]) for item in batch))

    def get_metrics_namespace(self) -> str:
        return f"mmfeat_embed_{self.encoder.modality}"
