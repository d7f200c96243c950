"""The space an index's vectors live in: a modality's raw embeddings normalised, or projected by a pretrain folder.

With a ``mmfeat pretrain`` folder, a modality's vectors are standardised with its
statistics and passed through its projection (``trainer.pretrain.Projections``,
unit-norm ``hidden``-d outputs), so vectors of every modality it projects share one space.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from schemas.errors import ConfigError
from trainer.ann import normalise
from trainer.index_store import file_hash


def space_hash(space: str) -> Optional[str]:
    """A hash of a pretrain folder's weights and statistics (``None`` when the folder is gone)."""
    from trainer.pretrain import CONFIG, WEIGHTS

    paths = [os.path.join(space, WEIGHTS), os.path.join(space, CONFIG)]
    return file_hash(*paths) if all(map(os.path.exists, paths)) else None


class Encoder:
    """Maps a modality's raw vectors ``(n, dim)`` to the index space ``(n, out_dim)`` float32, unit rows."""

    def __init__(self, space: Optional[str], modality: str, dim: int) -> None:
        self.space, self.modality, self.dim, self.model = space, modality, dim, None
        self.out_dim, self.hash = dim, None
        if space:
            from trainer.pretrain import CONFIG, load

            if not os.path.exists(os.path.join(space, CONFIG)):
                raise ConfigError(f"--space {space}: not a mmfeat pretrain folder (no {CONFIG})")
            self.model, self.standardiser, config = load(space)
            if modality not in self.standardiser.mean:
                raise ConfigError(f"--space {space} has no {modality} projection (it has {sorted(self.standardiser.mean)})")
            if self.standardiser.mean[modality].shape[0] != dim:
                raise ConfigError(f"--space {space}: its {modality} projection takes {self.standardiser.mean[modality].shape[0]}-d "
                                  f"vectors, the table holds {dim}-d ones")
            self.out_dim, self.hash = config.hidden, space_hash(space)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        if self.model is None:
            return normalise(vectors)
        import torch

        scaled = (np.asarray(vectors, np.float32) - self.standardiser.mean[self.modality]) / self.standardiser.std[self.modality]
        with torch.no_grad():
            return self.model({self.modality: torch.from_numpy(scaled.astype(np.float32))})[self.modality].numpy()


def encode_queries(vectors: np.ndarray, modality: str, space: Optional[str] = None) -> np.ndarray:
    """Raw ``modality`` vectors ``(q, dim)`` as queries of an index built with ``space`` (``None``: just normalised)."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    return Encoder(os.path.abspath(space) if space else None, modality, vectors.shape[1])(vectors)
