"""Nearest-neighbour search over one embedding set of a cache: build, refresh, open and list indexes.

``build_index`` indexes the usable samples' vectors of one embedding table
(cosine-normalised, or projected through a ``mmfeat pretrain`` folder's
standardisation and projection, so other modalities projected the same way
search across modalities) as one consistent view of the cache pins it, into
``<cache>/indexes/<name>/`` (see ``trainer.index_store``). ``refresh_index``
follows later runs incrementally: rows of data files that left the table are
removed by key, rows of new files added; a rewritten table (overwrite,
compaction), a changed encoder or pretrain folder rebuilds it. ``open_index``
refuses (``ConfigError``) an index the cache has moved past, unless asked to refresh it.
The index is faiss IVF-Flat (``trainer.ann``; why: ``bench/search.py``).
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.cache import CacheView, table_uri
from schemas.cache.view import commit_infos
from schemas.errors import ConfigError
from trainer.ann import DEFAULT_LIBRARY, AnnIndex, choose_nlist, load_index, new_index
from trainer.index_space import Encoder, encode_queries, space_hash  # noqa: F401  (encode_queries: re-exported)
from trainer.index_reader import SearchIndex
from trainer.index_store import (
    ROWS_SCHEMA, IndexInfo, data_files, index_folder, names, read_file, read_info, samples_hash, table_rows, usable_ids,
    write_info,
)

__all__ = ["IndexInfo", "SearchIndex", "build_index", "encode_queries", "list_indexes", "open_index", "refresh_index", "stale_reason"]

logger = logging.getLogger(__name__)

REBUILD_FRACTION = 0.5
"""A refresh that would remove more than this fraction of the indexed vectors rebuilds instead."""
REBUILD_GROWTH = 4.0
"""A refresh of a trained index (IVF lists) whose table grew past this many times the rows it was trained for rebuilds."""
LIBRARIES = ("faiss-ivf",)
"""The ``trainer.ann`` libraries that can remove by key and memory-map a saved index."""


def _resolve_table(view: CacheView, table: str) -> str:
    """``table`` as an embedding table of ``view``: ``embeddings/<modality>/<set>``, or ``<modality>[/<set prefix>]``."""
    from trainer.data import choose_set

    if view.has(table) and table.startswith("embeddings/"):
        return table
    modality, _, wanted = table.removeprefix("embeddings/").partition("/")
    if modality in {t.split("/")[1] for t in view.embedding_tables()}:
        return choose_set(view, modality, wanted or None)
    known = ", ".join(view.embedding_tables()) or "none"
    raise ConfigError(f"--table {table}: no such embedding set in {view.cache} (sets: {known})")


def _state(view: CacheView, table: str) -> dict[str, Any]:
    return {"run_id": view.run.run_id if view.run else None, "samples_version": view.versions.get("samples"),
            "samples_hash": samples_hash(view), "table_version": view.versions[table], "files": data_files(view, table)}


def _index_files(view: CacheView, info: IndexInfo, index: AnnIndex, encoder: Encoder, files: list[str], usable: pa.Array,
                 start_key: int) -> tuple[pa.Table, int]:
    """Add the usable rows of ``files`` to ``index`` under keys from ``start_key``; returns their rows table and the next key."""
    parts, key = [], start_key
    for path in files:
        for ids, vectors in read_file(view, info.table, path, info.description["dim"]):
            keep = pc.is_in(pa.array(ids, pa.string()), value_set=usable).to_numpy(zero_copy_only=False)
            keys = np.arange(key, key + len(ids), dtype=np.uint64)
            key += len(ids)
            index.add(keys[keep], encoder(vectors[keep]))
            parts.append(pa.table({"key": keys, "sample_id": pa.array(ids, pa.string()), "file": [path] * len(ids),
                                   "indexed": keep}, schema=ROWS_SCHEMA))
    return (pa.concat_tables(parts) if parts else ROWS_SCHEMA.empty_table()), key


def _train(view: CacheView, info: IndexInfo, index: AnnIndex, encoder: Encoder, usable: pa.Array) -> None:
    """Train ``index`` (IVF lists) on usable rows of randomly ordered files: ``40 * nlist`` of them at most."""
    expected = table_rows(view, info.table)
    wanted, parts = min(expected, 40 * choose_nlist(expected)), []
    for position in np.random.default_rng(0).permutation(len(info.files)):
        for ids, vectors in read_file(view, info.table, info.files[position], info.description["dim"]):
            keep = pc.is_in(pa.array(ids, pa.string()), value_set=usable).to_numpy(zero_copy_only=False)
            parts.append(encoder(vectors[keep]))
        if sum(map(len, parts)) >= wanted:
            break
    sample = np.concatenate(parts) if parts else np.zeros((0, info.dim), np.float32)
    index.train(sample[np.random.default_rng(0).permutation(len(sample))[:wanted]], expected)


def _save(info: IndexInfo, index: AnnIndex, rows: pa.Table) -> IndexInfo:
    os.makedirs(info.folder, exist_ok=True)
    info = replace(info, generation=info.generation + 1, token=secrets.token_hex(4), count=len(index))
    index.save(info.index_path)
    pq.write_table(rows, info.rows_path)
    write_info(info)
    logger.info("index %s of %s: %s, %d vectors (+%d -%d)", info.name, info.table, info.action, info.count, info.added, info.removed)
    return info


def build_index(cache: str, *, table: str, name: str, space: Optional[str] = None, as_of: Optional[str] = None,
                library: str = DEFAULT_LIBRARY, params: Optional[dict[str, Any]] = None) -> IndexInfo:
    """Index the usable samples' vectors of ``table`` (``embeddings/<modality>/<set>``, or ``<modality>[/<set>]``) as the
    latest run (or the run ``as_of``) left it, into ``<cache>/indexes/<name>/``, replacing any index of that name.

    ``space``: a ``mmfeat pretrain`` folder; vectors are standardised and projected (``hidden``-d) instead of only
    normalised. ``library``: one of ``LIBRARIES``; ``params``: its parameters (``trainer.ann.FAISS_IVF_PARAMS``). Raises
    ``ConfigError`` for an unknown table, run or library, a remote cache, or a space without this modality.
    """
    folder = index_folder(cache, name)
    if library not in LIBRARIES:
        raise ConfigError(f"index library {library!r}: use one of {', '.join(LIBRARIES)}")
    view = CacheView.open(cache, as_of=as_of)
    table = _resolve_table(view, table)
    description = view.description(table)
    if "dim" not in description:
        raise ConfigError(f"{cache}: table {table} does not record its dim; rerun mmfeat extract to rewrite it")
    modality = table.split("/")[1]
    encoder = Encoder(os.path.abspath(space) if space else None, modality, int(description["dim"]))
    index = new_index(library, encoder.out_dim, params)
    generation = read_info(cache, name).generation if os.path.exists(os.path.join(folder, "index.json")) else 0
    info = IndexInfo(name=name, cache=view.cache, table=table, modality=modality, description=description, space=encoder.space,
                     space_hash=encoder.hash, as_of=as_of, dim=encoder.out_dim, count=0, library=index.library,
                     params=index.params, generation=generation, **_state(view, table))
    usable = usable_ids(view)
    if index.needs_training:
        _train(view, info, index, encoder, usable)
    rows, next_key = _index_files(view, info, index, encoder, info.files, usable, 0)
    return _save(replace(info, next_key=next_key, added=len(index)), index, rows)


def _stale(info: IndexInfo, view: CacheView) -> Optional[str]:
    """Why the index no longer reflects ``view`` (``None``: it does)."""
    if not view.has(info.table):
        return f"the cache no longer has table {info.table}"
    if view.versions[info.table] != info.table_version:
        return f"run {view.run.run_id} changed {info.table} (version {info.table_version} -> {view.versions[info.table]})"
    if samples_hash(view) != info.samples_hash:
        return f"run {view.run.run_id} changed the samples"
    if info.space and space_hash(info.space) != info.space_hash:
        return f"the pretrain folder {info.space} changed"
    return None


def _rebuild_reason(info: IndexInfo, view: CacheView) -> Optional[str]:
    """Why a refresh must rebuild rather than update (a rewritten table, another encoder or space), or ``None``."""
    if view.description(info.table).get("encoder_fingerprint") != info.description.get("encoder_fingerprint") or \
            view.description(info.table).get("dim") != info.description.get("dim"):
        return "the table's encoder changed"
    if info.space and space_hash(info.space) != info.space_hash:
        return "the pretrain folder changed"
    new = view.versions[info.table]
    if new < info.table_version:
        return "the table was recreated"
    commits = commit_infos(table_uri(view.cache, info.table), range(info.table_version + 1, new + 1))
    if len(commits) < new - info.table_version:
        return "the table's log was cleaned up"
    if any(c.get("mmfeat.kind") == "compact" or c.get("operation") in ("OPTIMIZE", "RESTORE") for c in commits):
        return "the table was compacted or restored"
    if info.params.get("trained_for") and table_rows(view, info.table) > REBUILD_GROWTH * info.params["trained_for"]:
        return f"the table grew past {REBUILD_GROWTH:g}x the rows the index's lists were trained for"
    if info.files and not set(info.files) & set(data_files(view, info.table)):
        return "every indexed data file was replaced (an overwrite)"
    return None


def refresh_index(cache: str, name: str) -> IndexInfo:
    """Bring index ``name`` up to the latest run: remove rows of data files that left the table (and of samples no longer
    usable) by key, add rows of new files (and of samples now usable); rebuild when the table was rewritten, the encoder
    or the pretrain folder changed, or most vectors would go. ``info.action`` says which (``unchanged``, ``incremental``,
    ``rebuilt: REASON``). Raises ``ConfigError`` for an index pinned with ``as_of``.
    """
    info = read_info(cache, name)
    if info.as_of:
        raise ConfigError(f"index {name} is pinned to run {info.as_of}; rebuild it without --as-of to follow later runs")
    view = CacheView.open(cache)
    if _stale(info, view) is None:
        return replace(info, action="unchanged", added=0, removed=0)
    reason = _rebuild_reason(info, view) if view.has(info.table) else "the table is gone"
    if reason is None:
        rows = pq.read_table(info.rows_path)
        current, usable = set(data_files(view, info.table)), usable_ids(view)
        gone = pc.invert(pc.is_in(rows.column("file"), value_set=pa.array(sorted(current), pa.string())))
        unusable = pc.and_(rows.column("indexed"), pc.invert(pc.is_in(rows.column("sample_id"), value_set=usable)))
        drop = rows.filter(pc.and_(rows.column("indexed"), pc.or_(gone, unusable))).column("key").to_numpy()
        if len(drop) > REBUILD_FRACTION * max(info.count, 1):
            reason = f"{len(drop)} of {info.count} vectors left"
    if reason is not None:
        logger.info("index %s: rebuilding (%s)", name, reason)
        params = {k: v for k, v in info.params.items() if k not in ("nlist", "trained_for", "probe")}
        rebuilt = build_index(cache, table=info.table, name=name, space=info.space, library=info.library, params=params)
        write_info(rebuilt := replace(rebuilt, action=f"rebuilt: {reason}"))
        return rebuilt
    index = load_index(info.library, info.index_path, info.dim, info.params, view=False)
    index.remove(drop)
    kept = rows.filter(pc.invert(gone))
    revived = kept.filter(pc.and_(pc.invert(kept.column("indexed")), pc.is_in(kept.column("sample_id"), value_set=usable)))
    still = pc.and_(kept.column("indexed"), pc.invert(pc.is_in(kept.column("key"), value_set=pa.array(drop, pa.uint64()))))
    kept = kept.set_column(kept.schema.get_field_index("indexed"), "indexed", still)  # unusable rows stay, unindexed
    kept = kept.filter(pc.invert(pc.is_in(kept.column("key"), value_set=revived.column("key"))))  # re-added under new keys
    encoder = Encoder(info.space, info.modality, info.description["dim"])
    revive_files = sorted(set(revived.column("file").to_pylist()))
    new_files = sorted(current - set(info.files))
    start = info.next_key
    added_rows, next_key = _index_files(view, info, index, encoder, new_files, usable, start)
    revived_ids = revived.column("sample_id").combine_chunks()
    revived_rows, next_key = _index_files(view, info, index, encoder, revive_files, revived_ids, next_key)
    revived_rows = revived_rows.filter(revived_rows.column("indexed"))  # the rest of those files is already in ``kept``
    rows = pa.concat_tables([kept, added_rows, revived_rows])
    added = len(index) - (info.count - len(drop))
    return _save(replace(info, **_state(view, info.table), next_key=next_key, action="incremental", added=added,
                         removed=len(drop), description=view.description(info.table)), index, rows)


def open_index(cache: str, name: str, *, refresh: bool = False) -> SearchIndex:
    """Index ``name`` of ``cache``, memory-mapped. When a later run changed its table or the samples: refreshed first
    with ``refresh``, else ``ConfigError`` naming ``mmfeat index --refresh``. Raises ``ConfigError`` for an unknown index."""
    info = read_info(cache, name)
    if not info.as_of:
        reason = _stale(info, CacheView.open(cache))
        if reason and not refresh:
            raise ConfigError(f"index {name} of {cache} is stale: {reason}; run `mmfeat index --cache {cache} --name {name} "
                              "--refresh` (or open it with refresh=True)")
        if reason:
            info = refresh_index(cache, name)
    rows = pq.read_table(info.rows_path, filters=[("indexed", "=", True)], columns=["key", "sample_id"])
    index = load_index(info.library, info.index_path, info.dim, info.params, view=True)
    return SearchIndex(info, index, rows.column("key").to_numpy(), np.asarray(rows.column("sample_id").to_pylist(), dtype=object))


def stale_reason(info: IndexInfo) -> Optional[str]:
    """Why index ``info`` no longer reflects its cache's latest run, or ``None`` when it does (or is pinned ``as_of``)."""
    return None if info.as_of else _stale(info, CacheView.open(info.cache))


def list_indexes(cache: str) -> list[IndexInfo]:
    """The ``IndexInfo`` of every index of ``cache``, by name."""
    return [read_info(cache, name) for name in names(cache)]
