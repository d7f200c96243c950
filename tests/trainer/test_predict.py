"""mmfeat predict: a trained head's predictions on a cache, labelled or not, as one Parquet file."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runners.cli import main
from tests.trainer.caches import commit_tables, write_vector_cache

EPOCHS = ["--folds", "0", "--epochs", "20"]


@pytest.fixture(scope="module")
def cache(small_sample_cache) -> str:
    return small_sample_cache


@pytest.fixture(scope="module")
def classifier(cache, tmp_path_factory) -> str:
    """An attention head on video, audio and text predicting ``label`` (positive/negative)."""
    model_dir = str(tmp_path_factory.mktemp("classifier") / "model")
    assert main(["train", "--cache", cache, "--label", "label", "--fusion", "attention", *EPOCHS, "--output", model_dir]) == 0
    return model_dir


def _predict(model_dir: str, cache: str, output: str, *extra: str) -> pa.Table:
    assert main(["predict", "--model", model_dir, "--cache", cache, "--output", output, *extra]) == 0
    return pq.read_table(output)


def _trainer_predictions(model_dir: str, cache: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Sample ids and ``trainer.evaluation.predict``'s output on the features the checkpoint takes from ``cache``."""
    from trainer.evaluation import predict
    from trainer.run import checkpoint_features

    with checkpoint_features(model_dir, cache, labels=[]) as (fitted, data):
        return list(data.sample_ids), predict(fitted, data)


def _labels(cache: str, column: str) -> dict[str, object]:
    from schemas.cache import CacheView

    return {r["sample_id"]: r[column] for r in CacheView.open(cache).read("samples", ["sample_id", column]).to_pylist()}


