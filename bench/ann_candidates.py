"""The index libraries ``trainer.ann``'s faiss IVF-Flat was chosen over, behind its ``AnnIndex`` calls, for
``bench/search.py --compare``: usearch HNSW (add/remove by key, memory-mapped load), faiss HNSW (cannot remove) and
hnswlib (removal marks vectors deleted; no memory-mapped load). None is an install requirement: pip install usearch
hnswlib to measure them."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from schemas.errors import ConfigError
from trainer.ann import FaissIvfIndex

USEARCH_PARAMS = {"connectivity": 16, "expansion_add": 128, "expansion_search": 64}
FAISS_HNSW_PARAMS = {"M": 32, "ef_construction": 80, "ef_search": 64}
HNSWLIB_PARAMS = {"M": 16, "ef_construction": 128, "ef_search": 64}


def _threads() -> int:
    return os.cpu_count() or 1


class UsearchIndex:
    """usearch HNSW, inner product on float32 vectors. Removal is by key; a viewed (memory-mapped) index is read-only."""

    library = "usearch"
    needs_training = False

    def __init__(self, dim: int, params: Optional[dict[str, Any]] = None, *, index: Any = None) -> None:
        from usearch.index import Index

        self.dim = dim
        self.params = {**USEARCH_PARAMS, **(params or {})}
        self.index = index if index is not None else Index(
            ndim=dim, metric="ip", dtype="f32", connectivity=self.params["connectivity"],
            expansion_add=self.params["expansion_add"], expansion_search=self.params["expansion_search"])

    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        return None

    @classmethod
    def load(cls, path: str, dim: int, params: dict[str, Any], *, view: bool) -> "UsearchIndex":
        from usearch.index import Index

        index = Index.restore(path, view=view)
        if index is None:
            raise ConfigError(f"{path} is not a usearch index; rebuild it with mmfeat index")
        index.expansion_search = params.get("expansion_search", USEARCH_PARAMS["expansion_search"])
        return cls(dim, params, index=index)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if len(keys):
            self.index.add(np.asarray(keys, np.uint64), np.ascontiguousarray(vectors, np.float32), threads=_threads())

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.index.remove(np.asarray(keys, np.uint64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.index.search(np.ascontiguousarray(queries, np.float32), k, threads=_threads() if len(queries) > 1 else 1)
        keys = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = [found] if len(queries) == 1 and not hasattr(found, "counts") else [found[i] for i in range(len(queries))]
        for i, match in enumerate(rows):  # a single query gives Matches, several BatchMatches
            count = len(match.keys)
            keys[i, :count] = np.asarray(match.keys, np.int64)
            scores[i, :count] = 1.0 - np.asarray(match.distances, np.float32)
        return keys, scores

    def get(self, keys: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.get(np.asarray(keys, np.uint64)), np.float32).reshape(len(keys), self.dim)

    def save(self, path: str) -> None:
        self.index.save(path)

    def __len__(self) -> int:
        return len(self.index)


class FaissHnswIndex(FaissIvfIndex):
    """faiss HNSW-Flat behind an id map (no removal: faiss HNSW cannot delete; measured for comparison only)."""

    library = "faiss-hnsw"
    needs_training = False

    def __init__(self, dim: int, params: Optional[dict[str, Any]] = None, *, index: Any = None) -> None:
        self.dim = dim
        self.params = {**FAISS_HNSW_PARAMS, **(params or {})}
        self.index = index

    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        import faiss

        hnsw = faiss.IndexHNSWFlat(self.dim, self.params["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.params["ef_construction"]
        hnsw.hnsw.efSearch = self.params["ef_search"]
        self._inner, self.index = hnsw, faiss.IndexIDMap2(hnsw)

    def remove(self, keys: np.ndarray) -> None:
        raise ConfigError("faiss HNSW indexes cannot remove vectors; rebuild the index")


class HnswlibIndex:
    """hnswlib HNSW, inner product; removal marks vectors deleted (their slots are reused by later adds)."""

    library = "hnswlib"
    needs_training = False

    def __init__(self, dim: int, params: Optional[dict[str, Any]] = None, *, index: Any = None) -> None:
        import hnswlib

        self.dim = dim
        self.params = {**HNSWLIB_PARAMS, **(params or {})}
        if index is None:
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=1024, M=self.params["M"], ef_construction=self.params["ef_construction"],
                             allow_replace_deleted=True)
        index.set_ef(self.params["ef_search"])
        self.index = index
        self.deleted = int(self.params.get("deleted", 0))  # hnswlib does not count marked-deleted vectors

    @classmethod
    def load(cls, path: str, dim: int, params: dict[str, Any], *, view: bool) -> "HnswlibIndex":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(path, allow_replace_deleted=True)
        return cls(dim, params, index=index)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        needed = self.index.get_current_count() + len(keys)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, 2 * self.index.get_max_elements()))
        reused = min(self.deleted, len(keys))
        self.index.add_items(np.ascontiguousarray(vectors, np.float32), np.asarray(keys, np.uint64),
                             num_threads=_threads(), replace_deleted=True)
        self.deleted -= reused

    def remove(self, keys: np.ndarray) -> None:
        for key in keys:
            try:
                self.index.mark_deleted(int(key))
                self.deleted += 1
            except RuntimeError:  # not in the index
                continue

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        keys, distances = self.index.knn_query(np.ascontiguousarray(queries, np.float32), k=k, num_threads=1 if len(queries) == 1 else _threads())
        return keys.astype(np.int64), (1.0 - distances).astype(np.float32)

    def get(self, keys: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.get_items(np.asarray(keys, np.uint64)), np.float32).reshape(len(keys), self.dim)

    def save(self, path: str) -> None:
        self.index.save_index(path)

    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        return None

    def __len__(self) -> int:
        return int(self.index.get_current_count()) - self.deleted


CANDIDATES = {"usearch": UsearchIndex, "faiss-hnsw": FaissHnswIndex, "hnswlib": HnswlibIndex}
MODULES = {"usearch": "usearch", "faiss-hnsw": "faiss", "hnswlib": "hnswlib"}
"""Library name -> the module it needs."""
