"""``mmfeat index`` and ``mmfeat search``: nearest-neighbour indexes over a cache's embedding sets, and queries against them.

An index lives in ``<cache>/indexes/<name>/`` (``trainer.search_index``); ``mmfeat extract`` refreshes a cache's indexes
after its run (``refresh_indexes``). A query is a sample of the cache (``--like``),
a text (``--text``) or a file (``--file``); texts and files go through the cache's own extraction and encoder
(``pipelines.query``) and, for an index in a ``pretrain`` space, through that space's projection of their modality.
Nothing heavy is imported by building the parsers.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Optional

from schemas.config import MODALITIES
from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

PATH_COLUMNS = ("video", "audio", "text")
"""Samples columns shown beside each hit (with ``--columns``' others): where the sample's media are."""


def _add_index(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("index", parents=[common], help="build or refresh a nearest-neighbour index over an embedding set")
    parser.add_argument("--cache", required=True, help="a cache written by mmfeat extract (a local folder)")
    parser.add_argument("--encoder", metavar="MODALITY[=SET]", help="the embedding set to index: video, or text=all-minilm (a set "
                        "name or its start; default set: the latest run's); not needed with --refresh or --list")
    parser.add_argument("--name", help="the index's name (default: the modality, plus -space with --space)")
    parser.add_argument("--space", metavar="PRETRAIN_DIR", help="index the vectors projected into a mmfeat pretrain folder's shared "
                        "space, so queries of other modalities search them")
    parser.add_argument("--as-of", metavar="RUN_ID", help="index the cache as run RUN_ID left it (such an index never follows later runs)")
    parser.add_argument("--refresh", action="store_true", help="bring index --name up to the cache's latest run (incrementally "
                        "when only samples were added or replaced)")
    parser.add_argument("--list", action="store_true", help="list the cache's indexes and whether each is up to date")


def _add_search(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("search", parents=[common], help="find the samples nearest to a text, a file or a sample")
    parser.add_argument("--cache", required=True, help="a cache written by mmfeat extract")
    parser.add_argument("--index", required=True, metavar="NAME", help="an index built by mmfeat index")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text, embedded with the cache's text encoder")
    query.add_argument("--like", metavar="SAMPLE_ID", help="a sample of the cache: the samples most like it")
    query.add_argument("--file", help="a media or text file, run through the cache's extraction and encoder")
    parser.add_argument("--file-modality", choices=MODALITIES, help="what --file is (default: the index's modality)")
    parser.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    parser.add_argument("--columns", help="comma-separated samples columns to show (default: label columns and the media paths)")
    parser.add_argument("--json", action="store_true", help="one JSON object per hit instead of a table")
    parser.add_argument("--refresh", action="store_true", help="refresh a stale index first instead of refusing it")
    parser.add_argument("--query-encoder", metavar="VALUE", help="the encoder a text or file query goes through, for caches whose runs "
                        "did not record it (a built-in name or a path)")


def _index(args: argparse.Namespace) -> int:
    from trainer import search_index

    if args.list:
        for info in search_index.list_indexes(args.cache):
            space = f" in the space of {info.space}" if info.space else ""
            reason = search_index.stale_reason(info)
            state = f"pinned to run {info.as_of}" if info.as_of else (f"stale: {reason}" if reason else "up to date")
            print(f"{info.name:<16} {info.table}{space}: {info.count} vectors, run {info.run_id}, {info.library}; {state}")
        return 0
    if args.refresh:
        if not args.name:
            raise ConfigError("--refresh needs --name: the index to refresh (mmfeat index --cache C --list lists them)")
        ignored = [flag for flag, value in (("--encoder", args.encoder), ("--space", args.space), ("--as-of", args.as_of)) if value]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)}: --refresh keeps what index {args.name} was built with; to change it, "
                              "build it again without --refresh")
        info = search_index.refresh_index(args.cache, args.name)
    else:
        if not args.encoder:
            raise ConfigError("--encoder MODALITY[=SET] is required: the embedding set to index (e.g. --encoder text)")
        modality, _, wanted = args.encoder.partition("=")
        if modality not in MODALITIES:
            raise ConfigError(f"--encoder {args.encoder}: the modality must be one of {', '.join(MODALITIES)}")
        name = args.name or (f"{modality}-space" if args.space else modality)
        info = search_index.build_index(args.cache, table=f"{modality}/{wanted}" if wanted else modality, name=name, space=args.space,
                                        as_of=args.as_of)
    space = f" in the space of {info.space}" if info.space else ""
    print(f"mmfeat index: {info.name} over {info.table}{space}: {info.count} vectors ({info.action}, +{info.added} -{info.removed}), "
          f"cache run {info.run_id}")
    return 0


def _search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ConfigError(f"-k must be >= 1 (got {args.k})")
    from trainer import search_index

    index = search_index.open_index(args.cache, args.index, refresh=args.refresh)
    info = index.info
    query = _query_vector(args, index)
    hits = index.search(query, args.k + 1)[0]
    if args.like:  # the sample itself first, also among exact duplicates (equal vectors tie at similarity 1)
        hits = sorted(hits, key=lambda hit: (-round(hit[1], 5), hit[0] != args.like))
    hits = hits[: args.k]
    rows = _sample_rows(args.cache, [sample_id for sample_id, _ in hits], args.columns)
    results = [{"rank": rank, "sample_id": sample_id, "similarity": round(float(score), 4),
                **{k: v for k, v in rows.get(sample_id, {}).items() if k not in ("rank", "similarity")}}
               for rank, (sample_id, score) in enumerate(hits, start=1)]
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(f"mmfeat search: {len(results)} nearest of {len(index)} in {info.name} ({info.table})")
        _print_table(results)
    return 0


def _query_vector(args: argparse.Namespace, index: Any) -> Any:
    """The query as one row of the index's space, ``(1, dim)``."""
    from trainer.search_index import encode_queries

    info = index.info
    if args.like:
        return index.vector_of(args.like)[None, :]
    modality = "text" if args.text is not None else (args.file_modality or info.modality)
    if modality != info.modality and not info.space:
        raise ConfigError(f"a {modality} query searches a {modality} index, or an index built with --space (index {info.name} holds "
                          f"{info.modality} vectors in their own space)")
    from pipelines.query import embed_query

    vector = embed_query(args.cache, info.table, modality=modality, text=args.text, file=args.file, encoder=args.query_encoder)
    return encode_queries(vector[None, :], modality, info.space)


def _sample_rows(cache: str, sample_ids: list[str], columns: Optional[str]) -> dict[str, dict[str, Any]]:
    """The shown samples columns of ``sample_ids``: ``columns``, or the manifest's own (labels) and the media paths."""
    if not sample_ids:
        return {}
    import pyarrow.compute as pc

    from schemas.cache import CacheView
    from schemas.tables import SAMPLES_BASE

    view = CacheView.open(cache)
    available = view.dataset("samples").schema.names
    if columns:
        wanted = [c for c in columns.split(",") if c]
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise ConfigError(f"--columns {unknown}: the samples table has {available}")
    else:
        base = set(SAMPLES_BASE.names)
        wanted = [c for c in available if c not in base] + [c for c in PATH_COLUMNS if c in available]
    table = view.read("samples", ["sample_id", *wanted], filter=pc.field("sample_id").isin(sample_ids))
    return {row.pop("sample_id"): {k: v for k, v in row.items() if v is not None} for row in table.to_pylist()}


def _print_table(results: list[dict[str, Any]]) -> None:
    if not results:
        print("  (no hits)")
        return
    keys = list(dict.fromkeys(k for result in results for k in result))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in results)) for k in keys}
    print("  " + "  ".join(k.ljust(widths[k]) for k in keys))
    for result in results:
        print("  " + "  ".join(str(result.get(k, "")).ljust(widths[k]) for k in keys))
    sys.stdout.flush()


def refresh_indexes(cache: str) -> None:
    """After a run: bring the cache's indexes up to it (incrementally where they can be), each in turn. A failure is
    logged, not raised (the run is committed; ``search`` refuses that index until ``mmfeat index --refresh``)."""
    from schemas.cache.layout import is_local, normalise

    if not is_local(cache) or not os.path.isdir(os.path.join(normalise(cache), "indexes")):
        return
    from trainer import search_index
    from trainer.index_store import names, read_info

    for name in names(cache):
        try:  # the run is committed whatever happens to an index
            if read_info(cache, name).as_of:
                continue
            info = search_index.refresh_index(cache, name)
        except Exception as error:
            logger.warning("index %s not refreshed (%s); mmfeat search refuses it until mmfeat index --cache %s --name %s --refresh",
                           name, error, cache, name)
            continue
        print(f"  index     {info.name}: {info.count} vectors ({info.action}, +{info.added} -{info.removed})")


def add_search_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    _add_index(subparsers, common)
    _add_search(subparsers, common)


SEARCH_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"index": _index, "search": _search}