def test_classification_predictions_are_predicts_classes_with_probabilities_and_score_as_evaluate_does(cache, classifier, tmp_path, capsys):
    output = str(tmp_path / "out" / "predictions.parquet")  # a folder that does not exist yet
    table = _predict(classifier, cache, output)
    printed = capsys.readouterr().out

    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("label_probability").type == pa.float32()
    assert table.schema.field("label_probabilities").type == pa.list_(pa.float32())
    assert table.schema.field("modalities_present").type == pa.list_(pa.string())
    classes = json.loads(table.schema.metadata[b"mmfeat.classes"])["label"]
    assert classes == ["negative", "positive"]

    ids, expected = _trainer_predictions(classifier, cache)
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == ids and len(ids) == 24
    assert [r["label"] for r in rows] == [classes[i] for i in expected["label"]]
    probabilities = np.array([r["label_probabilities"] for r in rows])
    assert probabilities.shape == (24, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [classes[i] for i in probabilities.argmax(axis=1)] == [r["label"] for r in rows]
    np.testing.assert_allclose([r["label_probability"] for r in rows], probabilities.max(axis=1), rtol=1e-6)
    assert all(r["modalities_present"] == ["video", "audio", "text"] for r in rows)

    counts = {c: sum(r["label"] == c for r in rows) for c in classes}
    assert f"mmfeat predict: 24 rows -> {output}" in printed
    assert ", ".join(f"{c} {n}" for c, n in counts.items()) in printed

    truth = _labels(cache, "label")
    accuracy = np.mean([r["label"] == truth[r["sample_id"]] for r in rows])
    assert main(["evaluate", "--model", classifier, "--cache", cache]) == 0
    assert json.loads(capsys.readouterr().out)["label"]["accuracy"] == pytest.approx(accuracy)


def test_a_multi_task_model_predicts_each_label_in_its_own_type(cache, tmp_path):
    model_dir = str(tmp_path / "model")
    assert main(["train", "--cache", cache, "--label", "label", "--label", "score", "--fusion", "concat", *EPOCHS, "--output", model_dir]) == 0
    table = _predict(model_dir, cache, str(tmp_path / "p.parquet"), "--reader", "disk")
    assert table.column_names == ["sample_id", "modalities_present", "label", "label_probability", "label_probabilities", "score"]
    assert table.schema.field("score").type == pa.float32() and table.schema.field("label").type == pa.string()
    assert set(table.column("label").to_pylist()) <= {"negative", "positive"}

    ids, expected = _trainer_predictions(model_dir, cache)
    assert table.column("sample_id").to_pylist() == ids
    np.testing.assert_allclose(table.column("score").to_numpy(), expected["score"], rtol=1e-6)
    scores = np.array(list(_labels(cache, "score").values()), dtype=float)
    assert np.all(np.isfinite(table.column("score").to_numpy())) and not np.all(table.column("score").to_numpy() == scores.mean())


def test_a_sequence_model_predicts_from_the_per_frame_vectors(cache, tmp_path):
    model_dir = str(tmp_path / "model")
    assert main(["train", "--cache", cache, "--label", "label", "--sequence", "video", "--modalities", "video,text", "--fusion", "concat",
                 *EPOCHS, "--output", model_dir]) == 0
    table = _predict(model_dir, cache, str(tmp_path / "p.parquet"))
    ids, expected = _trainer_predictions(model_dir, cache)
    classes = json.loads(table.schema.metadata[b"mmfeat.classes"])["label"]
    assert table.column("sample_id").to_pylist() == ids
    assert table.column("label").to_pylist() == [classes[i] for i in expected["label"]]
    assert all(present == ["video", "text"] for present in table.column("modalities_present").to_pylist())


@pytest.fixture(scope="module")
def vector_model(tmp_path_factory) -> str:
    """A concat head trained on a synthetic video-only cache (8 dimensions, integer labels 0/1)."""
    labelled = str(tmp_path_factory.mktemp("labelled") / "cache")
    write_vector_cache(labelled, n=60, dim=8)
    model_dir = str(tmp_path_factory.mktemp("vector") / "model")
    assert main(["train", "--cache", labelled, "--label", "label", "--fusion", "concat", *EPOCHS, "--output", model_dir]) == 0
    return model_dir


def _unlabelled_cache(folder: str) -> str:
    """Samples without a label column: u0..u4 embedded, u5 without any embedding, one failed and one invalid manifest row."""
    rng = np.random.default_rng(1)
    ids = [f"u{i}" for i in range(8)]
    samples = pa.table({"sample_id": ids, "status": ["ok"] * 6 + ["failed", "ok"], "manifest_ok": [True] * 7 + [False]})
    embedded = ids[:5] + ids[6:]
    values = rng.standard_normal((len(embedded), 8)).astype(np.float32)
    values[:, 0] += 4 * np.array([0, 1, 0, 1, 1, 0, 1])
    vectors = pa.table({"sample_id": embedded, "vector": pa.ListArray.from_arrays(pa.array(np.arange(len(embedded) + 1, dtype=np.int32) * 8),
                                                                                   pa.array(values.ravel()))})
    table = "embeddings/video/synthetic-0"
    commit_tables(folder, {"samples": [samples], table: [vectors]},
                  descriptions={table: {"dim": 8, "modality": "video", "encoder": "synthetic", "encoder_fingerprint": "0"}})
    return folder


def test_an_unlabelled_cache_gets_predictions_where_evaluate_points_to_predict(vector_model, tmp_path, capsys):
    unlabelled = _unlabelled_cache(str(tmp_path / "unlabelled"))
    assert main(["evaluate", "--model", vector_model, "--cache", unlabelled]) == 2
    error = capsys.readouterr().err
    assert "--label ['label']: not a column of the samples table" in error and "use mmfeat predict" in error

    table = _predict(vector_model, unlabelled, str(tmp_path / "p.parquet"))
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["u0", "u1", "u2", "u3", "u4", "u5"]  # the failed sample and the invalid manifest row are left out
    assert rows["u5"]["modalities_present"] == [] and rows["u0"]["modalities_present"] == ["video"]
    assert table.schema.field("label").type == pa.int64()  # the classes' own type (the labels were integers)
    assert json.loads(table.schema.metadata[b"mmfeat.classes"]) == {"label": [0, 1]}
    ids, expected = _trainer_predictions(vector_model, unlabelled)
    assert ids == sorted(rows) and [rows[i]["label"] for i in ids] == expected["label"].tolist()
    assert all(abs(sum(r["label_probabilities"]) - 1) < 1e-5 for r in rows.values())


def test_bad_command_lines_fail_before_any_work_and_say_what_to_fix(vector_model, classifier, cache, tmp_path, capsys):
    missing_cache = str(tmp_path / "no-cache")  # reading it would fail differently: each check comes first

    def fails(*argv: str) -> str:
        assert main(["predict", *argv]) == 2
        return capsys.readouterr().err

    output = str(tmp_path / "p.parquet")
    assert "name a Parquet file ending in .parquet" in fails("--model", vector_model, "--cache", missing_cache, "--output", str(tmp_path / "p.csv"))
    (tmp_path / "folder.parquet").mkdir()
    assert "a folder; name a file in it" in fails("--model", vector_model, "--cache", missing_cache, "--output", str(tmp_path / "folder.parquet"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"--model {empty}: no model.json in it" in fails("--model", str(empty), "--cache", missing_cache, "--output", output)
    assert "no such folder" in fails("--model", str(tmp_path / "nothing"), "--cache", missing_cache, "--output", output)
    assert "--encoder must look like" in fails("--model", vector_model, "--cache", missing_cache, "--output", output, "--encoder", "vid")

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "model.json").write_text(json.dumps({"task": "segment"}))
    assert "a 'segment' checkpoint; mmfeat predict handles fusion, generate checkpoints" in fails("--model", str(unknown), "--cache", cache,
                                                                                          "--output", output)
    assert "takes inputs of sizes {'video': 8}" in fails("--model", vector_model, "--cache", cache, "--output", output)
    assert not os.path.exists(output)

    assert main(["predict", "--model", classifier, "--cache", cache, "--output", output]) == 0
    assert "exists; add --overwrite" in fails("--model", classifier, "--cache", missing_cache, "--output", output)
    os.utime(output, (0, 0))
    assert main(["predict", "--model", classifier, "--cache", cache, "--output", output, "--overwrite"]) == 0
    assert os.path.getmtime(output) > 0 and pq.read_table(output).num_rows == 24


def test_predict_help_imports_no_heavy_module():
    from tests.test_startup import _mmfeat

    status, stdout, _, loaded = _mmfeat("predict", "--help")
    assert status == 0 and "usage: mmfeat predict" in stdout and "--overwrite" in stdout
    assert loaded == []
