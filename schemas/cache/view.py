"""A consistent view of a cache: every table at the version that one ``samples`` commit recorded.

Runs commit the feature and embedding tables first and ``samples`` last; the
``samples`` commit's metadata names the version it committed of every other
table (``mmfeat.versions``). A view pins those versions, so a reader never
sees half a run (a table committed by a run that died before its ``samples``
commit) and never mixes two runs. ``as_of`` picks an earlier run.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from schemas.cache.layout import ATTEMPT_FILE, LEGACY_BOOKKEEPING, filesystem, is_local, normalise, table_uri
from schemas.errors import ConfigError
from schemas.tables import EMBEDDINGS_DIR, SCHEMA_VERSION

logger = logging.getLogger(__name__)

RUN_ID = "mmfeat.run_id"
ATTEMPT = "mmfeat.attempt"
KIND = "mmfeat.kind"
VERSIONS = "mmfeat.versions"
SUMMARY = "mmfeat.summary"
HOST = "mmfeat.host"
PID = "mmfeat.pid"


@dataclass(frozen=True)
class RunInfo:
    """One ``samples`` commit that pins a state of the cache (a run, a repair or a compaction).

    Attributes:
        run_id: the run's name.
        kind: ``extract``, ``repair`` or ``compact``.
        version: the ``samples`` version it committed.
        timestamp_ms: commit time, milliseconds since the epoch.
        versions: the version of every other table it pinned.
        summary: the run summary (config, fingerprints, counts, package versions, wall time).
    """

    run_id: str
    kind: str
    version: int
    timestamp_ms: int
    versions: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_commit(cls, commit: dict[str, Any]) -> Optional["RunInfo"]:
        """The run a commit of ``samples`` pins, or ``None`` for other commits (claims, vacuum)."""
        if VERSIONS not in commit:
            return None
        return cls(run_id=commit[RUN_ID], kind=commit.get(KIND, "extract"), version=int(commit["version"]),
                   timestamp_ms=int(commit["timestamp"]), versions=json.loads(commit[VERSIONS]),
                   summary=json.loads(commit.get(SUMMARY, "{}")))


def open_table(uri: str, version: Optional[int] = None) -> Optional[Any]:
    """The Delta table at ``uri`` (at ``version``), or ``None`` where there is none."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri, version=version)


def exists(uri: str) -> bool:
    """Whether anything (file or folder) is at ``uri``."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def check_format(cache: str) -> None:
    """Refuse a cache written by an mmfeat with another layout. Raises ``ConfigError``.

    A ``samples`` folder that is no Delta table yet is no cache yet when it holds nothing but run attempts' data files
    and the cache none of schema version 1's bookkeeping: a first run is writing it (another run started beside
    it), or one died (a full disk) before its first commit."""
    samples = table_uri(cache, "samples")
    if not exists(samples):
        return
    table = open_table(samples)
    if table is None and _before_a_first_commit(cache, samples):
        return
    found = "1 (plain Parquet folders)" if table is None else describe(table).get("schema_version", "?")
    if found != SCHEMA_VERSION:
        raise ConfigError(f"{cache} holds a cache of schema version {found}, this mmfeat reads and writes {SCHEMA_VERSION} "
                          "(Delta tables); rerun mmfeat extract with --overwrite, or use a new --output")


def _before_a_first_commit(cache: str, samples: str) -> bool:
    """Whether the folder ``samples`` holds no file but run attempts' data files (``ATTEMPT_FILE``; none at all
    counts) and ``cache`` none of schema version 1's bookkeeping (``LEGACY_BOOKKEEPING``)."""
    fs, path = filesystem(samples)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    below = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    if any(info.type == pafs.FileType.File and not ATTEMPT_FILE.match(info.base_name) for info in below):
        return False
    return not any(exists(f"{normalise(cache)}/{name}") for name in LEGACY_BOOKKEEPING)


def describe(table: Any) -> dict[str, Any]:
    """The mmfeat description of a table (schema version; for embedding sets: encoder, fingerprint, dim)."""
    try:
        return json.loads(table.metadata().description or "{}")
    except ValueError:
        return {}


def log_versions(uri: str) -> list[int]:
    """The versions whose commit files are in the table's ``_delta_log`` (ascending)."""
    fs, path = filesystem(f"{uri}/_delta_log")
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(int(info.base_name[:-5]) for info in infos if info.base_name.endswith(".json") and info.base_name[:-5].isdigit())


