"""Lazy, partitioned reading of cache tables with dask: one partition in memory at a time.

A table's rows are the data files one consistent view of the cache pins
(``schemas.cache.CacheView.files``): a table folder can also hold files of
superseded versions and of runs that never committed, so it is never listed.
``dask.dataframe.read_parquet`` splits those files (and large files' row
groups, by ``blocksize``) into partitions without reading them; each partition
is computed on its own and handed over as a pyarrow table, so the memory a
reader holds is one partition, whatever the size of the cache.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import dask
import dask.dataframe as dd
import pyarrow as pa
import pyarrow.compute as pc

from schemas.cache import CacheView
from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BLOCKSIZE = "64MiB"


def read_partitions(view: CacheView, table: str, columns: list[str], *, blocksize: Optional[str] = None) -> Iterator[pa.Table]:
    """The rows of ``table`` in ``view``, ``columns`` only, one partition (a pyarrow table) at a time."""
    files = view.files(table)
    if not files:
        return
    frame = dd.read_parquet(files, columns=columns, dtype_backend="pyarrow", blocksize=blocksize or DEFAULT_BLOCKSIZE)
    logger.debug("%s: %d files, %d partitions", table, len(files), frame.npartitions)
    for partition in frame.to_delayed():
        part = dask.compute(partition, scheduler="synchronous")[0]
        yield pa.table({column: pa.chunked_array(part[column].array.__arrow_array__()) for column in columns})


def row_count(view: CacheView, table: str) -> int:
    """Rows of ``table`` in ``view``, from the Delta log's file statistics (file footers where a file has none)."""
    counts = pa.table(view.table(table).get_add_actions(flatten=True)).column("num_records")
    if counts.null_count:
        return view.dataset(table).count_rows()
    return int(pc.sum(counts).as_py() or 0)


def columns(view: CacheView, table: str) -> list[str]:
    """Column names of ``table`` in ``view``."""
    return list(pa.schema(view.table(table).schema().to_arrow()).names)


def description(view: CacheView, table: str, key: str) -> Any:
    """``key`` of ``table``'s description (``dim``, ``encoder``, ...).

    Raises:
        ConfigError: the table's description lacks it (a cache not written by ``mmfeat extract``).
    """
    found = view.description(table)
    if key not in found:
        raise ConfigError(f"{view.cache}: table {table} does not record its {key}; rerun mmfeat extract to rewrite it")
    return found[key]
