"""Lazy, partitioned reading of cache tables with dask: one partition in memory at a time.

``dask.dataframe.read_parquet`` splits a table's many files (and large files'
row groups, by ``blocksize``) into partitions without reading them; each
partition is computed on its own and handed over as a pyarrow table, so the
memory a reader holds is one partition, whatever the size of the cache.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import dask
import dask.dataframe as dd
import pyarrow as pa

logger = logging.getLogger(__name__)

DEFAULT_BLOCKSIZE = "64MiB"


def read_partitions(folder: str, columns: list[str], *, blocksize: Optional[str] = None) -> Iterator[pa.Table]:
    """The rows of the Parquet table in ``folder``, ``columns`` only, one partition (a pyarrow table) at a time."""
    frame = dd.read_parquet(folder, columns=columns, dtype_backend="pyarrow", blocksize=blocksize or DEFAULT_BLOCKSIZE)
    logger.debug("%s: %d partitions", folder, frame.npartitions)
    for partition in frame.to_delayed():
        part = dask.compute(partition, scheduler="synchronous")[0]
        yield pa.table({column: pa.chunked_array(part[column].array.__arrow_array__()) for column in columns})

