"""``mmfeat train`` and ``mmfeat evaluate`` as library functions: cache in, metrics.json and checkpoint out; and
``checkpoint_features``, a saved model with the features it takes (shared with ``trainer.predict``).

``reader`` chooses where the feature arrays live: ``memory``, ``disk``
(memory-mapped files in a scratch folder, deleted afterwards, trained in
chunks of ``chunk_rows``), or ``auto``: ``disk`` when the features would take
more than an eighth of this machine's memory (the memory reader peaks at
about three times the features).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from typing import Any, Iterator, Optional

from schemas.cache import CacheView
from schemas.errors import ConfigError
from schemas.tables import ALIGNED_DIR
from trainer import checkpoint
from trainer.data import FeatureSet, estimated_bytes, load_features, open_view, sets_as_trained
from trainer.names import READERS
from trainer.plots import write_report_plots
from trainer.crossval import cross_validate
from trainer.evaluation import evaluate, modality_weights
from trainer.progress import Progress
from trainer.tasks import infer_task
from trainer.train import Fitted, TrainConfig, fit

logger = logging.getLogger(__name__)

DISK_CHUNK_ROWS = 4096


def memory_budget_bytes() -> int:
    """An eighth of this machine's physical memory (reading into memory peaks at about three times the features)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8


@contextlib.contextmanager
def _features(view: CacheView, config: TrainConfig, *, labels: list[str], modalities: Optional[list[str]], encoders: Optional[dict[str, str]],
              reader: str, scratch: Optional[str], labels_file: Optional[str]) -> Iterator[tuple[FeatureSet, TrainConfig]]:
    """The features for ``config``, in memory or memory-mapped under ``scratch`` (removed on exit), and the config to train with."""
    if reader not in READERS:
        raise ConfigError(f"--reader must be one of {', '.join(READERS)} (got {reader!r})")
    options = dict(modalities=modalities, encoders=encoders, sequences=config.sequences, max_steps=config.max_steps,
                   aligned_set=config.aligned_set)
    if reader == "auto":
        size, budget = estimated_bytes(view, **options), memory_budget_bytes()
        reader = "disk" if size > budget else "memory"
        logger.info("features take about %.1f MiB (budget %.0f MiB): reading them into %s", size / 2**20, budget / 2**20, reader)
    storage = tempfile.mkdtemp(prefix="mmfeat-features-", dir=scratch) if reader == "disk" else None
    try:
        data = load_features(view, labels=labels, **options, audio_step_s=config.audio_step_s, storage=storage, labels_file=labels_file)
        if storage and config.chunk_rows is None:
            config = replace(config, chunk_rows=DISK_CHUNK_ROWS)
        yield data, config
    finally:
        if storage:
            shutil.rmtree(storage, ignore_errors=True)


def train(
    cache: str,
    *,
    labels: list[str],
    config: TrainConfig,
    output: str,
    as_of: Optional[str] = None,
    folds: int = 5,
    modalities: Optional[list[str]] = None,
    encoders: Optional[dict[str, str]] = None,
    task_type: str = "auto",
    init: Optional[str] = None,
    reader: str = "auto",
    scratch: Optional[str] = None,
    labels_file: Optional[str] = None,
    jobs: Optional[int] = None,
) -> dict[str, Any]:
    """Cross-validate (when ``folds`` >= 2, ``jobs`` folds at a time; default one per usable core), then fit on every
    sample and save the checkpoint.

    Writes ``{output}/metrics.json`` (``folds``, ``mean``, ``std``, config, tasks, modalities, and ``cache``: the run
    whose state was read, ``as_of`` or the latest, and each modality's table and version) and the checkpoint.
    Memory-mapped features go to ``scratch`` (default: ``output``). Labels come from the samples table, or ``labels_file``.
    """
    if init:
        config = replace(config, init=init)
    os.makedirs(output, exist_ok=True)
    with _features(open_view(cache, as_of), config, labels=labels, modalities=modalities, encoders=encoders, reader=reader,
                   scratch=scratch or output, labels_file=labels_file) as (data, config):
        tasks = [infer_task(label, data.labels[label], task_type) for label in labels]
        logger.info("training %s on %d samples, modalities %s (sequences %s), tasks %s",
                    config.fusion, len(data), data.modalities, list(data.lengths), labels)
        report: dict[str, Any] = cross_validate(data, tasks, config, folds, jobs=jobs) if folds >= 2 else {}
        with Progress(["final model"], config.epochs, title="final model") as progress:
            fitted = fit(data, tasks, config, on_epoch=progress.callback("final model"))
            progress.finish("final model")
        checkpoint.save(fitted, config, output, data.source)
        report |= {
            "modalities": data.modalities,
            "sequences": list(data.lengths),
            "n_samples": len(data),
            "cache": data.source,
            "final_model": {"metrics_on_training_cache": evaluate(fitted, data), "history": fitted.history},
        }
        weights = modality_weights(fitted, data)
        if weights is not None:
            report["final_model"]["modality_weights"] = weights
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    write_report_plots(report, tasks, output)
    return report


