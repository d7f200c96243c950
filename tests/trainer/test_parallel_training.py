"""Folds in parallel processes give the sequential results; small heads train on one torch thread; --jobs is checked."""
import numpy as np
import pytest
import torch
from torch import nn

from schemas.errors import ConfigError
from trainer.crossval import cross_validate, fold_jobs
from trainer.feature_set import FeatureSet
from trainer.folds import resolve_jobs, run_fold_jobs
from trainer.machine import usable_cores
from trainer.sequences import allocate
from trainer.tasks import infer_task
from trainer.threads import threads_for
from trainer.train import TrainConfig, fit


def _problem(n: int = 48, seed: int = 0, storage=None) -> FeatureSet:
    """Two informative modalities and a noisy one; with ``storage`` the features are memory maps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    features = {}
    for modality, dim, signal in (("video", 6, 1.0), ("audio", 5, 0.5), ("text", 4, 0.0)):
        values = allocate(storage, modality, (n, dim))
        values[:] = rng.standard_normal((n, dim)) + signal * (2 * labels - 1)[:, None]
        features[modality] = values
    return FeatureSet([f"s{i}" for i in range(n)], list(features), features, np.ones((n, 3), bool), {"label": labels})


def test_parallel_folds_give_the_metrics_of_sequential_ones():
    data = _problem()
    task = infer_task("label", data.labels["label"])
    config = TrainConfig(fusion="attention", epochs=12, seed=3)
    sequential = cross_validate(data, [task], config, 3, jobs=1)
    parallel = cross_validate(data, [task], config, 3, jobs=2)
    assert parallel["folds"] == sequential["folds"]
    assert parallel["mean"] == sequential["mean"]


def test_spawned_workers_reopen_memory_maps_and_agree_with_this_process(tmp_path):
    data = _problem(storage=str(tmp_path / "maps"))
    assert isinstance(data.features["video"], np.memmap)
    task = infer_task("label", data.labels["label"])
    jobs = fold_jobs(data, [task], TrainConfig(fusion="concat", epochs=8), 2) + fold_jobs(
        data.only("audio"), [task], TrainConfig(fusion="concat", epochs=8), 2, name="audio only")
    here = run_fold_jobs(data, jobs, jobs=1)
    assert run_fold_jobs(data, jobs, jobs=2, start_method="spawn") == here
    assert len(here) == 4


def test_small_heads_train_on_one_torch_thread_and_the_setting_is_restored():
    data = _problem()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        fit(data, [infer_task("label", data.labels["label"])], TrainConfig(fusion="attention", epochs=3),
            on_epoch=lambda done, loss: seen.append(torch.get_num_threads()))
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_large_heads_get_their_share_of_the_cores():
    large = nn.Linear(4096, 4096)
    assert threads_for(nn.Linear(384, 32), 32) == 1
    assert threads_for(large, 32) == usable_cores()
    assert threads_for(large, 32, jobs=usable_cores()) == 1


def test_jobs_default_to_the_usable_cores_at_most_one_per_fit_and_must_be_positive():
    assert resolve_jobs(None, 100) == usable_cores()
    assert resolve_jobs(8, 3) == 3
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        resolve_jobs(0, 3)
