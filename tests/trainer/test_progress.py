"""Training a person can watch: periodic progress log lines by default, a bar on a terminal, an honest time left."""
import io
import logging

import numpy as np

from trainer import progress as progress_module
from trainer.crossval import cross_validate
from trainer.feature_set import FeatureSet
from trainer.progress import Progress, format_seconds
from trainer.tasks import infer_task
from trainer.train import TrainConfig, fit


def _data(n: int = 40) -> FeatureSet:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    features = {"video": (rng.standard_normal((n, 4)) + labels[:, None]).astype(np.float32), "text": rng.standard_normal((n, 3)).astype(np.float32)}
    return FeatureSet([f"s{i}" for i in range(n)], list(features), features, np.ones((n, 2), bool), {"label": labels})


def test_cross_validation_logs_progress_at_info_every_interval_and_when_done(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    data = _data()
    with caplog.at_level(logging.INFO):
        cross_validate(data, [infer_task("label", data.labels["label"])], TrainConfig(fusion="concat", epochs=4), 2, jobs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.progress"]
    assert any("concat fold 2/2 epoch 3/4, validation loss" in line and "elapsed, at most" in line and "left" in line for line in lines), lines
    assert lines[-1].startswith("cross-validation: 2/2 fits done")
    assert any(r.name == "trainer.folds" and r.getMessage().startswith("concat fold 1/2: accuracy") for r in caplog.records)


def test_default_interval_gives_a_few_lines_not_one_per_epoch(caplog):
    data = _data()
    with caplog.at_level(logging.INFO):
        fit(data, [infer_task("label", data.labels["label"])], TrainConfig(fusion="concat", epochs=40, patience=40))
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.progress"]
    assert 1 <= len(lines) < 10, lines
    assert lines[-1].startswith("training: ")


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO), Progress(["a", "b"], 10, title="compare", bar=True, stream=stream) as progress:
        progress.update("a", 4, 0.5)
        progress.finish("a")
        progress.update("b", 10, 0.25)
        progress.finish("b")
    assert "compare" in stream.getvalue() and "epoch" in stream.getvalue()
    assert not [r for r in caplog.records if r.name == "trainer.progress"]


def test_time_left_counts_the_epochs_a_fit_that_stopped_early_gives_back(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(["a", "b"], 100, title="t", bar=False)
    progress.update("a", 10, 1.0)  # the rate is measured from here
    now[0] += 10.0
    progress.update("a", 20, 1.0)  # 10 epochs in 10 s
    assert progress.time_left_s() == 180.0  # a has 80 epochs left, b 100
    progress.finish("a")  # stopped early at 20
    assert progress.time_left_s() == 100.0
    assert format_seconds(100.0) == "1m40s" and format_seconds(9.6) == "10s"