@contextlib.contextmanager
def checkpoint_features(model_dir: str, cache: str, *, labels: Optional[list[str]] = None, as_of: Optional[str] = None,
                        encoders: Optional[dict[str, str]] = None, reader: str = "auto", scratch: Optional[str] = None,
                        labels_file: Optional[str] = None) -> Iterator[tuple[Fitted, FeatureSet]]:
    """A saved fusion model and the features of ``cache`` it takes (memory-mapped ones removed on exit).

    Each modality is read from the embedding set the model was trained on when the cache has it (else as ``train`` chooses;
    ``encoders`` overrides both); a model trained on an aligned set reads that set while the cache has it. The model's
    modalities, sequences and ``max_steps`` decide the arrays. ``labels``: the label columns to read with them (default: the
    model's tasks'; ``[]`` reads every usable sample, labelled or not).

    Raises:
        ConfigError: the features read have other sizes than the model's inputs (or whatever ``load_features`` refuses).
    """
    fitted, config = checkpoint.load(model_dir)
    view = open_view(cache, as_of)
    tables = checkpoint.trained_on(model_dir).get("tables", {})
    aligned = sorted({t["table"] for t in tables.values() if t["table"].startswith(f"{ALIGNED_DIR}/")})
    if aligned and config.aligned_set is None and view.has(aligned[0]):  # the aligned set it was trained on, while the cache has it
        config = replace(config, aligned_set=aligned[0])
    encoders = sets_as_trained(view, tables, encoders)
    labels = [t.label for t in fitted.tasks] if labels is None else labels
    with _features(view, config, labels=labels, modalities=fitted.model.modalities, encoders=encoders,
                   reader=reader, scratch=scratch, labels_file=labels_file) as (data, config):
        expected = {m: int(fitted.standardiser.mean[m].shape[0]) for m in fitted.model.modalities}
        if data.dims() != expected:
            raise ConfigError(f"{model_dir} takes inputs of sizes {expected}, {view.cache} gives {data.dims()} "
                              f"(from {data.source['tables']}); choose the sets it was trained on with --encoder MODALITY=SET")
        fitted.chunk_rows = config.chunk_rows
        yield fitted, data


def evaluate_checkpoint(model_dir: str, cache: str, *, as_of: Optional[str] = None, encoders: Optional[dict[str, str]] = None,
                        reader: str = "auto", scratch: Optional[str] = None, labels_file: Optional[str] = None) -> dict[str, Any]:
    """Metrics of a saved model on (another state of) a cache, per task; features read as ``checkpoint_features`` reads them.

    Raises:
        ConfigError: the features read have other sizes than the model's inputs, or the cache lacks the labels
            (``trainer.predict`` scores unlabelled caches).
    """
    with checkpoint_features(model_dir, cache, as_of=as_of, encoders=encoders, reader=reader, scratch=scratch,
                             labels_file=labels_file) as (fitted, data):
        return evaluate(fitted, data)
