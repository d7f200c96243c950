"""Many fits at once: cross-validation folds (and ``mmfeat compare``'s heads) in parallel worker processes.

A small head trains fastest on one torch thread (``trainer.threads``), so the
cores are used by training several folds at a time, one per process
(``concurrent.futures.ProcessPoolExecutor``; each worker runs single-threaded).
Each fit seeds itself from its config, so a fold's metrics are the same whichever
process trains it and in whatever order: ``jobs=1`` (in this process) and
``jobs=N`` give identical results.

Workers are forked where the platform can (no re-import, the features are
shared copy-on-write), else spawned (the features are pickled once per worker;
memory-mapped ones as their file names, see ``trainer.feature_set``). Workers
report epochs through a queue, at most every ``WORKER_REPORT_S`` seconds, to
the ``trainer.progress.Progress`` of this process.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue as queue_module
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from schemas.errors import ConfigError
from trainer.evaluation import evaluate, flatten_metrics
from trainer.feature_set import FeatureSet
from trainer.progress import EpochCallback, Progress
from trainer.tasks import Task
from trainer.machine import usable_cores
from trainer.threads import single_threaded_process
from trainer.train import TrainConfig, fit

logger = logging.getLogger(__name__)

START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
WORKER_REPORT_S = 0.5
POLL_S = 0.25

Metrics = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class FoldJob:
    """One fit and its test: train ``config`` on rows ``train_index`` of the ``modalities`` of the shared features,
    evaluate on rows ``test_index``. ``name`` is what progress lines call it (``"attention fold 2/5"``)."""

    name: str
    modalities: tuple[str, ...]
    tasks: list[Task]
    config: TrainConfig
    train_index: np.ndarray
    test_index: np.ndarray


def resolve_jobs(jobs: Optional[int], fits: int) -> int:
    """Processes to run ``fits`` fits with: ``jobs`` (default: the usable cores), at most one per fit.

    Raises:
        ConfigError: ``jobs`` < 1.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1 (got {jobs})")
    return max(1, min(jobs or usable_cores(), fits))


def _score(data: FeatureSet, job: FoldJob, on_epoch: EpochCallback, concurrent_fits: int) -> Metrics:
    subset = data if tuple(data.modalities) == job.modalities else data.select(list(job.modalities))
    fitted = fit(subset, job.tasks, job.config, job.train_index, on_epoch=on_epoch, concurrent_fits=concurrent_fits)
    return evaluate(fitted, subset, job.test_index)


_WORKER: dict[str, Any] = {}


def _init_worker(data: FeatureSet, reports: Any, concurrent_fits: int) -> None:
    single_threaded_process()
    reports.cancel_join_thread()  # a worker leaving with reports unread must not wait for them
    _WORKER.update(data=data, reports=reports, concurrent_fits=concurrent_fits)


def _run_in_worker(position: int, job: FoldJob) -> Metrics:
    reports, last = _WORKER["reports"], [0.0]

    def report(done: int, val_loss: float) -> None:
        now = time.monotonic()
        if now - last[0] >= WORKER_REPORT_S:
            last[0] = now
            reports.put((position, done, val_loss))

    return _score(_WORKER["data"], job, report, _WORKER["concurrent_fits"])


def run_fold_jobs(data: FeatureSet, fold_jobs: list[FoldJob], *, jobs: Optional[int] = None, title: str = "cross-validation",
                  start_method: Optional[str] = None) -> list[Metrics]:
    """The test metrics of every job (in the order given), ``jobs`` at a time (default: one per usable core).

    ``start_method``: ``fork`` or ``spawn`` (default ``START_METHOD``).
    """
    processes = resolve_jobs(jobs, len(fold_jobs))
    results: list[Optional[Metrics]] = [None] * len(fold_jobs)
    epochs = max(job.config.epochs for job in fold_jobs)
    with Progress([job.name for job in fold_jobs], epochs, title=title) as progress:
        if processes == 1:
            for position, job in enumerate(fold_jobs):
                results[position] = _score(data, job, progress.callback(job.name), 1)
                _finished(job, results[position], progress)
        else:
            logger.info("%s: %d fits in %d processes of 1 torch thread each", title, len(fold_jobs), processes)
            _run_parallel(data, fold_jobs, processes, start_method or START_METHOD, progress, results)
    return [r for r in results if r is not None]


def _finished(job: FoldJob, metrics: Metrics, progress: Progress) -> None:
    progress.finish(job.name)
    logger.info("%s: %s", job.name, ", ".join(f"{k} {v:.3f}" for k, v in flatten_metrics(metrics, len(job.tasks)).items()))


def _preload() -> None:
    """Import here, once, what each fit imports on creating its optimiser (``torch._dynamo``: seconds), so forked workers
    start with it rather than each importing it."""
    import torch._dynamo  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


def _run_parallel(data: FeatureSet, fold_jobs: list[FoldJob], processes: int, start_method: str, progress: Progress,
                  results: list[Optional[Metrics]]) -> None:
    if start_method == "fork":
        _preload()
    context = multiprocessing.get_context(start_method)
    reports = context.Queue()
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker, initargs=(data, reports, processes))
    try:
        futures: dict[Future, int] = {pool.submit(_run_in_worker, position, job): position for position, job in enumerate(fold_jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            _drain(reports, fold_jobs, progress)
            for future in done:
                position = futures[future]
                results[position] = future.result()
                _finished(fold_jobs[position], results[position], progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _drain(reports, fold_jobs, progress)
        reports.close()


def _drain(reports: Any, fold_jobs: list[FoldJob], progress: Progress) -> None:
    while True:
        try:
            position, done, val_loss = reports.get_nowait()
        except queue_module.Empty:
            return
        progress.update(fold_jobs[position].name, done, val_loss)
