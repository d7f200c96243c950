"""Sequence inputs: pooling, the GRU/transformer encoders on a problem only order can solve, and reading sequences from a cache."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from schemas.cache import CacheView
from schemas.errors import ConfigError
from schemas.tables import embeddings_schema
from tests.trainer.caches import commit_tables
from trainer.data import FeatureSet
from trainer.heads import FUSIONS, FusionModel
from trainer.names import SEQUENCE_FUSIONS
from trainer.sequences import embedding_sequences, mfcc_sequences, pool_to_steps
from trainer.train import TrainConfig, evaluate, fit, infer_task

MAX_STEPS = 16


def test_pooling_keeps_short_sequences_and_averages_long_ones_over_equal_segments():
    short = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.testing.assert_array_equal(pool_to_steps(short, 8), short)
    long = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(pool_to_steps(long, 4)[:, 0], [0.5, 3.0, 5.5, 8.0])  # segments [0,2) [2,5) [5,7) [7,10)


def _order(n: int, seed: int) -> FeatureSet:
    """label = whether marker A comes before marker B in a noisy sequence of 6..16 steps.

    Both orders hold the same steps, so the mean over time (a pooled vector) carries no information.
    """
    rng = np.random.default_rng(seed)
    steps = np.zeros((n, MAX_STEPS, 4), np.float32)
    lengths = rng.integers(6, MAX_STEPS + 1, n).astype(np.int32)
    label = rng.integers(0, 2, n)
    for row, length in enumerate(lengths):
        steps[row, :length] = 0.3 * rng.standard_normal((length, 4))
        first, second = sorted(rng.choice(length, 2, replace=False))
        a, b = (first, second) if label[row] else (second, first)
        steps[row, a, 0] += 2.0
        steps[row, b, 1] += 2.0
    other = rng.standard_normal((n, 3)).astype(np.float32)
    return FeatureSet([f"s{i}" for i in range(n)], ["video", "text"], {"video": steps, "text": other}, np.ones((n, 2), bool),
                      {"label": label}, lengths={"video": lengths})


def _pooled(data: FeatureSet) -> FeatureSet:
    mask = (np.arange(MAX_STEPS)[None, :] < data.lengths["video"][:, None])[..., None]
    mean = (data.features["video"] * mask).sum(axis=1) / mask.sum(axis=1)
    return FeatureSet(data.sample_ids, data.modalities, {"video": mean.astype(np.float32), "text": data.features["text"]}, data.present, data.labels)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_sequence_encoders_learn_an_order_that_the_pooled_vector_cannot_show(encoder):
    train, test = _order(400, seed=0), _order(200, seed=1)
    task = infer_task("label", train.labels["label"])
    config = TrainConfig(fusion="concat", epochs=120, patience=40, seed=0, sequences=("video",), sequence_encoder=encoder, max_steps=MAX_STEPS)
    assert evaluate(fit(train, [task], config), test)["label"]["f1_macro"] >= 0.9
    pooled = fit(_pooled(train), [task], TrainConfig(fusion="concat", epochs=120, patience=40, seed=0))
    assert evaluate(pooled, _pooled(test))["label"]["f1_macro"] <= 0.65


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f not in SEQUENCE_FUSIONS])  # mult: test_mult.py
@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_a_missing_sequence_is_masked_whatever_it_holds(fusion, encoder):
    model = FusionModel({"audio": 3, "text": 4}, fusion, {"label": 2}, sequences=("audio",), sequence_encoder=encoder, max_steps=5).eval()
    inputs = {"audio": torch.randn(3, 5, 3), "text": torch.randn(3, 4)}
    present = torch.tensor([[True, True], [False, True], [False, False]])
    lengths = {"audio": torch.tensor([5, 0, 0])}
    outputs = model(inputs, present, lengths)
    assert outputs["label"].shape == (3, 2) and torch.isfinite(outputs["label"]).all()
    changed = dict(inputs, audio=inputs["audio"] + 50.0 * (~present[:, :1]).float()[:, :, None])
    torch.testing.assert_close(model(changed, present, lengths)["label"], outputs["label"])


def test_steps_after_a_length_do_not_change_the_output():
    model = FusionModel({"video": 2}, "concat", {"label": 2}, sequences=("video",), sequence_encoder="transformer", max_steps=6).eval()
    steps = torch.randn(1, 6, 2)
    lengths = {"video": torch.tensor([3])}
    padded = steps.clone()
    padded[:, 3:] = 99.0
    torch.testing.assert_close(model({"video": steps}, torch.tensor([[True]]), lengths)["label"],
                               model({"video": padded}, torch.tensor([[True]]), lengths)["label"])


def _write_audio_table(cache, rows) -> CacheView:
    schema = pa.schema([("sample_id", pa.string()), ("source", pa.string()), ("window_index", pa.int32()), ("end_s", pa.float64()),
                        ("frame_times_s", pa.list_(pa.float64())), ("mfcc", pa.list_(pa.list_(pa.float32())))])
    # two files: a sample's windows may sit in different partitions
    commit_tables(str(cache), {"audio": [pa.Table.from_pylist(chunk, schema=schema) for chunk in (rows[:2], rows[2:])]})
    return CacheView.open(str(cache))


def _window(sample_id, source, index, times, values):
    return {"sample_id": sample_id, "source": source, "window_index": index, "end_s": float(times[-1]) + 0.01,
            "frame_times_s": list(times), "mfcc": [[float(v), -float(v)] for v in values]}


def test_mfcc_sequences_average_frames_per_step_prefer_the_audio_file_and_cover_long_clips(tmp_path):
    rows = [
        _window("a", "video", 0, [0.0, 0.05], [100, 100]),           # the video's track: ignored, a has an audio file
        _window("a", "audio", 0, [0.0, 0.05, 0.1, 0.15], [1, 3, 5, 7]),
        _window("a", "audio", 1, [0.2, 0.25], [9, 11]),               # second window, in the other file
        _window("b", "video", 0, np.arange(40) * 0.05, np.arange(40)),  # 2 s, only a sound track; 4 steps max -> 0.5 s steps
    ]
    view = _write_audio_table(tmp_path, rows)
    features, lengths = mfcc_sequences(view, {"a": 0, "b": 1, "c": 2}, max_steps=4, step_s=0.1, storage=None, blocksize="1KiB")
    assert features.shape == (3, 4, 2) and lengths.tolist() == [3, 4, 0]
    np.testing.assert_allclose(features[0, :, 0], [2.0, 6.0, 10.0, 0.0])  # frames [0, 0.1) [0.1, 0.2) [0.2, 0.3)
    np.testing.assert_allclose(features[0, :, 1], [-2.0, -6.0, -10.0, 0.0])
    np.testing.assert_allclose(features[1, :, 0], [4.5, 14.5, 24.5, 34.5])  # ten frames per step of 1.96 s / 4
    assert not features[2].any()


def _embedding_set(cache, rows, *, sequence: bool, run_id: str) -> CacheView:
    table = "embeddings/video/enc-1"
    data = pa.Table.from_pylist(rows, schema=embeddings_schema(sequence=True))
    commit_tables(str(cache), {table: [data if sequence else data.drop(["sequence"])]}, run_id=run_id,
                  descriptions={table: {"dim": 2, "modality": "video", "encoder": "enc"}})
    return CacheView.open(str(cache))


def test_embedding_sequences_are_pooled_to_max_steps_and_a_set_without_them_says_how_to_get_them(tmp_path):
    rows = [{"sample_id": "x", "modality": "video", "encoder": "enc", "encoder_fingerprint": "1", "vector": [0, 0],
             "sequence": [[i, 2 * i] for i in range(6)]},
            {"sample_id": "y", "modality": "video", "encoder": "enc", "encoder_fingerprint": "1", "vector": [0, 0], "sequence": [[1, 1]]}]
    view = _embedding_set(tmp_path / "with", rows, sequence=True, run_id="with")
    features, lengths = embedding_sequences(view, "embeddings/video/enc-1", {"y": 0, "x": 1}, max_steps=3, storage=str(tmp_path / "mm"),
                                            name="video")
    assert isinstance(features, np.memmap) and lengths.tolist() == [1, 3]
    np.testing.assert_allclose(features[1], [[0.5, 1.0], [2.5, 5.0], [4.5, 9.0]])
    np.testing.assert_allclose(features[0], [[1, 1], [0, 0], [0, 0]])
    view = _embedding_set(tmp_path / "without", rows, sequence=False, run_id="without")
    with pytest.raises(ConfigError, match="--sequences video"):
        embedding_sequences(view, "embeddings/video/enc-1", {"x": 0}, max_steps=3, storage=None, name="video")


def test_steps_of_another_width_than_the_set_records_are_refused(tmp_path):
    rows = [{"sample_id": "x", "modality": "video", "encoder": "enc", "encoder_fingerprint": "1", "vector": [0, 0],
             "sequence": [[1, 2], [3, 4, 5]]}]
    view = _embedding_set(tmp_path, rows, sequence=True, run_id="ragged")
    with pytest.raises(ConfigError, match="steps of 2 to 3 values where 2 were expected"):
        embedding_sequences(view, "embeddings/video/enc-1", {"x": 0}, max_steps=3, storage=None, name="video")
