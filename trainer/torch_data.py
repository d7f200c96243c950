"""The cache as a PyTorch ``Dataset``, for users who train with their own loop and ``DataLoader``.

``mmfeat train`` batches whole in-memory chunks itself (faster for small heads);
this exposes the same standardised rows one at a time, so ``DataLoader``
(shuffling, workers, default collation) works on memory-mapped caches too.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.feature_set import FeatureSet
from trainer.standardise import Standardiser


class FeatureDataset(Dataset):
    """Row ``i`` of ``data`` as ``{"inputs": {modality: (dim,) or (steps, dim)}, "present": (M,), "lengths": {...}, "labels": {...}}``.

    Args:
        data: the features (arrays or memory maps: a row is read when asked for).
        standardiser: statistics to apply (fit them on the training rows, ``Standardiser.fit(data, train_index)``).
        index: the rows to expose (default: all).
    """

    def __init__(self, data: FeatureSet, standardiser: Standardiser, index: Optional[np.ndarray] = None) -> None:
        self.data = data
        self.standardiser = standardiser
        self.index = np.arange(len(data)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> dict:
        row = self.data.subset(self.index[position : position + 1])
        inputs = {m: x[0] for m, x in self.standardiser.apply(row).items()}
        return {
            "inputs": inputs,
            "present": torch.from_numpy(row.present[0]),
            "lengths": {m: torch.from_numpy(v[0]) if v.ndim == 2 else int(v[0]) for m, v in row.lengths.items()},
            "labels": {k: v[0].item() if hasattr(v[0], "item") else v[0] for k, v in row.labels.items()},
        }
