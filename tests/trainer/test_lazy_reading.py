"""Caches larger than memory: features memory-mapped from dask partitions, training and evaluation in chunks."""
import json
import os

import numpy as np
import pytest
import torch

from runners.cli import main
from tests.memory import peak_anonymous_growth_mb
from trainer.chunks import iter_chunks
from trainer.data import FeatureSet, load_features
from trainer.sequences import allocate
from trainer.train import TrainConfig, evaluate, fit, infer_task


@pytest.fixture(scope="module")
def cache(small_sample_cache) -> str:
    return small_sample_cache


def test_chunks_cover_every_row_once_within_the_bound_and_shuffle_by_blocks():
    data = FeatureSet([f"s{i}" for i in range(1000)], ["video"], {"video": np.arange(1000, dtype=np.float32)[:, None]},
                      np.ones((1000, 1), bool), {"label": np.zeros(1000)})
    index = np.arange(0, 1000, 3)
    seen = [chunk.features["video"][:, 0].astype(int) for chunk in iter_chunks(data, index, chunk_rows=64, generator=torch.Generator().manual_seed(0))]
    assert max(len(rows) for rows in seen) <= 64 and sorted(np.concatenate(seen).tolist()) == index.tolist()
    assert np.concatenate(seen).tolist() != index.tolist()  # blocks come in a random order
    whole = list(iter_chunks(data, index[::-1], chunk_rows=None))
    assert len(whole) == 1 and whole[0].features["video"][:, 0].astype(int).tolist() == index[::-1].tolist()


def _xor_on_disk(n: int, seed: int, storage: str) -> FeatureSet:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    features = {}
    for name, bit, dim in (("video", a, 6), ("audio", b, 5)):
        features[name] = allocate(storage, f"{name}-{seed}", (n, dim))
        features[name][:] = (2 * bit - 1)[:, None] + 0.3 * rng.standard_normal((n, dim))
    return FeatureSet([f"s{i}" for i in range(n)], ["video", "audio"], features, np.ones((n, 2), bool), {"label": a ^ b})


def test_training_in_chunks_on_memory_maps_still_learns_an_interaction(tmp_path):
    train, test = _xor_on_disk(480, 0, str(tmp_path)), _xor_on_disk(160, 1, str(tmp_path))
    assert isinstance(train.features["video"], np.memmap)
    task = infer_task("label", train.labels["label"])
    fitted = fit(train, [task], TrainConfig(fusion="concat", epochs=150, seed=0, chunk_rows=96))
    assert evaluate(fitted, test)["label"]["f1_macro"] >= 0.9


def test_disk_and_memory_readers_give_identical_features_and_metrics(cache, tmp_path):
    memory = load_features(cache, labels=["label"], sequences=("video", "audio", "text"), max_steps=8)
    disk = load_features(cache, labels=["label"], sequences=("video", "audio", "text"), max_steps=8, storage=str(tmp_path / "mm"), blocksize="4KiB")
    for modality in memory.modalities:
        assert isinstance(disk.features[modality], np.memmap)
        np.testing.assert_array_equal(memory.features[modality], disk.features[modality])
        np.testing.assert_array_equal(memory.lengths[modality], disk.lengths[modality])
    assert memory.lengths["video"].max() == 3 and memory.lengths["audio"].max() == 8 and memory.present.all()

    runs = {}
    for reader in ("memory", "disk"):
        output = str(tmp_path / reader)
        assert main(["train", "--cache", cache, "--label", "label", "--fusion", "attention", "--folds", "2", "--epochs", "15",
                     "--sequence", "audio,video", "--reader", reader, "--output", output, "--log-level", "WARNING"]) == 0
        with open(os.path.join(output, "metrics.json"), encoding="utf-8") as handle:
            runs[reader] = json.load(handle)
        assert not [name for name in os.listdir(output) if name.startswith("mmfeat-features-")]  # scratch removed
    assert runs["memory"]["folds"] == runs["disk"]["folds"] and runs["disk"]["sequences"] == ["video", "audio"]


def test_a_sequence_checkpoint_rebuilds_and_evaluate_reproduces_it_from_disk(cache, tmp_path, capsys):
    output = str(tmp_path / "model")
    assert main(["train", "--cache", cache, "--label", "label", "--fusion", "gated", "--folds", "0", "--epochs", "10",
                 "--sequence", "text", "--sequence-encoder", "transformer", "--max-steps", "12", "--output", output]) == 0
    capsys.readouterr()
    with open(os.path.join(output, "metrics.json"), encoding="utf-8") as handle:
        recorded = json.load(handle)["final_model"]["metrics_on_training_cache"]
    assert main(["evaluate", "--model", output, "--cache", cache, "--reader", "disk", "--chunk-rows", "32"]) == 0
    assert json.loads(capsys.readouterr().out) == recorded


def test_bad_sequence_options_fail_before_any_work(cache, tmp_path, capsys):
    assert main(["train", "--cache", cache, "--label", "label", "--sequence", "smell", "--output", str(tmp_path / "a")]) == 2
    assert "['smell']: modalities are video, audio, text" in capsys.readouterr().err
    assert main(["train", "--cache", cache, "--label", "label", "--sequence", "video", "--modalities", "audio", "--output", str(tmp_path / "b")]) == 2
    assert "--sequence ['video']: not among the trained modalities ['audio']" in capsys.readouterr().err
    assert main(["train", "--cache", cache, "--label", "label", "--chunk-rows", "4", "--output", str(tmp_path / "c")]) == 2
    assert "--chunk-rows must be at least --batch-size" in capsys.readouterr().err


