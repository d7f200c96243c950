"""``--sequence aligned`` helpers: pooling long aligned sets over valid steps, statistics over valid steps only."""
from __future__ import annotations

import numpy as np
import pytest

from schemas.errors import ConfigError
from trainer.aligned import pool_masked
from trainer.feature_set import FeatureSet
from trainer.standardise import Standardiser
from trainer.train import TrainConfig


def test_long_sets_are_averaged_over_their_valid_steps():
    values = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    mask = np.array([True, False, True, True, False, False, True, False])
    pooled, kept = pool_masked(values, mask, 4)
    assert kept.tolist() == [True, True, False, True]
    np.testing.assert_allclose(pooled[:, 0], [0.0, 2.5, 0.0, 6.0])
    same, same_mask = pool_masked(values[:3], mask[:3], 4)
    assert same is values[:3] or np.array_equal(same, values[:3])
    assert same_mask.tolist() == [True, False, True]


def test_standardisation_counts_valid_steps_only():
    features = np.zeros((2, 3, 1), np.float32)
    features[:, :, 0] = [[1.0, 100.0, 3.0], [5.0, 7.0, -50.0]]
    masks = np.array([[True, False, True], [True, True, False]])
    data = FeatureSet(["a", "b"], ["audio"], {"audio": features}, np.ones((2, 1), bool), {"label": np.array(["x", "y"])},
                      lengths={"audio": masks})
    standardiser = Standardiser.fit(data)
    np.testing.assert_allclose(standardiser.mean["audio"], [4.0])
    applied = standardiser.apply(data)["audio"].numpy()
    assert applied[0, 1, 0] == 0 and applied[1, 2, 0] == 0


def test_mult_and_aligned_options_fail_before_any_work():
    with pytest.raises(ConfigError, match="--fusion mult takes every modality as a sequence"):
        TrainConfig(fusion="mult")
    with pytest.raises(ConfigError, match="--aligned-set words needs --sequence aligned"):
        TrainConfig(aligned_set="words")
    with pytest.raises(ConfigError, match="or be aligned alone"):
        TrainConfig(sequences=("aligned", "audio"))
