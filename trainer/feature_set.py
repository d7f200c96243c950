"""``FeatureSet``: the aligned arrays the trainer fits on (features per modality, presence mask, labels).

Its own module, importing numpy only, so processes that only train (``trainer.folds`` workers) need not import
dask or pyarrow. A ``FeatureSet`` whose arrays are memory maps pickles as the maps' file names, not their
contents (see ``FeatureSet.__reduce__``): a worker process reopens the same files read-only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


def _portable(array: np.ndarray) -> Any:
    """``array``, or for a memory map of a whole ``.npy``/raw file, what reopens it: ``(filename, offset, dtype, shape)``."""
    if isinstance(array, np.memmap) and getattr(array, "filename", None) and array.base is not None and array.flags.c_contiguous:
        return ("memmap", array.filename, int(array.offset), array.dtype.str, tuple(array.shape))
    return array


def _reopen(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 5 and value[0] == "memmap":
        _, filename, offset, dtype, shape = value
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return value


def _rebuild(values: dict[str, Any]) -> "FeatureSet":
    """The ``FeatureSet`` that ``FeatureSet.__reduce__`` took apart (memory maps reopened read-only)."""
    values["features"] = {m: _reopen(f) for m, f in values["features"].items()}
    return FeatureSet(**values)


@dataclass
class FeatureSet:
    """Aligned training data.

    Attributes:
        sample_ids: ``(n,)``.
        modalities: modality names, the column order of ``present``.
        features: per modality, float32 ``(n, dim)``, or ``(n, max_steps, dim)`` for a sequence
            modality (zeros where absent and after each length); numpy arrays or memory maps.
        present: bool ``(n, n_modalities)``.
        labels: per label column, ``(n,)`` values (str, int or float).
        lengths: per sequence modality, int32 ``(n,)`` steps (0 where absent), or for an aligned set
            (``trainer.aligned``) a bool step mask ``(n, max_steps)`` (any step may lack the modality).
        source: what was read: ``cache``, ``run_id`` and ``samples_version`` of the state read, and per modality
            the ``table`` and its ``version`` (empty for feature sets not read from a cache).
    """

    sample_ids: list[str]
    modalities: list[str]
    features: dict[str, np.ndarray]
    present: np.ndarray
    labels: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, index: np.ndarray) -> "FeatureSet":
        """The rows ``index``: a view when they are a contiguous run (no copy), else a copy in memory (from memory maps too)."""
        index = np.asarray(index, dtype=np.int64)
        contiguous = len(index) > 0 and index[-1] - index[0] == len(index) - 1 and bool(np.all(np.diff(index) == 1))
        rows = slice(int(index[0]), int(index[-1]) + 1) if contiguous else index
        return FeatureSet(
            sample_ids=[self.sample_ids[i] for i in index],
            modalities=self.modalities,
            features={m: np.asarray(f[rows]) for m, f in self.features.items()},
            present=self.present[rows],
            labels={k: v[rows] for k, v in self.labels.items()},
            lengths={m: v[rows] for m, v in self.lengths.items()},
            source=self.source,
        )

    def only(self, modality: str) -> "FeatureSet":
        """The same samples with one modality (a unimodal baseline)."""
        return self.select([modality])

    def select(self, modalities: list[str]) -> "FeatureSet":
        """The same samples with the ``modalities`` (in that order); no copy of the feature arrays."""
        columns = [self.modalities.index(m) for m in modalities]
        return FeatureSet(self.sample_ids, list(modalities), {m: self.features[m] for m in modalities}, self.present[:, columns],
                          self.labels, {m: v for m, v in self.lengths.items() if m in modalities}, self.source)

    def dims(self) -> dict[str, int]:
        """Input size per modality (the last axis)."""
        return {m: int(self.features[m].shape[-1]) for m in self.modalities}

    def __reduce__(self) -> tuple:
        """Pickle memory-mapped features as their files (a worker process reopens them) instead of copying them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["features"] = {m: _portable(f) for m, f in self.features.items()}
        return (_rebuild, (values,))
