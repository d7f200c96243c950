"""Label columns as training tasks: classification or regression, their targets and their loss."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from schemas.errors import ConfigError


@dataclass
class Task:
    """One label column: ``classification`` (with its ``classes``) or ``regression``; ``weight`` scales its loss.

    The kind (and, for regression, whether scores lie in [-3, 3]) is decided once from the whole
    column, so every fold reports the same metrics.
    """

    label: str
    kind: str
    classes: list[Any] = field(default_factory=list)
    weight: float = 1.0
    sentiment: bool = False  # a regression on scores in [-3, 3]: also report the MMSA sentiment metrics

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    def targets(self, values: np.ndarray) -> np.ndarray:
        """Class indices int64 ``(n,)``, or float32 values ``(n,)``."""
        if self.kind == "classification":
            lookup = {c: i for i, c in enumerate(self.classes)}
            return np.array([lookup[v] for v in values], dtype=np.int64)
        return values.astype(np.float32)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of ``output`` ``(batch, outputs)`` against ``target`` ``(batch,)``: cross-entropy or squared error."""
        if self.kind == "classification":
            return nn.functional.cross_entropy(output, target)
        return nn.functional.mse_loss(output.squeeze(-1), target)


def infer_task(label: str, values: np.ndarray, kind: str = "auto") -> Task:
    """``classification`` for strings, booleans or few integer values; ``regression`` for floats (unless ``kind`` says)."""
    if kind == "auto":
        numeric = values.dtype.kind in "iuf"
        kind = "regression" if numeric and (values.dtype.kind == "f" and len(np.unique(values)) > 10) else "classification"
    if kind == "classification":
        return Task(label, kind, classes=sorted(np.unique(values).tolist(), key=str))
    if kind == "regression":
        return Task(label, kind, sentiment=bool(np.all(np.abs(values.astype(np.float64)) <= 3.0)))
    raise ConfigError(f"--task-type must be auto, classification or regression (got {kind!r})")
