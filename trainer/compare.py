"""Fusion heads against single-modality baselines, under the same cross-validation: one row per model."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from trainer.data import load_features
from trainer.train import TrainConfig, cross_validate, infer_task


@dataclass(frozen=True)
class ComparisonRow:
    """Mean and std of the main metric of one model (``f1_macro``, or ``pearson_r`` for regression)."""

    model: str
    modalities: str
    metric: str
    mean: float
    std: float


def compare(
    cache: str, *, label: str, fusions: tuple[str, ...] = ("attention", "concat", "weighted"), folds: int = 5,
    config: Optional[TrainConfig] = None, labels_file: Optional[str] = None, as_of: Optional[str] = None,
) -> list[ComparisonRow]:
    """Cross-validate each fusion on every modality, then ``concat`` on each modality alone (on the cache as run ``as_of`` left it)."""
    base = config or TrainConfig()
    data = load_features(cache, labels=[label], labels_file=labels_file, as_of=as_of)
    task = infer_task(label, data.labels[label])
    metric = "f1_macro" if task.kind == "classification" else "pearson_r"
    runs = [(fusion, data) for fusion in fusions] + [("concat", data.only(m)) for m in data.modalities]
    rows = []
    for fusion, subset in runs:
        result = cross_validate(subset, [task], replace(base, fusion=fusion), folds)
        name = fusion if len(subset.modalities) > 1 else f"{subset.modalities[0]} only"
        rows.append(ComparisonRow(name, ",".join(subset.modalities), metric, result["mean"][metric], result["std"][metric]))
    return rows


def format_table(rows: list[ComparisonRow]) -> str:
    width = max(len(r.model) for r in rows)
    lines = [f"{'model':<{width}}  {'modalities':<17} {rows[0].metric} (mean ± std over folds)"]
    lines += [f"{r.model:<{width}}  {r.modalities:<17} {r.mean:.3f} ± {r.std:.3f}" for r in rows]
    return "\n".join(lines)
