"""Which committed rows a run replaces, and taking them out of the data files that hold them.

A run's new rows replace the earlier rows of the samples it recomputed. Delta
files are immutable: a file holding superseded rows is replaced by a rewrite
without them (``Replacement``; both in the table's next commit). A sample found
unchanged by its content (its files were touched or copied, not edited) keeps
its ``samples`` row, rewritten with its files' new identities, so that the next
run finds it unchanged by metadata instead of reading its files again. The rewrites
are made by the pipeline's workers (``transforms.cache_rewrite``), so the
commit only commits; the commit makes them itself when the cache changed
after the run planned them.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.cache.layout import STATS_COLUMNS, DataFile, Replacement, column_stats, filesystem, now_ms, table_uri
from schemas.errors import DamagedFileError, Stage

@dataclass(frozen=True)
class SupersedeRule:
    """The rows a run takes out of the cache.

    Attributes:
        kind: the run's kind. An extraction also replaces every manifest-level failure in ``samples`` and
            ``errors`` (each run evaluates the whole manifest again).
        superseded: sorted sample ids whose earlier rows leave every table.
        reembedded: sorted sample ids embedded again: their earlier embedding errors leave ``errors``.
        dropped_in: per embedding table that has samples embedded again, the sorted ids whose rows leave it
            (``superseded`` and those samples: a sample embedded again has one row per set, not two).
        refreshed: ``(sample id, file identity)`` sorted by id: samples unchanged by their content whose
            ``samples`` row stays, with that ``file_identity`` (``transforms.unchanged.identities_json``).
    """

    kind: str
    superseded: tuple[str, ...] = ()
    reembedded: tuple[str, ...] = ()
    dropped_in: dict[str, tuple[str, ...]] = field(default_factory=dict)
    refreshed: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, kind: str, superseded: frozenset[str] = frozenset(),
           reembedded_in: Optional[dict[str, frozenset[str]]] = None,
           refreshed: Optional[dict[str, str]] = None) -> "SupersedeRule":
        """The rule of a run that recomputed ``superseded``, embedded other samples again (``reembedded_in``: by table)
        and found others unchanged by their content (``refreshed``: their files' identities now, by id)."""
        reembedded_in = {table: ids - superseded for table, ids in (reembedded_in or {}).items() if ids - superseded}
        reembedded = frozenset().union(*reembedded_in.values())
        return cls(kind, tuple(sorted(superseded)), tuple(sorted(reembedded)),
                   {table: tuple(sorted(superseded | ids)) for table, ids in reembedded_in.items()},
                   tuple(sorted((sample_id, identity) for sample_id, identity in (refreshed or {}).items()
                                if sample_id not in superseded)))

    def _dropped(self, table: str) -> tuple[str, ...]:
        return self.dropped_in.get(table, self.superseded)

    def _rewritten(self, table: str) -> tuple[str, ...]:
        """The sorted ids whose rows of ``table`` leave it or change."""
        if table == "samples" and self.refreshed:
            return tuple(sorted({*self._dropped(table), *(sample_id for sample_id, _ in self.refreshed)}))
        return self._dropped(table)

    def columns(self, table: str) -> list[str]:
        """The columns ``drop_mask`` reads."""
        if self.kind == "extract" and table == "samples":
            return ["sample_id", "manifest_ok"]
        if self.kind == "extract" and table == "errors":
            return ["sample_id", "stage"]
        return ["sample_id"]

    def may_hold(self, file: dict[str, Any], table: str) -> bool:
        """Whether the committed file ``file`` (a ``file_rows`` row) can hold rows to drop, from its statistics: the
        range of its ``sample_id`` and, for an extraction, whether it may hold manifest-level rows (an invalid
        ``samples`` row, a ``manifest`` error; an ``embed`` error of a sample embedded again). Without statistics: yes."""
        if file.get("num_records") == 0:
            return False
        if self.kind == "extract" and table == "samples" and file.get("min.manifest_ok") is not True:
            return True
        if self.kind == "extract" and table == "errors":
            low, high = file.get("min.stage"), file.get("max.stage")
            stages = [Stage.MANIFEST, *([Stage.EMBED] if self.reembedded else [])]
            if low is None or high is None or any(low <= stage <= high for stage in stages):
                return True
        low, high = file.get("min.sample_id"), file.get("max.sample_id")
        ids = self._rewritten(table)
        if low is None or high is None:
            return bool(ids)
        start = bisect.bisect_left(ids, low)
        return start < len(ids) and ids[start] <= high

    def drop_mask(self, data: pa.Table, table: str) -> pa.Array:
        """True for the rows of ``data`` (with ``columns(table)``) that leave the table."""
        ids = data.column("sample_id")
        drop = pc.is_in(ids, value_set=pa.array(self._dropped(table), pa.string()))
        if self.kind == "extract" and table == "samples":
            drop = pc.or_(drop, pc.invert(data.column("manifest_ok")))
        if self.kind == "extract" and table == "errors":
            stage = data.column("stage")
            reembedded = pc.is_in(ids, value_set=pa.array(self.reembedded, pa.string()))
            drop = pc.or_(drop, pc.or_(pc.equal(stage, Stage.MANIFEST), pc.and_(pc.equal(stage, Stage.EMBED), reembedded)))
        return drop

    def refresh_mask(self, data: pa.Table, table: str) -> pa.Array:
        """True for the rows of ``data`` (with ``columns(table)``) whose ``file_identity`` the rule rewrites."""
        ids = [sample_id for sample_id, _ in self.refreshed] if table == "samples" else []
        return pc.is_in(data.column("sample_id"), value_set=pa.array(ids, pa.string()))

    def refresh(self, data: pa.Table, table: str) -> pa.Table:
        """``data`` (every column) with the refreshed samples' ``file_identity``."""
        if table != "samples" or not self.refreshed or "file_identity" not in data.schema.names:
            return data
        ids, identities = (pa.array(column, pa.string()) for column in zip(*self.refreshed))
        position = data.schema.get_field_index("file_identity")
        found = pc.take(identities, pc.index_in(data.column("sample_id"), value_set=ids))
        return data.set_column(position, data.schema.field(position), pc.coalesce(found, data.column(position)))


def file_rows(dt: Any) -> list[dict[str, Any]]:
    """One dict per data file of the Delta table ``dt``: ``path``, ``size_bytes``, ``num_records`` and ``min.{column}``,
    ``max.{column}`` of the ``STATS_COLUMNS`` (``None`` where the statistics lack them): what ``SupersedeRule.may_hold``
    and ``replace_file`` need."""
    keep = ("path", "size_bytes", "num_records", *(f"{bound}.{name}" for name in STATS_COLUMNS for bound in ("min", "max")))
    return [{key: row.get(key) for key in keep} for row in pa.table(dt.get_add_actions(flatten=True)).to_pylist()]


def read_data_file(cache: str, table: str, path: str, columns: Optional[list[str]] = None) -> pa.Table:
    """``columns`` of the committed file ``path`` of ``table``. Raises ``DamagedFileError`` when it cannot be read."""
    uri = f"{table_uri(cache, table)}/{path}"
    fs, local = filesystem(uri)
    try:
        return pq.read_table(local, columns=columns, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as error:
        raise DamagedFileError(table, uri, f"{type(error).__name__}: {error}") from error


def write_data_file(cache: str, table: str, name: str, data: pa.Table) -> DataFile:
    """Write ``data`` as ``{table}/{name}`` and describe it for its ``AddAction``."""
    uri = f"{table_uri(cache, table)}/{name}"
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(data, path, filesystem=fs, compression="zstd")
    return DataFile(table=table, name=name, size=fs.get_file_info(path).size, n_rows=data.num_rows,
                    stats=column_stats(data), modified_ms=now_ms())


def replace_file(cache: str, table: str, file: dict[str, Any], rule: SupersedeRule, attempt: str) -> Optional[Replacement]:
    """The replacement of the committed ``file`` (a ``file_rows`` row) without the rows ``rule`` drops and with those it
    refreshes rewritten, or ``None`` when it keeps them all as they are. The rewrite is named after the attempt and
    the file, so a retried worker writes the same name.

    Raises:
        DamagedFileError: the file cannot be read.
    """
    if not rule.may_hold(file, table):
        return None
    decisive = read_data_file(cache, table, file["path"], rule.columns(table))
    drop = rule.drop_mask(decisive, table)
    if not pc.any(drop).as_py() and not pc.any(rule.refresh_mask(decisive, table)).as_py():
        return None
    kept = rule.refresh(read_data_file(cache, table, file["path"]).filter(pc.invert(drop)), table)
    rewrite = None
    if kept.num_rows:
        name = f"{attempt}-rewrite-{hashlib.sha256(file['path'].encode()).hexdigest()[:12]}.parquet"
        rewrite = write_data_file(cache, table, name, kept)
    return Replacement(table=table, path=file["path"], size=file["size_bytes"], rewrite=rewrite)
