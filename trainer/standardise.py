"""Feature standardisation with statistics from the training rows only, computed chunk by chunk."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from trainer.chunks import iter_chunks
from trainer.feature_set import FeatureSet

STATS_ROWS = 8192  # rows per pass step: bounds the temporaries of the statistics


def valid_rows(data: FeatureSet, column: int) -> np.ndarray:
    """The feature vectors of modality ``column`` that exist: present rows, and for a sequence its valid steps; ``(k, dim)``."""
    modality = data.modalities[column]
    present = data.present[:, column]
    features = data.features[modality] if present.all() else data.features[modality][present]
    if modality not in data.lengths:
        return features
    lengths = data.lengths[modality][present]
    if lengths.ndim == 2:  # a step mask (aligned sets)
        return features[lengths.astype(bool)]
    return features[np.arange(features.shape[1])[None, :] < lengths[:, None]]


def step_mask(data: FeatureSet, modality: str) -> np.ndarray:
    """``(n, max_steps, 1)`` float32: 1 on the valid steps of a sequence modality (``lengths`` ``(n,)`` or a mask ``(n, max_steps)``)."""
    steps, valid = data.features[modality].shape[1], data.lengths[modality]
    if valid.ndim == 2:
        return valid.astype(np.float32)[..., None]
    return (np.arange(steps)[None, :] < valid[:, None]).astype(np.float32)[..., None]


@dataclass
class Standardiser:
    """Per modality: the mean vector and one scale (the RMS distance to it), from present rows of the training fold only.

    One scale per modality rather than one per dimension keeps the geometry of
    an embedding: per-dimension z-scores would blow up near-constant, noisy
    dimensions to the same weight as the informative ones. For a sequence
    modality, every valid step counts as a row.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, data: FeatureSet, index: Optional[np.ndarray] = None, *, chunk_rows: Optional[int] = None) -> "Standardiser":
        """Statistics of the rows ``index`` (default: all), in two passes over chunks of ``chunk_rows`` (at most ``STATS_ROWS``)."""
        index = np.arange(len(data)) if index is None else index
        chunk_rows = min(chunk_rows or STATS_ROWS, STATS_ROWS)
        dims = data.dims()
        sums = {m: np.zeros(dims[m]) for m in data.modalities}
        counts = dict.fromkeys(data.modalities, 0)
        for chunk in iter_chunks(data, index, chunk_rows=chunk_rows):
            for column, modality in enumerate(data.modalities):
                rows = valid_rows(chunk, column)
                sums[modality] += rows.sum(axis=0, dtype=np.float64)
                counts[modality] += len(rows)
        mean = {m: (sums[m] / max(counts[m], 1)).astype(np.float32) for m in data.modalities}
        squares = dict.fromkeys(data.modalities, 0.0)
        for chunk in iter_chunks(data, index, chunk_rows=chunk_rows):
            for column, modality in enumerate(data.modalities):
                squares[modality] += float(((valid_rows(chunk, column) - mean[modality]) ** 2).sum(dtype=np.float64))
        std = {}
        for modality in data.modalities:
            scale = np.sqrt(squares[modality] / counts[modality]) if counts[modality] else 1.0
            std[modality] = np.full_like(mean[modality], max(scale, 1e-6))
        return cls(mean, std)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready statistics (for checkpoints)."""
        return {"mean": {m: v.tolist() for m, v in self.mean.items()}, "std": {m: v.tolist() for m, v in self.std.items()}}

    @classmethod
    def from_json(cls, statistics: dict[str, Any]) -> "Standardiser":
        return cls(
            mean={m: np.asarray(v, np.float32) for m, v in statistics["mean"].items()},
            std={m: np.asarray(v, np.float32) for m, v in statistics["std"].items()},
        )

    def apply(self, data: FeatureSet) -> dict[str, torch.Tensor]:
        """Standardised inputs per modality, zero where absent (and after a sequence's length)."""
        inputs = {}
        for column, modality in enumerate(data.modalities):
            scaled = np.subtract(data.features[modality], self.mean[modality], dtype=np.float32)  # one new array, then in place
            scaled /= self.std[modality]
            keep = data.present[:, column].astype(np.float32).reshape((-1,) + (1,) * (scaled.ndim - 1))
            if modality in data.lengths:
                keep = keep * step_mask(data, modality)
            scaled *= keep
            inputs[modality] = torch.from_numpy(scaled)
        return inputs
