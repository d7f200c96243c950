"""Rows of a ``FeatureSet`` as model-ready tensors (standardised once), and the fitted model that predicts from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from trainer.chunks import iter_chunks
from trainer.feature_set import FeatureSet
from trainer.heads import FusionModel
from trainer.standardise import Standardiser
from trainer.tasks import Task


@dataclass
class Fitted:
    """A trained model with everything needed to predict on new data."""

    model: FusionModel
    standardiser: Standardiser
    tasks: list[Task]
    history: list[dict[str, float]]
    chunk_rows: Optional[int] = None


@dataclass
class ModelTensors:
    """Rows ready for the model, built once: standardised inputs per modality (``(n, dim)`` or ``(n, steps, dim)``
    float32), presence ``(n, M)`` bool, sequence lengths ``(n,)`` and targets ``(n,)`` per task."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    lengths: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    @classmethod
    def of(cls, chunk: FeatureSet, standardiser: Standardiser, tasks: list[Task]) -> "ModelTensors":
        return cls(standardiser.apply(chunk), torch.from_numpy(np.ascontiguousarray(chunk.present)),
                   {m: torch.from_numpy(np.ascontiguousarray(v)) for m, v in chunk.lengths.items()},
                   {t.label: torch.from_numpy(t.targets(chunk.labels[t.label])) for t in tasks})

    def __len__(self) -> int:
        return len(self.present)

    def loss(self, model: FusionModel, tasks: list[Task], index: Any = slice(None), present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weighted task loss on rows ``index``; a given ``present`` overrides the mask and zeroes the inputs it drops
        (modality dropout; absent modalities are already zero)."""
        inputs = {m: x[index] for m, x in self.inputs.items()}
        if present is None:
            present = self.present[index]
        else:
            inputs = {m: x * present[:, i].reshape((-1,) + (1,) * (x.ndim - 1)) for i, (m, x) in enumerate(inputs.items())}
        outputs = model(inputs, present, {m: v[index] for m, v in self.lengths.items()})
        losses = [task.loss(outputs[task.label], self.targets[task.label][index]) for task in tasks]
        weighted = [loss if task.weight == 1.0 else task.weight * loss for task, loss in zip(tasks, losses)]
        return weighted[0] if len(weighted) == 1 else torch.stack(weighted).sum()


def model_chunks(data: FeatureSet, index: np.ndarray, standardiser: Standardiser, tasks: list[Task], *, chunk_rows: Optional[int],
                 generator: Optional[torch.Generator] = None) -> Iterator[ModelTensors]:
    """The rows ``index`` as model-ready chunks (see ``trainer.chunks.iter_chunks``)."""
    for chunk in iter_chunks(data, index, chunk_rows=chunk_rows, generator=generator):
        yield ModelTensors.of(chunk, standardiser, tasks)
