"""Where a search index lives beside its cache, what it records, and reading the vectors it indexes.

An index named ``NAME`` is the folder ``<cache>/indexes/NAME/``: ``index.json``
(an ``IndexInfo``), ``index-<generation>-<token>.<library>`` (the ANN index)
and ``rows-<generation>-<token>.parquet`` (one row per row of every data file it
covers: ``key`` uint64, ``sample_id``, ``file`` (the data file, relative to the
table), ``indexed`` (False for rows of unusable samples)). A refresh writes a
new generation under a random token and then replaces ``index.json``, so readers
never see a half-written index, and two refreshes at once never share a file:
the last to replace ``index.json`` wins, whole.
Nothing under ``indexes/`` is a Delta table: the cache's own commands never read it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.cache import CacheView, table_uri
from schemas.cache.layout import is_local, normalise
from schemas.errors import ConfigError
from schemas.tables import STATUS_FAILED

INDEXES_DIR = "indexes"
INFO_FILE = "index.json"
KEEP_S = 600
"""Files of generations before the previous one are deleted once they are this old (seconds)."""
ROWS_SCHEMA = pa.schema([("key", pa.uint64()), ("sample_id", pa.string()), ("file", pa.string()), ("indexed", pa.bool_())])


@dataclass
class IndexInfo:
    """What an index holds and which state of the cache it reflects.

    Attributes:
        name, cache, table, modality: the index, its cache folder, the embedding table and its modality.
        description: the table's description (encoder, fingerprint, dim) when indexed.
        space, space_hash: the pretrain folder vectors were projected through, and a hash of its weights (``None``: raw).
        as_of: the run the index was pinned to (``None``: follows the latest run).
        run_id, samples_version, samples_hash: the run it reflects, its samples version, a hash of the samples files.
        table_version, files: the indexed table's Delta version and the data files (add actions) it covers.
        dim, count: vector width and vectors indexed.
        library, params: the ANN library and its parameters.
        generation, next_key: file generation and the next unused key.
        token: a random part of this generation's file names, so that two refreshes writing the same generation at
            once never write the same files (the last to replace ``index.json`` wins, whole).
        action: what the last build or refresh did (``built``, ``incremental``, ``unchanged``, ``rebuilt: REASON``),
            with ``added`` and ``removed`` vectors.
    """

    name: str
    cache: str
    table: str
    modality: str
    description: dict[str, Any]
    space: Optional[str]
    space_hash: Optional[str]
    as_of: Optional[str]
    run_id: Optional[str]
    samples_version: Optional[int]
    samples_hash: str
    table_version: int
    files: list[str]
    dim: int
    count: int
    library: str
    params: dict[str, Any]
    generation: int = 0
    token: str = ""
    next_key: int = 0
    action: str = "built"
    added: int = 0
    removed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return index_folder(self.cache, self.name)

    @property
    def index_path(self) -> str:
        return os.path.join(self.folder, f"index-{self._stem}.{self.library}")

    @property
    def rows_path(self) -> str:
        return os.path.join(self.folder, f"rows-{self._stem}.parquet")

    @property
    def _stem(self) -> str:
        return f"{self.generation}-{self.token}" if self.token else str(self.generation)


def index_folder(cache: str, name: str) -> str:
    """``<cache>/indexes/<name>``. Raises ``ConfigError`` for a remote cache or a name that is not a plain folder name."""
    if not is_local(cache):
        raise ConfigError(f"{cache}: search indexes need a local cache folder (copy the cache locally, or index a local copy)")
    if not name or "/" in name or name in (".", "..") or name != name.strip():
        raise ConfigError(f"index name {name!r}: use a plain folder name such as 'text-minilm'")
    return os.path.join(normalise(cache), INDEXES_DIR, name)


def read_info(cache: str, name: str) -> IndexInfo:
    """The ``IndexInfo`` of index ``name``. Raises ``ConfigError`` when there is none."""
    path = os.path.join(index_folder(cache, name), INFO_FILE)
    if not os.path.exists(path):
        known = ", ".join(sorted(names(cache))) or "none"
        raise ConfigError(f"{cache} has no index {name!r} (indexes: {known}); build it with mmfeat index")
    with open(path, encoding="utf-8") as handle:
        info = IndexInfo(**json.load(handle))
    return replace(info, cache=normalise(cache))  # the cache as named now: a copied or moved cache keeps its indexes


def names(cache: str) -> list[str]:
    """Names of the indexes of ``cache`` (folders holding an ``index.json``)."""
    root = os.path.join(normalise(cache), INDEXES_DIR)
    if not is_local(cache) or not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if os.path.exists(os.path.join(root, n, INFO_FILE)))


def write_info(info: IndexInfo) -> None:
    """Replace ``index.json`` atomically (after the generation's files are written), then delete the files of
    generations before the previous one that are older than ``KEEP_S``: a reader that read the previous ``index.json``
    can still open its files, and a concurrent refresh's files (being written) are never touched."""
    path = os.path.join(info.folder, INFO_FILE)
    temporary = f"{path}.{info.token or os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(asdict(info), handle, indent=2, sort_keys=True)
    os.replace(temporary, path)
    now = time.time()
    for name in os.listdir(info.folder):
        generation = _generation_of(name)
        if generation is not None and generation < info.generation - 1:
            with contextlib.suppress(FileNotFoundError):
                if now - os.path.getmtime(os.path.join(info.folder, name)) > KEEP_S:
                    os.remove(os.path.join(info.folder, name))


def _generation_of(name: str) -> Optional[int]:
    """The generation of an index or rows file name (``index-7-ab12.faiss-ivf``, ``rows-7.parquet``), else ``None``."""
    prefix, _, rest = name.partition("-")
    number = rest.split("-", 1)[0].split(".", 1)[0]
    return int(number) if prefix in ("index", "rows") and number.isdigit() else None


def file_hash(*paths: str) -> str:
    """sha256 (hex, 16 characters) of the contents of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def data_files(view: CacheView, table: str) -> list[str]:
    """The data files (add action paths, relative to the table folder) of ``table`` in ``view``, sorted."""
    return sorted(pa.table(view.table(table).get_add_actions(flatten=True)).column("path").to_pylist())


def table_rows(view: CacheView, table: str) -> int:
    """Rows of ``table`` in ``view``, from its add actions' statistics (0 where a file has none)."""
    counts = pa.table(view.table(table).get_add_actions(flatten=True)).column("num_records")
    return int(pc.sum(counts).as_py() or 0)


def samples_hash(view: CacheView) -> str:
    """A hash of the samples table's data files in ``view`` (it changes exactly when the samples rows do)."""
    return hashlib.sha256("\n".join(data_files(view, "samples")).encode()).hexdigest()[:16] if view.has("samples") else ""


def usable_ids(view: CacheView) -> pa.Array:
    """Sample ids whose manifest row was valid and whose status is not ``failed`` (as ``trainer.data`` filters)."""
    samples = view.dataset("samples")
    if "status" not in samples.schema.names or "manifest_ok" not in samples.schema.names:
        return samples.to_table(columns=["sample_id"]).column("sample_id").combine_chunks()
    usable = (pc.field("manifest_ok") == True) & (pc.field("status") != STATUS_FAILED)  # noqa: E712 (an expression)
    return samples.to_table(columns=["sample_id"], filter=usable).column("sample_id").combine_chunks()


def read_file(view: CacheView, table: str, path: str, dim: int, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(sample_ids (n,) object, vectors (n, dim) float32)`` of one data file, ``batch_rows`` rows at a time.

    Raises:
        ConfigError: a vector whose width is not ``dim``.
    """
    handle = pq.ParquetFile(f"{table_uri(view.cache, table)}/{path}")
    for batch in handle.iter_batches(batch_size=batch_rows, columns=["sample_id", "vector"]):
        vectors = batch.column("vector")
        lengths = pc.list_value_length(vectors)
        if len(batch) and (pc.min(lengths).as_py() != dim or pc.max(lengths).as_py() != dim):
            raise ConfigError(f"{table}/{path}: vectors of {pc.min(lengths)}..{pc.max(lengths)} values, the table says dim {dim}")
        values = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        yield np.asarray(batch.column("sample_id").to_pylist(), dtype=object), values.reshape(len(batch), dim)
