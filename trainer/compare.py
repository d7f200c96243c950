"""Fusion heads against single-modality baselines, under the same cross-validation: one row per model.

Every fold of every model goes into one pool of worker processes (``trainer.folds``), so the cores stay busy
until the last fit; the rows do not depend on ``jobs``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from trainer.crossval import fold_jobs, summarise
from trainer.data import load_features
from trainer.folds import run_fold_jobs
from schemas.errors import ConfigError
from trainer.names import SEQUENCE_FUSIONS
from trainer.tasks import infer_task
from trainer.train import TrainConfig

DEFAULT_FUSIONS = ("attention", "concat", "weighted")


@dataclass(frozen=True)
class ComparisonRow:
    """Mean and std of the main metric of one model (``f1_macro``, or ``pearson_r`` for regression)."""

    model: str
    modalities: str
    metric: str
    mean: float
    std: float


def compare(
    cache: str, *, label: str, fusions: Optional[tuple[str, ...]] = None, folds: int = 5,
    config: Optional[TrainConfig] = None, labels_file: Optional[str] = None, as_of: Optional[str] = None, jobs: Optional[int] = None,
) -> list[ComparisonRow]:
    """Cross-validate each fusion on every modality, then ``concat`` on each modality alone (on the cache as run ``as_of`` left it),
    ``jobs`` fits at a time (default: one per usable core).

    ``config.sequences`` (e.g. ``("aligned",)``) reads modalities as sequences. ``fusions`` default: ``DEFAULT_FUSIONS``, and
    the sequence fusions (``mult``) when every modality is a sequence.

    Raises:
        ConfigError: a sequence fusion asked for while some modality is a pooled vector.
    """
    base = config or TrainConfig()
    data = load_features(cache, labels=[label], labels_file=labels_file, as_of=as_of, sequences=base.sequences, max_steps=base.max_steps,
                         audio_step_s=base.audio_step_s, aligned_set=base.aligned_set)
    all_sequences = bool(data.modalities) and all(m in data.lengths for m in data.modalities)
    if fusions is None:
        fusions = DEFAULT_FUSIONS + (SEQUENCE_FUSIONS if all_sequences else ())
    vectors = [m for m in data.modalities if m not in data.lengths]
    if vectors and any(f in SEQUENCE_FUSIONS for f in fusions):
        raise ConfigError(f"--fusions {','.join(f for f in fusions if f in SEQUENCE_FUSIONS)} takes every modality as a sequence; "
                          f"{vectors} are vectors: add --sequence aligned (or name them in --sequence)")
    task = infer_task(label, data.labels[label])
    metric = "f1_macro" if task.kind == "classification" else "pearson_r"
    runs = [(fusion, fusion, data) for fusion in fusions] + [(f"{m} only", "concat", data.only(m)) for m in data.modalities]
    jobs_per_run = [fold_jobs(subset, [task], replace(base, fusion=fusion), folds, name=name) for name, fusion, subset in runs]
    results = run_fold_jobs(data, [job for run in jobs_per_run for job in run], jobs=jobs, title="compare")
    rows = []
    for (name, _, subset), run_jobs in zip(runs, jobs_per_run):
        per_fold, results = results[: len(run_jobs)], results[len(run_jobs) :]
        summary = summarise(per_fold, [task], run_jobs[0].config)
        model = name if len(subset.modalities) > 1 else f"{subset.modalities[0]} only"
        rows.append(ComparisonRow(model, ",".join(subset.modalities), metric, summary["mean"][metric], summary["std"][metric]))
    return rows


def format_table(rows: list[ComparisonRow]) -> str:
    width = max(len(r.model) for r in rows)
    lines = [f"{'model':<{width}}  {'modalities':<17} {rows[0].metric} (mean ± std over folds)"]
    lines += [f"{r.model:<{width}}  {r.modalities:<17} {r.mean:.3f} ± {r.std:.3f}" for r in rows]
    return "\n".join(lines)
