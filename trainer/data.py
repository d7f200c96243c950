"""Reading the cache for training: one feature array per modality, a presence mask, and label columns.

The trainer reads the cache through one consistent view
(``schemas.cache.CacheView``: every table at the version the latest run, or
the run ``as_of``, pinned), with pyarrow and dask only (it never imports Beam).
Samples whose status is ``failed``, whose manifest row was invalid, or whose
label is missing are left out. A sample without a modality keeps a zero row
for it and ``present`` False: missing modalities are masked, not dropped.

Embedding tables are read one dask partition at a time into arrays that live in
memory, or, with ``storage``, in memory-mapped files: then a cache larger than
memory trains in chunks (see ``trainer.chunks``). Only sample ids and labels
are always held in memory.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.cache import CacheView, runs
from schemas.errors import ConfigError
from schemas.tables import MODALITIES, STATUS_FAILED
from trainer.cache_reader import columns, description, read_partitions, row_count
from trainer.feature_set import FeatureSet
from trainer.names import ALIGNED_SEQUENCES
from trainer.sequences import allocate, embedding_sequences, mfcc_sequences

UNLABELLED_HINT = "to get a trained model's predictions on a cache without labels, use mmfeat predict"


def open_view(cache: Union[str, CacheView], as_of: Optional[str] = None) -> CacheView:
    """``cache`` itself when it is a view, else its latest state or the one run ``as_of`` left.

    Raises:
        ConfigError: an unknown run, a cache of another schema version, or ``as_of`` given with a view.
    """
    if isinstance(cache, CacheView):
        if as_of is not None:
            raise ConfigError(f"as_of={as_of!r} given with a view of {cache.cache}: open the view with as_of instead")
        return cache
    return CacheView.open(cache, as_of=as_of)


def embedding_sets(view: CacheView, modality: str) -> list[str]:
    """Embedding tables of ``modality`` that hold rows in ``view`` (``embeddings/<modality>/<set>``), sorted."""
    return [table for table in view.embedding_tables(modality) if row_count(view, table)]


def _latest_set(view: CacheView, modality: str) -> Optional[str]:
    """The embedding table of ``modality`` that the pinned run used, or the last run before it that embedded ``modality``."""
    if view.run is None:
        return None
    earlier = (run for run in reversed(runs(view.cache)) if run.version < view.run.version)
    for run in itertools.chain([view.run], earlier):
        spec = run.summary.get("encoders", {}).get(modality)
        if spec:
            return spec["table"]
    return None


def sets_as_trained(view: CacheView, tables: dict[str, dict[str, Any]], overrides: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The embedding set per modality to read for a saved model: the one it was trained on (``tables``, its
    ``FeatureSet.source["tables"]``) where ``view`` holds rows of it, then ``overrides`` (``--encoder``)."""
    trained = {m: t["table"] for m, t in tables.items() if t["table"] != "audio"}  # "audio": MFCC sequences, not a set
    return {**{m: table for m, table in trained.items() if table in embedding_sets(view, m)}, **(overrides or {})}


def choose_set(view: CacheView, modality: str, wanted: Optional[str] = None) -> str:
    """The embedding table to train on: ``wanted`` (a set name, or an encoder name prefix), the latest run's, or the only one.

    Raises:
        ConfigError: no set, an unknown ``wanted``, or several sets and no way to choose.
    """
    sets = embedding_sets(view, modality)
    if not sets:
        raise ConfigError(f"{view.cache} has no {modality} embeddings; run mmfeat extract with a {modality} encoder")
    if wanted:
        name = wanted.lower().rsplit("/", 1)[-1]
        matches = [table for table in sets if table.rsplit("/", 1)[-1].startswith(name)]
        if len(matches) != 1:
            raise ConfigError(f"--encoder {modality}={wanted}: matches {matches or 'nothing'} among {sets}")
        return matches[0]
    if len(sets) > 1:
        latest = _latest_set(view, modality)
        if latest not in sets:
            raise ConfigError(f"{view.cache} has several {modality} embedding sets {sets}; choose one with --encoder {modality}=NAME")
        return latest
    return sets[0]


