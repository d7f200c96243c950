"""Fusion heads and training on synthetic problems with known answers."""
import numpy as np
import pytest
import torch

from trainer.data import FeatureSet
from trainer.heads import FUSIONS, FusionModel
from trainer.names import SEQUENCE_FUSIONS

VECTOR_FUSIONS = [f for f in FUSIONS if f not in SEQUENCE_FUSIONS]  # mult takes sequences: tests/trainer/test_mult.py
from trainer.crossval import cross_validate
from trainer.train import Task, TrainConfig, evaluate, fit, infer_task


def _xor(n: int, seed: int) -> FeatureSet:
    """label = a XOR b, with a readable only from 'video' and b only from 'audio' (plus a useless 'text')."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    noise = lambda d: 0.3 * rng.standard_normal((n, d))  # noqa: E731
    features = {
        "video": ((2 * a - 1)[:, None] + noise(6)).astype(np.float32),
        "audio": ((2 * b - 1)[:, None] + noise(5)).astype(np.float32),
        "text": noise(4).astype(np.float32),
    }
    return FeatureSet([f"s{i}" for i in range(n)], ["video", "audio", "text"], features, np.ones((n, 3), bool), {"label": a ^ b})


def _xor_f1(fusion: str, modalities=None) -> float:
    train, test = _xor(240, seed=0), _xor(120, seed=1)
    if modalities:
        train, test = train.only(modalities), test.only(modalities)
    task = infer_task("label", train.labels["label"])
    fitted = fit(train, [task], TrainConfig(fusion=fusion, epochs=200, seed=0))
    return evaluate(fitted, test)["label"]["f1_macro"]


@pytest.mark.parametrize("fusion", [f for f in VECTOR_FUSIONS if f != "late"])
def test_every_fusion_learns_an_interaction_no_modality_shows_alone(fusion):
    assert _xor_f1(fusion) >= 0.9


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_a_single_modality_cannot_learn_the_xor(modality):
    assert _xor_f1("concat", modality) <= 0.65


def test_late_fusion_averages_unimodal_predictions_and_so_cannot_learn_an_interaction():
    assert _xor_f1("late") <= 0.7


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_missing_modalities_are_masked_not_dropped(fusion):
    model = FusionModel({"video": 5, "audio": 3, "text": 4}, fusion, {"label": 3, "score": 1}).eval()
    inputs = {"video": torch.randn(4, 5), "audio": torch.randn(4, 3), "text": torch.randn(4, 4)}
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    outputs = model(inputs, present)
    assert outputs["label"].shape == (4, 3) and outputs["score"].shape == (4, 1)
    assert torch.isfinite(outputs["label"]).all()
    # What an absent modality holds does not matter.
    changed = dict(inputs, audio=inputs["audio"] + 100.0 * (~present[:, 1:2]))
    torch.testing.assert_close(model(changed, present)["label"], outputs["label"])


def test_weighted_fusion_reports_weights_over_present_modalities():
    model = FusionModel({"video": 2, "audio": 2}, "weighted", {"label": 2})
    weights = model.fusion.weights(torch.tensor([[True, True], [True, False]]))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert weights[1, 1] == 0


def _regression(n: int, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    video, audio = rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)
    score = video[:, 0] - 2 * audio[:, 1] + 0.1 * rng.standard_normal(n)
    label = (video[:, 1] > 0).astype(int)
    return FeatureSet([f"s{i}" for i in range(n)], ["video", "audio"], {"video": video, "audio": audio}, np.ones((n, 2), bool),
                      {"score": score.astype(np.float32), "label": label})


def test_regression_recovers_a_known_linear_target():
    train, test = _regression(300, 0), _regression(150, 1)
    task = infer_task("score", train.labels["score"])
    assert task.kind == "regression"
    result = evaluate(fit(train, [task], TrainConfig(fusion="concat", seed=0)), test)["score"]
    assert result["pearson_r"] > 0.95 and result["mae"] < 0.5


def test_multi_task_learns_both_labels_at_once():
    train, test = _regression(300, 0), _regression(150, 1)
    tasks = [Task("label", "classification", classes=[0, 1]), Task("score", "regression", weight=0.5)]
    result = evaluate(fit(train, tasks, TrainConfig(fusion="attention", seed=0)), test)
    assert result["label"]["accuracy"] > 0.9 and result["score"]["pearson_r"] > 0.9


def test_seeded_cross_validation_is_reproducible():
    data = _xor(90, seed=3)
    tasks = [infer_task("label", data.labels["label"])]
    first = cross_validate(data, tasks, TrainConfig(fusion="gated", epochs=60, seed=5), folds=3)
    second = cross_validate(data, tasks, TrainConfig(fusion="gated", epochs=60, seed=5), folds=3)
    assert first["folds"] == second["folds"] and first["mean"] == second["mean"]
    assert len(first["folds"]) == 3 and set(first["mean"]) >= {"accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"}


def test_training_progress_is_logged_every_few_seconds_and_at_the_end(caplog):
    """Progress lines come from ``trainer.progress`` every ``LOG_INTERVAL_S`` (not every epoch, as before issue 11), and once at the end."""
    import logging

    data = _xor(60, seed=4)
    with caplog.at_level(logging.INFO, logger="trainer"):
        fit(data, [infer_task("label", data.labels["label"])], TrainConfig(fusion="concat", epochs=30, patience=100))
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.progress"]
    assert lines and lines[-1].startswith("training: concat ran 30 epochs in ") and "last validation loss" in lines[-1]


@pytest.mark.parametrize("fusion", ["weighted", "attention"])
def test_reported_modality_weights_favour_the_modality_that_carries_the_label(fusion):
    from trainer.train import modality_weights

    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 300)
    video = ((2 * label - 1)[:, None] + 0.5 * rng.standard_normal((300, 4))).astype(np.float32)
    noise = rng.standard_normal((300, 4)).astype(np.float32)
    present = np.ones((300, 2), bool)
    data = FeatureSet([f"s{i}" for i in range(300)], ["video", "audio"], {"video": video, "audio": noise}, present, {"label": label})
    fitted = fit(data, [infer_task("label", label)], TrainConfig(fusion=fusion, epochs=150, seed=0))
    weights = modality_weights(fitted, data)
    assert abs(sum(weights.values()) - 1.0) < 1e-5
    assert weights["video"] > 0.55 > 0.45 > weights["audio"], weights  # untrained, both would be about 0.5 (measured: 0.62, 0.61)
    assert modality_weights(fit(data, [infer_task("label", label)], TrainConfig(fusion="concat", epochs=2)), data) is None