def commit_infos(uri: str, versions: Iterable[int]) -> list[dict[str, Any]]:
    """The ``commitInfo`` of each of ``versions`` (custom metadata included, ``version`` set), read from the log.

    The log files are read directly: ``DeltaTable.history`` numbers its entries from the loaded version, so
    a commit that lands meanwhile shifts every number by one.
    """
    fs, path = filesystem(f"{uri}/_delta_log")
    found = []
    for version in versions:
        try:
            with fs.open_input_stream(f"{path}/{version:020d}.json") as handle:
                lines = handle.read().decode("utf-8").splitlines()
        except FileNotFoundError:  # removed by log clean-up
            continue
        info = next((json.loads(line)["commitInfo"] for line in lines if line.startswith('{"commitInfo"')), {})
        found.append({**info, "version": version})
    return found


def runs(cache: str) -> list[RunInfo]:
    """Every state of the cache a ``samples`` commit pinned, oldest first."""
    uri = table_uri(cache, "samples")
    found = (RunInfo.from_commit(commit) for commit in commit_infos(uri, log_versions(uri)))
    return [run for run in found if run]


def latest_run(uri: str) -> Optional[RunInfo]:
    """The newest pinning commit of the ``samples`` table at ``uri`` (reading back from the newest commit)."""
    for version in reversed(log_versions(uri)):
        for commit in commit_infos(uri, [version]):
            run = RunInfo.from_commit(commit)
            if run:
                return run
    return None


class CacheView:
    """Readers' entry to a cache: tables at the versions one run pinned.

    Use ``CacheView.open(cache)`` for the latest run, ``as_of=RUN_ID`` for the state a run left.
    """

    def __init__(self, cache: str, run: Optional[RunInfo]) -> None:
        self.cache = normalise(cache)
        self.run = run
        self.versions: dict[str, int] = {} if run is None else {**run.versions, "samples": run.version}
        self._tables: dict[str, Any] = {}

    @classmethod
    def open(cls, cache: str, *, as_of: Optional[str] = None) -> "CacheView":
        """The latest consistent state of ``cache``, or the one run ``as_of`` committed.

        Raises:
            ConfigError: another schema version, or no run ``as_of``.
        """
        check_format(cache)
        if as_of is None:
            return cls(cache, latest_run(table_uri(cache, "samples")))
        history = runs(cache)
        chosen = [run for run in history if run.run_id == as_of]
        if not chosen:
            names = ", ".join(run.run_id for run in history) or "none"
            raise ConfigError(f"--as-of {as_of}: no such run in {cache} (runs: {names})")
        return cls(cache, chosen[-1])

    def tables(self) -> list[str]:
        """Every table of this state, sorted."""
        return sorted(self.versions)

    def embedding_tables(self, modality: Optional[str] = None) -> list[str]:
        """Embedding sets of this state (``embeddings/<modality>/<set>``), of one modality or all."""
        prefix = f"{EMBEDDINGS_DIR}/{modality}/" if modality else f"{EMBEDDINGS_DIR}/"
        return [name for name in self.tables() if name.startswith(prefix)]

    def has(self, name: str) -> bool:
        return name in self.versions

    def table(self, name: str) -> Any:
        """The ``DeltaTable`` of ``name`` at its pinned version. Raises ``ConfigError`` when this state has none."""
        if name not in self.versions:
            raise ConfigError(f"{self.cache} has no table {name} (tables: {', '.join(self.tables()) or 'none: no run committed'})")
        if name not in self._tables:
            self._tables[name] = open_table(table_uri(self.cache, name), self.versions[name])
        return self._tables[name]

    def files(self, name: str) -> list[str]:
        """The data files of ``name`` in this state (paths of a local cache, else URIs), for readers without Delta support.

        deltalake percent-encodes the URIs (a space is ``%20``); local paths are decoded, so that a cache folder whose
        name has spaces or non-ASCII letters reads as any other."""
        uris = list(self.table(name).file_uris())
        return [normalise(urllib.parse.unquote(uri)) for uri in uris] if is_local(self.cache) else uris

    def dataset(self, name: str) -> ds.Dataset:
        """A pyarrow dataset over ``name`` in this state: its data files (with the table's schema: files written before a
        column was added read it as nulls). Local caches are read with pyarrow's own file system: deltalake's file system
        handler left a thread running at exit that aborted short processes (``terminate called``, exit 134)."""
        table = self.table(name)
        if not is_local(self.cache):
            return table.to_pyarrow_dataset()
        schema = pa.schema(table.schema().to_arrow())
        return ds.dataset(self.files(name), schema=schema, format="parquet", filesystem=pafs.LocalFileSystem())

    def read(self, name: str, columns: Optional[list[str]] = None, filter: Optional[Any] = None) -> pa.Table:
        """``columns`` of ``name`` (rows matching ``filter``, a pyarrow expression)."""
        return self.dataset(name).to_table(columns=columns, filter=filter)

    def description(self, name: str) -> dict[str, Any]:
        return describe(self.table(name))