def test_memory_mapped_training_holds_far_less_than_the_features(tmp_path):
    """256 MiB of embeddings in Parquet: reading, standardising, one epoch and predicting hold a fraction of that.

    The same steps first run on a small cache, so imports, thread pools and allocator arenas are not counted.
    """
    setup = f"""
        from tests.trainer.caches import write_vector_cache
        from trainer.data import load_features
        from trainer.train import TrainConfig, evaluate, fit, infer_task

        def train_from_disk(folder):
            data = load_features(folder, labels=["label"], storage=folder + "/scratch", blocksize="4MiB")
            fitted = fit(data, [infer_task("label", data.labels["label"])], TrainConfig(fusion="concat", epochs=1, chunk_rows=1024))
            return evaluate(fitted, data)["label"]["accuracy"]

        write_vector_cache({str(tmp_path / "small")!r}, n=4096)
        write_vector_cache({str(tmp_path / "large")!r}, n=65536)
        train_from_disk({str(tmp_path / "small")!r})
    """
    printed, growth = peak_anonymous_growth_mb(setup, f"print(train_from_disk({str(tmp_path / 'large')!r}))")
    assert float(printed) > 0.9  # it trained on the real rows
    assert growth < 128, growth  # the features alone are 256 MiB; in memory they would all be held (measured: 64)


def test_a_dataloader_over_the_cache_yields_the_rows_training_uses(tmp_path):
    from torch.utils.data import DataLoader

    from trainer.standardise import Standardiser
    from trainer.torch_data import FeatureDataset

    data = _xor_on_disk(40, 2, str(tmp_path))
    standardiser = Standardiser.fit(data)
    batches = list(DataLoader(FeatureDataset(data, standardiser, np.arange(10, 30)), batch_size=8))
    assert [len(b["present"]) for b in batches] == [8, 8, 4]
    expected = standardiser.apply(data.subset(np.arange(10, 30)))
    torch.testing.assert_close(torch.cat([b["inputs"]["video"] for b in batches]), expected["video"])
    assert torch.cat([b["labels"]["label"] for b in batches]).tolist() == data.labels["label"][10:30].tolist()


def test_extract_sequences_store_the_vectors_each_pooled_embedding_averages(cache, tmp_path, capsys):
    from schemas.cache import CacheView

    view = CacheView.open(cache)

    def table(name, columns):
        return {r["sample_id"]: r for r in view.read(name, columns).to_pylist()}

    def embedding_set(modality):
        (name,) = view.embedding_tables(modality)
        return table(name, ["sample_id", "vector", "sequence"])

    frames = {}
    for row in view.read("frames", ["sample_id"]).to_pylist():
        frames[row["sample_id"]] = frames.get(row["sample_id"], 0) + 1
    for sample_id, row in embedding_set("video").items():
        sequence = np.array(row["sequence"], np.float32)
        assert len(sequence) == frames[sample_id]
        np.testing.assert_allclose(sequence.mean(axis=0), row["vector"], rtol=1e-5, atol=1e-6)
    tokens = table("text", ["sample_id", "token_ids"])
    for sample_id, row in embedding_set("text").items():
        sequence = np.array(row["sequence"], np.float32)
        assert len(sequence) == len(tokens[sample_id]["token_ids"])  # special tokens included, no padding
        mean = sequence.mean(axis=0)
        np.testing.assert_allclose(mean / np.linalg.norm(mean), row["vector"], rtol=1e-4, atol=1e-5)  # MiniLM normalises

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a short text")
    for flags, message in ((["--sequences", "audio"], "has no per-frame, per-token or per-window vectors"),
                           (["--sequences", "video", "--image-encoder", "none"], "--image-encoder is none")):
        assert main(["extract", "--input", str(corpus), "--output", str(tmp_path / "x"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_predictions_follow_the_order_asked_for_whatever_the_chunks(tmp_path):
    from trainer.train import predict

    data = _xor_on_disk(300, 4, str(tmp_path))
    task = infer_task("label", data.labels["label"])
    fitted = fit(data, [task], TrainConfig(fusion="concat", epochs=5, seed=0))
    shuffled = np.random.default_rng(0).permutation(300)
    whole = predict(fitted, data)["label"]
    fitted.chunk_rows = 32
    np.testing.assert_array_equal(predict(fitted, data, shuffled)["label"], whole[shuffled])


def test_auto_reader_goes_to_disk_when_the_features_exceed_the_memory_budget(cache, tmp_path, monkeypatch, caplog):
    import logging

    from trainer import run
    from trainer.data import estimated_bytes

    full = load_features(cache, labels=["label"], sequences=("video",), max_steps=8)
    expected = sum(24 * int(np.prod(full.features[m].shape[1:])) * 4 for m in full.modalities)  # every sample of the cache, float32
    assert estimated_bytes(cache, sequences=("video",), max_steps=8) == expected
    for budget, reader in ((expected * 2, "memory"), (expected // 2, "disk")):
        monkeypatch.setattr(run, "memory_budget_bytes", lambda budget=budget: budget)
        with caplog.at_level(logging.INFO, logger="trainer.run"):
            run.train(cache, labels=["label"], config=TrainConfig(fusion="concat", epochs=2, sequences=("video",), max_steps=8),
                      output=str(tmp_path / reader), folds=0)
        assert f"reading them into {reader}" in caplog.text
        caplog.clear()
