"""Sequence inputs for the trainer: per-frame or per-token embeddings, and MFCC frames, as padded arrays.

A sequence modality becomes a float32 array ``(n, max_steps, dim)`` (zeros after
each sample's length) and lengths ``(n,)`` (0 where the modality is absent):

* ``video`` / ``text``: the ``sequence`` column of an embedding set (per-frame or
  per-token vectors, written by ``mmfeat extract --sequences``);
* ``audio``: the MFCC frames of the ``audio`` table, averaged over steps of
  ``audio_step_s`` seconds (the manifest's audio file when a sample has one,
  else the video's sound track).

A sequence longer than ``max_steps`` is averaged over ``max_steps`` equal
segments, so the whole clip is seen whatever its length. The arrays come from
``allocate``: in memory, or memory-mapped files under ``storage`` (for caches
larger than memory); tables are read one dask partition at a time.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.cache import CacheView
from schemas.errors import ConfigError
from trainer.cache_reader import columns, description, read_partitions


def allocate(storage: Optional[str], name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A zeroed array: in memory, or a ``.npy`` memory map ``storage/name.npy`` when ``storage`` is set."""
    if storage is None:
        return np.zeros(shape, dtype=dtype)
    os.makedirs(storage, exist_ok=True)
    return np.lib.format.open_memmap(os.path.join(storage, f"{name}.npy"), mode="w+", dtype=dtype, shape=shape)


def pool_to_steps(values: np.ndarray, max_steps: int) -> np.ndarray:
    """``(t, d)`` -> ``(min(t, max_steps), d)``: unchanged when short enough, else means over ``max_steps`` equal segments."""
    if len(values) <= max_steps:
        return values
    bounds = np.linspace(0, len(values), max_steps + 1).astype(np.int64)
    sums = np.add.reduceat(values.astype(np.float64), bounds[:-1], axis=0)
    return (sums / np.diff(bounds)[:, None]).astype(np.float32)


def _rows_of(column: pa.ChunkedArray, width: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """A ``list<list<float>>`` column as its flat ``(total_steps, width)`` values and the row offsets ``(rows + 1,)``.

    ``width``: the number of values per step (default: that of the first step).

    Raises:
        ConfigError: a step has another width (a damaged table).
    """
    lists = column.combine_chunks()
    inner = lists.flatten()
    if len(inner):
        found = pc.min_max(inner.value_lengths()).as_py()
        width = found["min"] if width is None else width
        if found["min"] != width or found["max"] != width:
            raise ConfigError(f"steps of {found['min']} to {found['max']} values where {width} were expected: the table is damaged; "
                              "rerun mmfeat extract --recompute")
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, max(width or 0, 1))
    offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()
    return values, offsets


def embedding_sequences(
    view: CacheView, table: str, index: dict[str, int], *, max_steps: int, storage: Optional[str], name: str,
    blocksize: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``sequence`` column of the embedding set ``table`` in ``view``: ``(n, max_steps, dim)`` and lengths ``(n,)``.

    Raises:
        ConfigError: the set was written without sequences.
    """
    if "sequence" not in columns(view, table):
        modality = description(view, table, "modality")
        raise ConfigError(f"{table} holds pooled vectors only; rerun mmfeat extract with --sequences {modality} to train on sequences")
    dim = int(description(view, table, "dim"))
    features = allocate(storage, name, (len(index), max_steps, dim))
    lengths = np.zeros(len(index), dtype=np.int32)
    for part in read_partitions(view, table, ["sample_id", "sequence"], blocksize=blocksize):
        values, offsets = _rows_of(part.column("sequence"), dim)
        for row, sample_id in enumerate(part.column("sample_id").to_pylist()):
            position = index.get(sample_id)
            if position is not None and offsets[row + 1] > offsets[row]:
                steps = pool_to_steps(values[offsets[row] : offsets[row + 1]], max_steps)
                features[position, : len(steps)] = steps
                lengths[position] = len(steps)
    return features, lengths


def _chosen_audio(view: CacheView, index: dict[str, int], blocksize: Optional[str]) -> dict[str, tuple[str, float]]:
    """Per sample: the source whose frames are used (``audio`` over ``video``) and its duration in seconds."""
    chosen: dict[str, tuple[str, float]] = {}
    for part in read_partitions(view, "audio", ["sample_id", "source", "end_s"], blocksize=blocksize):
        for sample_id, source, end in zip(*(part.column(c).to_pylist() for c in ("sample_id", "source", "end_s"))):
            if sample_id not in index:
                continue
            current = chosen.get(sample_id)
            if current is None or (current[0] != "audio" and source == "audio"):
                chosen[sample_id] = (source, end)
            elif current[0] == source:
                chosen[sample_id] = (source, max(current[1], end))
    return chosen


def mfcc_sequences(
    view: CacheView, index: dict[str, int], *, max_steps: int, step_s: float, storage: Optional[str], blocksize: Optional[str] = None
) -> tuple[np.ndarray, np.ndarray]:
    """MFCC frames of the ``audio`` table of ``view`` averaged per step: ``(n, max_steps, n_mfcc)`` and lengths ``(n,)``.

    A sample's step is ``step_s`` seconds, or its duration / ``max_steps`` when longer.

    Raises:
        ConfigError: the cache has no audio features.
    """
    chosen = _chosen_audio(view, index, blocksize) if view.has("audio") else {}
    if not chosen:
        raise ConfigError(f"{view.cache}: no audio features (the audio table is empty) to train an audio sequence on")
    features: Optional[np.ndarray] = None
    counts = allocate(storage, "audio-counts", (len(index), max_steps), np.int32)
    for part in read_partitions(view, "audio", ["sample_id", "source", "frame_times_s", "mfcc"], blocksize=blocksize):
        mfcc, offsets = _rows_of(part.column("mfcc"))
        times = part.column("frame_times_s").combine_chunks().flatten().to_numpy()
        if features is None:
            features = allocate(storage, "audio", (len(index), max_steps, mfcc.shape[1]))
        for row, (sample_id, source) in enumerate(zip(part.column("sample_id").to_pylist(), part.column("source").to_pylist())):
            if chosen.get(sample_id, ("",))[0] != source:
                continue
            position, (_, duration) = index[sample_id], chosen[sample_id]
            step = max(step_s, duration / max_steps)
            frames = slice(offsets[row], offsets[row + 1])
            steps = np.minimum((times[frames] / step).astype(np.int64), max_steps - 1)
            np.add.at(features[position], steps, mfcc[frames])
            counts[position] += np.bincount(steps, minlength=max_steps).astype(np.int32)
    lengths = np.zeros(len(index), dtype=np.int32)
    for position in range(len(index)):
        filled = np.flatnonzero(counts[position])
        if len(filled):
            features[position] /= np.maximum(counts[position], 1)[:, None]
            lengths[position] = filled[-1] + 1
    return features, lengths

