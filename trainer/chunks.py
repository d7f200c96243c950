"""Rows of a ``FeatureSet`` in bounded, in-memory chunks, for arrays that are memory maps larger than memory.

With ``chunk_rows`` unset (or at least the number of rows) there is one chunk,
the rows in the given order: the in-memory case, unchanged. Otherwise the rows
are sorted (so a chunk reads nearby parts of the files), cut into blocks of
``chunk_rows // BLOCKS_PER_CHUNK`` rows, and ``BLOCKS_PER_CHUNK`` blocks make a
chunk; with a ``generator`` the blocks are drawn in a random order, so a
training chunk mixes rows from all over the cache (a block-shuffle, as
streaming loaders use).
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from trainer.feature_set import FeatureSet

BLOCKS_PER_CHUNK = 16


def iter_chunks(
    data: FeatureSet, index: np.ndarray, *, chunk_rows: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> Iterator[FeatureSet]:
    """``data.subset`` of the rows ``index``, at most ``chunk_rows`` rows at a time (see module docstring)."""
    index = np.asarray(index, dtype=np.int64)
    if chunk_rows is None or len(index) <= chunk_rows:
        yield data.subset(index)
        return
    block_rows = max(1, chunk_rows // BLOCKS_PER_CHUNK)
    ordered = np.sort(index)
    blocks = [ordered[start : start + block_rows] for start in range(0, len(ordered), block_rows)]
    order = torch.randperm(len(blocks), generator=generator).numpy() if generator is not None else np.arange(len(blocks))
    for start in range(0, len(order), BLOCKS_PER_CHUNK):
        yield data.subset(np.sort(np.concatenate([blocks[b] for b in order[start : start + BLOCKS_PER_CHUNK]])))
