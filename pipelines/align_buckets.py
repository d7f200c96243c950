"""Reading several cache tables sample group by sample group, in one pass over each, with bounded memory.

``mmfeat align`` needs, for each sample, its rows of several tables at once. Filtering every table by each
group's ids would scan the whole cache once per group (extraction's data files each hold samples from the
whole id range, so file statistics cannot skip any): quadratic in the corpus. Instead, when the tables are
larger than ``budget_bytes`` (on storage), each is read once, batch by batch, and its rows are spilled to
local Parquet files by bucket (``crc32(sample_id) % n_buckets``); a bucket then holds every row of its samples
in every table, and buckets are handed out one at a time. A cache within the budget is read whole, once.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import zlib
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.cache import CacheView, file_rows

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024
"""Stored bytes of the tables read whole (above this: spilled to buckets of about this size)."""

Reader = Callable[[str, list[str]], Optional[pa.Table]]
"""``(table, columns) -> rows`` of one bucket (``None`` when the cache has no such table)."""


def stored_bytes(view: CacheView, tables: list[str]) -> int:
    """Bytes on storage of the data files of ``tables`` in ``view``."""
    return sum(row["size_bytes"] for table in tables if view.has(table) for row in file_rows(view.table(table)))


def bucket_of(ids: pa.Array, n_buckets: int) -> np.ndarray:
    """``(n,)`` bucket of each sample id: ``crc32(utf-8 id) % n_buckets`` (stable across runs and machines)."""
    return np.fromiter((zlib.crc32(i.encode("utf-8")) % n_buckets for i in ids.to_pylist()), dtype=np.int64, count=len(ids))


def _whole(view: CacheView) -> Reader:
    return lambda table, columns: view.read(table, columns=columns) if view.has(table) else None


def bucket_readers(view: CacheView, needs: dict[str, list[str]], *, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                   max_buckets: Optional[int] = None) -> Iterator[Reader]:
    """One reader per bucket of samples over the ``columns`` of each table in ``needs`` (each includes ``sample_id``).

    ``max_buckets`` caps the count (e.g. at the number of samples). The spill folder is removed when the
    iteration ends.
    """
    tables = [t for t in needs if view.has(t)]
    total = stored_bytes(view, tables)
    n_buckets = max(1, math.ceil(total / max(1, budget_bytes)))
    if max_buckets is not None:
        n_buckets = max(1, min(n_buckets, max_buckets))
    if n_buckets == 1:
        yield _whole(view)
        return
    logger.info("%d MB of tables to align: spilling them to %d buckets", total // 2**20, n_buckets)
    with tempfile.TemporaryDirectory(prefix="mmfeat-align-") as spill:
        names = {table: f"t{number}" for number, table in enumerate(tables)}
        for table in tables:
            writers: dict[int, pq.ParquetWriter] = {}
            try:
                for batch in view.dataset(table).to_batches(columns=needs[table]):
                    buckets = bucket_of(batch.column("sample_id"), n_buckets)
                    for bucket in np.unique(buckets):
                        part = pa.Table.from_batches([batch.filter(pa.array(buckets == bucket))])
                        if bucket not in writers:
                            folder = os.path.join(spill, str(bucket))
                            os.makedirs(folder, exist_ok=True)
                            writers[bucket] = pq.ParquetWriter(os.path.join(folder, f"{names[table]}.parquet"), part.schema)
                        writers[bucket].write_table(part)
            finally:
                for writer in writers.values():
                    writer.close()
        for bucket in range(n_buckets):
            yield _spilled(os.path.join(spill, str(bucket)), names)


def _spilled(folder: str, names: dict[str, str]) -> Reader:
    """The reader of one bucket's spilled files (``None`` for a table without rows in the bucket)."""
    def read(table: str, columns: list[str]) -> Optional[pa.Table]:
        path = os.path.join(folder, f"{names[table]}.parquet") if table in names else None
        return pq.read_table(path, columns=columns) if path and os.path.exists(path) else None
    return read
