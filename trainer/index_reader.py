"""An opened search index: the ANN index and its key -> sample id map, searched by vector."""
from __future__ import annotations

from typing import Optional

import numpy as np

from schemas.errors import ConfigError
from trainer.ann import AnnIndex, normalise
from trainer.index_store import IndexInfo


class SearchIndex:
    """An opened index: ``search`` and ``vector_of``. Built by ``open_index``."""

    def __init__(self, info: IndexInfo, index: AnnIndex, keys: np.ndarray, ids: np.ndarray) -> None:
        self.info, self._index = info, index
        order = np.argsort(keys)
        self._keys, self._ids = keys[order], ids[order]  # sorted keys (uint64) -> sample ids
        self._by_id: Optional[dict[str, int]] = None  # sample id -> key, made on the first ``vector_of``

    def __len__(self) -> int:
        return len(self._keys)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest samples of each query ``(q, dim)`` (or one ``(dim,)``): ``(sample_id, cosine)``, best first.

        Queries are L2-normalised here; with an index built in a pretrain space, project them first (``encode_queries``).
        Raises ``ConfigError`` for ``k`` < 1 or queries of the wrong width.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r}: ask for at least one neighbour (an integer k >= 1)")
        queries = np.asarray(queries, np.float32)
        queries = queries[None, :] if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.info.dim:
            raise ConfigError(f"queries of shape {queries.shape}: index {self.info.name} holds {self.info.dim}-d vectors, "
                              f"queries must be (q, {self.info.dim})")
        if not len(self) or not len(queries):
            return [[] for _ in queries]
        keys, scores = self._index.search(normalise(queries), min(int(k), len(self)))
        found = []
        for row_keys, row_scores in zip(keys, scores):
            valid = row_keys >= 0
            positions = np.searchsorted(self._keys, row_keys[valid].astype(np.uint64))
            found.append([(str(self._ids[p]), float(s)) for p, s in zip(positions, row_scores[valid])])
        return found

    def vector_of(self, sample_id: str) -> np.ndarray:
        """The indexed vector ``(dim,)`` float32 of ``sample_id`` (for "more like this"). Raises ``ConfigError`` if not indexed."""
        if self._by_id is None:
            self._by_id = {str(sample_id): int(key) for key, sample_id in zip(self._keys, self._ids)}
        if sample_id not in self._by_id:
            raise ConfigError(f"{sample_id!r} is not searchable in index {self.info.name} (unknown, failed, or without "
                              f"{self.info.modality} embeddings)")
        return self._index.get(np.asarray([self._by_id[sample_id]], np.uint64))[0]
