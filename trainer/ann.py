"""Approximate nearest-neighbour indexes over unit vectors, behind one small interface.

Every index holds float32 vectors of one width ``dim`` under unsigned integer
keys and ranks by inner product; callers L2-normalise vectors first, so
scores are cosine similarities in [-1, 1]. ``faiss-ivf`` (faiss IVF-Flat, the
only library: add and remove by key, save, memory-mapped load; on 2 cores it built
4-25x faster than the HNSW libraries at the same recall, see ``bench/search.py``)
backs ``trainer.search_index``. ``bench/ann_candidates.py`` wraps the libraries
it was chosen over behind the same ``AnnIndex`` calls. faiss is imported on first
use: importing this module needs nothing.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

import numpy as np

from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_LIBRARY = "faiss-ivf"
FAISS_IVF_PARAMS = {"nprobe": 0, "min_scanned": 8192, "train_per_list": 40}
"""``nprobe`` 0: probe enough lists to scan about ``min_scanned`` vectors (at least 32 lists); ``nlist``: ``choose_nlist``."""


class AnnIndex(Protocol):
    """An index of unit vectors by integer key. Shapes: vectors ``(n, dim)`` float32, keys ``(n,)`` uint64."""

    library: str
    needs_training: bool
    dim: int
    params: dict[str, Any]

    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        """Prepare for about ``expected_rows`` vectors from a ``sample`` ``(m, dim)`` of them (a no-op where not needed)."""

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` under ``keys`` (keys not already present)."""

    def remove(self, keys: np.ndarray) -> None:
        """Remove the vectors of ``keys`` (keys absent are ignored)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys ``(q, k)`` int64 (-1 where fewer than ``k`` found) and inner products ``(q, k)`` float32, best first."""

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The stored vectors ``(n, dim)`` float32 of ``keys``."""

    def save(self, path: str) -> None:
        """Write the index to the file ``path``."""

    def __len__(self) -> int:
        """Vectors held (removed ones excluded)."""


class FaissIvfIndex:
    """faiss IVF-Flat, inner product, ids in a hash-table direct map (so ``remove_ids`` and ``reconstruct`` work).

    ``train`` clusters a sample into ``nlist`` lists (``choose_nlist`` of the expected row count); a query scans the
    ``probe`` nearest lists (``nprobe``, or enough for ``min_scanned`` vectors). ``load(view=True)`` memory-maps a saved
    index read-only.
    """

    library = "faiss-ivf"
    needs_training = True

    def __init__(self, dim: int, params: Optional[dict[str, Any]] = None, *, index: Any = None) -> None:
        self.dim = dim
        self.params = {**FAISS_IVF_PARAMS, **(params or {})}
        self.index = index

    @classmethod
    def load(cls, path: str, dim: int, params: dict[str, Any], *, view: bool) -> "FaissIvfIndex":
        faiss = _faiss()

        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if view else 0)
        index.nprobe = params["probe"]
        return cls(dim, params, index=index)

    def train(self, sample: np.ndarray, expected_rows: int) -> None:
        """Cluster ``sample`` ``(m, dim)`` (unit rows) into the lists of an index meant for about ``expected_rows`` vectors."""
        faiss = _faiss()

        if not len(sample):  # an empty set: one list, around any unit vector
            sample = normalise(np.ones((1, self.dim), np.float32))
        nlist = min(choose_nlist(expected_rows), len(sample))
        probe = self.params["nprobe"] or max(32, int(np.ceil(self.params["min_scanned"] * nlist / max(expected_rows, 1))))
        self.params.update(nlist=nlist, trained_for=int(expected_rows), probe=min(nlist, probe))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = self.params["train_per_list"]
        index.train(np.ascontiguousarray(sample, np.float32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = self.params["probe"]
        self._quantizer, self.index = quantizer, index  # the quantizer must outlive the index

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None:
            self.train(vectors, len(vectors))
        if len(keys):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(keys, np.int64))

    def remove(self, keys: np.ndarray) -> None:
        if len(keys):
            self.index.remove_ids(np.asarray(keys, np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, keys = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return keys.astype(np.int64), scores.astype(np.float32)

    def get(self, keys: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(key)) for key in keys]).astype(np.float32)

    def save(self, path: str) -> None:
        faiss = _faiss()

        faiss.write_index(self.index, path)

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)


def _faiss() -> Any:
    """The faiss module, its loader's INFO lines (which CPU build it tried) silenced."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def choose_nlist(rows: int) -> int:
    """IVF lists for ``rows`` vectors: about ``4 sqrt(rows)``, and at least 39 training rows per list (1 for tiny sets)."""
    return max(1, min(int(4 * np.sqrt(max(rows, 1))), rows // 39))


LIBRARIES = {"faiss-ivf": FaissIvfIndex}
"""Library name -> index class (``bench/ann_candidates.py`` holds the ones measured against it)."""


def _cls(library: str) -> type:
    if library not in LIBRARIES:
        raise ConfigError(f"unknown index library {library!r} (known: {', '.join(LIBRARIES)})")
    return LIBRARIES[library]


def new_index(library: str, dim: int, params: Optional[dict[str, Any]] = None) -> AnnIndex:
    """An empty index of ``library`` for vectors of ``dim``. Raises ``ConfigError`` for an unknown library."""
    return _cls(library)(dim, params)


def load_index(library: str, path: str, dim: int, params: dict[str, Any], *, view: bool = True) -> AnnIndex:
    """The index saved at ``path``; ``view``: memory-mapped read-only where the library can, else read into memory."""
    return _cls(library).load(path, dim, params, view=view)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` ``(n, dim)`` as float32 rows of unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)
