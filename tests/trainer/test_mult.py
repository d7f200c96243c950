"""``--fusion mult`` on a tiny hand-built aligned set: it learns, its outputs have the right shape, masked steps do not
matter, and a step mask reaches the sequence encoders too."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.feature_set import FeatureSet
from trainer.heads import FusionModel
from trainer.tasks import infer_task
from trainer.train import TrainConfig, fit, predict

STEPS = 6


def _aligned_set(n: int = 48, seed: int = 0) -> FeatureSet:
    """Three modalities on one time axis with step masks; the label is whether the text step at an audio peak is positive.

    Audio has a peak at one random step; the label is the sign of text's first value at that step (text is masked at
    random other steps, never at the peak), so a model has to line the two up across time.
    """
    rng = np.random.default_rng(seed)
    audio, text, video = rng.normal(0, 0.3, (n, STEPS, 4)), rng.normal(0, 0.3, (n, STEPS, 3)), rng.normal(0, 1, (n, STEPS, 2))
    peaks, signs = rng.integers(0, STEPS, n), rng.choice([-1.0, 1.0], n)
    audio[np.arange(n), peaks, 0] = 3.0
    text[np.arange(n), peaks, 0] = 2.0 * signs
    masks = {m: rng.random((n, STEPS)) > 0.3 for m in ("audio", "text", "video")}
    masks["audio"][np.arange(n), peaks] = masks["text"][np.arange(n), peaks] = True
    masks["video"][: n // 6] = False  # some samples have no video at all
    features = {"audio": audio, "text": text, "video": video}
    for m, mask in masks.items():
        features[m] = (features[m] * mask[..., None]).astype(np.float32)
    present = np.stack([masks[m].any(axis=1) for m in ("audio", "text", "video")], axis=1)
    return FeatureSet([f"s{i:03d}" for i in range(n)], ["audio", "text", "video"], features, present,
                      {"label": np.where(signs > 0, "positive", "negative")}, lengths=masks)


def test_mult_learns_an_aligned_set_and_predicts_one_row_per_sample():
    data = _aligned_set()
    task = infer_task("label", data.labels["label"])
    config = TrainConfig(fusion="mult", sequences=("aligned",), max_steps=STEPS, epochs=60, patience=60, learning_rate=3e-3,
                         validation_fraction=0.25)
    fitted = fit(data, [task], config)
    losses = [h["train_loss"] for h in fitted.history]
    assert losses[-1] < 0.7 * losses[0]
    assert fitted.model.mult is not None and len(fitted.model.projections) == 0
    predictions = predict(fitted, data)
    assert next(iter(predictions.values())).shape[0] == len(data)


def test_masked_steps_do_not_change_the_output():
    torch.manual_seed(0)
    data = _aligned_set(n=8, seed=1)
    model = FusionModel(data.dims(), "mult", {"label": 2}, sequences=tuple(data.modalities), max_steps=STEPS).eval()
    inputs = {m: torch.from_numpy(data.features[m]) for m in data.modalities}
    masks = {m: torch.from_numpy(data.lengths[m]) for m in data.modalities}
    present = torch.from_numpy(data.present)
    before = model(inputs, present, masks)["label"]
    noisy = {m: torch.where(masks[m].unsqueeze(-1), x, torch.randn_like(x) * 100) for m, x in inputs.items()}
    after = model(noisy, present, masks)["label"]
    assert before.shape == (8, 2)
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    changed = {**inputs, "text": inputs["text"] + masks["text"].unsqueeze(-1) * 1.0}  # a valid step does count
    assert not torch.allclose(before, model(changed, present, masks)["label"])


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_sequence_encoders_ignore_masked_steps(encoder):
    torch.manual_seed(0)
    data = _aligned_set(n=8, seed=2)
    model = FusionModel(data.dims(), "concat", {"label": 2}, sequences=tuple(data.modalities), sequence_encoder=encoder,
                        max_steps=STEPS).eval()
    inputs = {m: torch.from_numpy(data.features[m]) for m in data.modalities}
    masks = {m: torch.from_numpy(data.lengths[m]) for m in data.modalities}
    present = torch.from_numpy(data.present)
    noisy = {m: torch.where(masks[m].unsqueeze(-1), x, torch.randn_like(x) * 100) for m, x in inputs.items()}
    torch.testing.assert_close(model(inputs, present, masks)["label"], model(noisy, present, masks)["label"], rtol=1e-4, atol=1e-5)


def test_mult_needs_every_modality_as_a_sequence():
    with pytest.raises(ValueError, match="every modality as a sequence"):
        FusionModel({"audio": 4, "text": 3}, "mult", {"label": 2}, sequences=("audio",))