def load_features(
    cache: Union[str, CacheView],
    *,
    labels: list[str],
    as_of: Optional[str] = None,
    modalities: Optional[list[str]] = None,
    encoders: Optional[dict[str, str]] = None,
    sequences: tuple[str, ...] = (),
    max_steps: int = 64,
    audio_step_s: float = 0.1,
    storage: Optional[str] = None,
    blocksize: Optional[str] = None,
    labels_file: Optional[str] = None,
    aligned_set: Optional[str] = None,
) -> FeatureSet:
    """Join the chosen embedding sets (or sequences) and the label columns by ``sample_id``.

    Args:
        cache: a cache folder or URI (read at its latest run, or ``as_of``), or a ``CacheView`` of one.
        as_of: a run id: read the cache as that run left it.
        sequences: modalities read as sequences (see ``trainer.sequences``) rather than pooled vectors; ``("aligned",)``:
            every modality (of ``modalities``, default those it holds) from an aligned set, with step masks (``trainer.aligned``).
        max_steps: the longest sequence kept; longer ones are averaged over equal segments.
        audio_step_s: seconds of MFCC frames averaged into one audio step.
        storage: a folder for memory-mapped feature arrays (caches larger than memory); ``None``: in memory.
        blocksize: the size of one dask partition (default ``trainer.cache_reader.DEFAULT_BLOCKSIZE``).
        labels_file: a CSV, JSONL or Parquet file with ``sample_id`` (or ``id``) and the label columns,
            read instead of the samples table's columns.
        aligned_set: with ``sequences`` ``("aligned",)``, the aligned table to read (default: the newest ``mmfeat align``'s).

    Raises:
        ConfigError: an unknown run, a label column or a modality's features are missing.
    """
    view = open_view(cache, as_of)
    samples = _labelled_samples(view, labels, labels_file)
    if not samples.num_rows:
        raise ConfigError(f"{view.cache}: no usable sample has all of {labels}" + (f"; {UNLABELLED_HINT}" if labels else ""))
    ids = samples.column("sample_id").to_pylist()
    index = {sample_id: i for i, sample_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ConfigError(f"{view.cache}: the samples table repeats a sample_id among valid rows; the cache is damaged")
    if tuple(sequences) == (ALIGNED_SEQUENCES,):
        return _aligned_features(view, samples, ids, index, labels, modalities, max_steps=max_steps, storage=storage,
                                 blocksize=blocksize, aligned_set=aligned_set)
    chosen = modalities or [m for m in MODALITIES if embedding_sets(view, m)]
    unknown = [m for m in sequences if m not in chosen]
    if unknown:
        raise ConfigError(f"--sequence {unknown}: not among the trained modalities {chosen}")
    features, lengths, present = {}, {}, np.zeros((len(ids), len(chosen)), dtype=bool)
    tables = {}
    for column, modality in enumerate(chosen):
        if modality == "audio" and modality in sequences:
            tables[modality] = "audio"
            features[modality], lengths[modality] = mfcc_sequences(view, index, max_steps=max_steps, step_s=audio_step_s,
                                                                   storage=storage, blocksize=blocksize)
            present[:, column] = lengths[modality] > 0
            continue
        tables[modality] = table = choose_set(view, modality, (encoders or {}).get(modality))
        if modality in sequences:
            features[modality], lengths[modality] = embedding_sequences(view, table, index, max_steps=max_steps, storage=storage,
                                                                        name=modality, blocksize=blocksize)
            present[:, column] = lengths[modality] > 0
        else:
            features[modality] = _vectors(view, table, index, present[:, column], storage=storage, name=modality, blocksize=blocksize)
    pa.default_memory_pool().release_unused()  # hand the partitions' buffers back to the system
    return FeatureSet(
        sample_ids=ids,
        modalities=chosen,
        features=features,
        present=present,
        labels={label: _as_array(samples.column(label)) for label in labels},
        lengths=lengths,
        source=_source(view, tables),
    )


def _aligned_features(view: CacheView, samples: pa.Table, ids: list[str], index: dict[str, int], labels: list[str],
                      modalities: Optional[list[str]], *, max_steps: int, storage: Optional[str], blocksize: Optional[str],
                      aligned_set: Optional[str]) -> FeatureSet:
    """``load_features`` for ``--sequence aligned``: every modality's steps and step masks from one aligned set."""
    from trainer.aligned import aligned_modalities, aligned_sequences, choose_aligned_set

    table = choose_aligned_set(view, aligned_set)
    chosen = aligned_modalities(view, table, modalities)
    features, masks = aligned_sequences(view, table, index, chosen, max_steps=max_steps, storage=storage, blocksize=blocksize)
    present = np.stack([masks[m].any(axis=1) for m in chosen], axis=1) if chosen else np.zeros((len(ids), 0), dtype=bool)
    pa.default_memory_pool().release_unused()
    return FeatureSet(sample_ids=ids, modalities=chosen, features=features, present=present,
                      labels={label: _as_array(samples.column(label)) for label in labels}, lengths=masks,
                      source=_source(view, {m: table for m in chosen}))


def _source(view: CacheView, tables: dict[str, str]) -> dict[str, Any]:
    """What a feature set was read from: the cache, the run whose state it read, and each modality's table and version."""
    return {
        "cache": view.cache,
        "run_id": view.run.run_id if view.run else None,
        "samples_version": view.versions.get("samples"),
        "tables": {modality: {"table": table, "version": view.versions[table]} for modality, table in tables.items()},
    }


def _labelled_samples(view: CacheView, labels: list[str], labels_file: Optional[str]) -> pa.Table:
    """``sample_id`` and ``labels`` of the usable samples (valid manifest row, not failed, every label set), sorted by id."""
    samples_table = view.dataset("samples")
    usable = (pc.field("manifest_ok") == True) & (pc.field("status") != STATUS_FAILED)  # noqa: E712 (an expression)
    if labels_file:
        samples = samples_table.to_table(columns=["sample_id"], filter=usable).join(read_labels_file(labels_file, labels), "sample_id")
    else:
        missing = [label for label in labels if label not in samples_table.schema.names]
        if missing:
            raise ConfigError(f"--label {missing}: not a column of the samples table (columns: {samples_table.schema.names}); "
                              f"or give the labels with --labels-file; {UNLABELLED_HINT}")
        samples = samples_table.to_table(columns=["sample_id", *labels], filter=usable)
    for label in labels:
        samples = samples.filter(pc.is_valid(samples.column(label)))
    return samples.take(pc.sort_indices(samples, [("sample_id", "ascending")]))


def read_labels_file(path: str, labels: list[str]) -> pa.Table:
    """``sample_id`` (from a ``sample_id`` or ``id`` column, as strings) and ``labels`` from a CSV, JSONL or Parquet file.

    Raises:
        ConfigError: an unknown format, a missing column, or a sample id given twice.
    """
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    suffix = path.lower().rsplit(".", 1)[-1]
    if not os.path.isfile(path):
        raise ConfigError(f"--labels-file {path}: no such file")
    if suffix == "csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"sample_id": pa.string(), "id": pa.string()}))
    elif suffix in ("jsonl", "json"):
        table = pajson.read_json(path)
    elif suffix == "parquet":
        table = pq.read_table(path)
    else:
        raise ConfigError(f"--labels-file {path}: use a .csv, .jsonl or .parquet file")
    key = "sample_id" if "sample_id" in table.column_names else "id"
    missing = [column for column in [key, *labels] if column not in table.column_names]
    if missing:
        raise ConfigError(f"--labels-file {path}: no column {missing} (columns: {table.column_names}); ids go in sample_id or id")
    ids = pc.cast(table.column(key), pa.string())
    if pc.count_distinct(ids).as_py() != len(ids):
        raise ConfigError(f"--labels-file {path}: a sample id appears more than once")
    return pa.table({"sample_id": ids, **{label: table.column(label) for label in labels}})


def _as_array(column: pa.ChunkedArray) -> np.ndarray:
    """A label column as numpy: numbers and booleans as they are, strings as a fixed-width ``<U`` array."""
    values = column.to_numpy()
    return values.astype(str) if values.dtype == object else values


def _vectors(view: CacheView, table: str, index: dict[str, int], present: np.ndarray, *, storage: Optional[str], name: str,
             blocksize: Optional[str]) -> np.ndarray:
    """The ``vector`` column of the embedding set ``table`` as ``(n, dim)`` float32 rows aligned with ``index``; marks ``present``.

    Raises:
        ConfigError: a vector is not ``dim`` values long (a damaged table).
    """
    dim = int(description(view, table, "dim"))
    matrix = allocate(storage, name, (len(index), dim))
    for part in read_partitions(view, table, ["sample_id", "vector"], blocksize=blocksize):
        vectors = part.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if len(vectors) != part.num_rows * dim:
            raise ConfigError(f"{view.cache}: {table} holds vectors of other lengths than its {dim} dimensions; the table is damaged, "
                              "rerun mmfeat extract --recompute")
        vectors = vectors.reshape(-1, dim)
        positions = np.array([index.get(sample_id, -1) for sample_id in part.column("sample_id").to_pylist()], dtype=np.int64)
        kept = positions >= 0
        matrix[positions[kept]] = vectors[kept]
        present[positions[kept]] = True
    return matrix


def estimated_bytes(cache: Union[str, CacheView], *, as_of: Optional[str] = None, modalities: Optional[list[str]] = None,
                    encoders: Optional[dict[str, str]] = None, sequences: tuple[str, ...] = (), max_steps: int = 64,
                    aligned_set: Optional[str] = None) -> int:
    """How many bytes ``load_features`` would hold for these options (float32 arrays), from table metadata only."""
    view = open_view(cache, as_of)
    n = row_count(view, "samples")
    total = 0
    if tuple(sequences) == (ALIGNED_SEQUENCES,):
        from trainer.aligned import aligned_modalities, choose_aligned_set

        table = choose_aligned_set(view, aligned_set)
        dims = description(view, table, "dims")
        return sum(n * max_steps * (int(dims[m]) * 4 + 1) for m in aligned_modalities(view, table, modalities))
    for modality in modalities or [m for m in MODALITIES if embedding_sets(view, m)]:
        if modality == "audio" and modality in sequences:
            first = view.dataset("audio").head(1, columns=["mfcc"]).column("mfcc").to_pylist() if view.has("audio") else []
            total += n * max_steps * (len(first[0][0]) if first and first[0] else 1) * 4
            continue
        table = choose_set(view, modality, (encoders or {}).get(modality))
        dim = int(description(view, table, "dim"))
        total += n * (max_steps if modality in sequences and "sequence" in columns(view, table) else 1) * dim * 4
    return total
