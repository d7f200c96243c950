"""The trainer reads the cache through consistent views: ``--as-of`` gives an earlier run's rows exactly, and
readers without mmfeat (pyarrow, Polars, DuckDB, Dask) pinned at a run's versions read the rows the trainer reads.

One cache, three runs of ``mmfeat extract`` on a corpus that changes between them:

* ``first``: clips 0-3;
* ``second``: clip 1's label flipped, clip 2's video replaced by clip 4's, clip 0's text edited, clip 4 added;
* ``third``: clip 3's label flipped and ``--n-mfcc 20``: every sample is recomputed, the 160-d audio set of the
  earlier runs is left empty and an 80-d one takes its place.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest

from pipelines.sample_corpus import make_sample_corpus
from runners.cli import main
from schemas.cache import CacheView, runs, table_uri
from schemas.errors import ConfigError
from trainer.data import FeatureSet, embedding_sets, load_features

RUNS = ("first", "second", "third")
FLAGS = ["--image-encoder", "builtin:color-hog", "--text-encoder", "none", "--log-level", "WARNING"]


def _write_manifest(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def _flip(row: dict) -> None:
    row["label"] = "positive" if row["label"] == "negative" else "negative"


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """The cache after the three runs, each run's manifest labels, and what the trainer read right after each run."""
    folder = str(tmp_path_factory.mktemp("corpus"))
    rows = [json.loads(line) for line in open(make_sample_corpus(folder, n=5, seed=1), encoding="utf-8")]
    manifest, cache = os.path.join(folder, "runs.jsonl"), str(tmp_path_factory.mktemp("cache") / "cache")
    labels, read = {}, {}
    for run_id in RUNS:
        extra = []
        if run_id == "second":
            _flip(rows[1])
            shutil.copyfile(os.path.join(folder, rows[4]["video"]), os.path.join(folder, rows[2]["video"]))
            with open(os.path.join(folder, rows[0]["text"]), "a", encoding="utf-8") as handle:
                handle.write(" Edited.")
        if run_id == "third":
            _flip(rows[3])
            extra = ["--n-mfcc", "20"]
        current = rows[:4] if run_id == "first" else rows
        _write_manifest(manifest, current)
        assert main(["extract", "--manifest", manifest, "--output", cache, "--run-id", run_id, *FLAGS, *extra]) == 0
        labels[run_id] = {row["id"]: row["label"] for row in current}
        read[run_id] = load_features(cache, labels=["label"])
    return {"cache": cache, "labels": labels, "read": read}


def _assert_same(actual: FeatureSet, expected: FeatureSet) -> None:
    assert actual.sample_ids == expected.sample_ids and actual.modalities == expected.modalities
    np.testing.assert_array_equal(actual.labels["label"], expected.labels["label"])
    np.testing.assert_array_equal(actual.present, expected.present)
    for modality in expected.modalities:
        np.testing.assert_array_equal(actual.features[modality], expected.features[modality])


def test_as_of_reads_each_earlier_run_exactly_as_that_run_left_it(history):
    cache, read, labels = history["cache"], history["read"], history["labels"]
    assert [run.run_id for run in runs(cache)] == list(RUNS)
    for run_id in RUNS:
        then = load_features(cache, labels=["label"], as_of=run_id)
        _assert_same(then, read[run_id])
        assert dict(zip(then.sample_ids, then.labels["label"].tolist())) == labels[run_id]
        assert then.source["run_id"] == run_id and then.present.all()
    first, second, latest = read["first"], read["second"], read["third"]
    assert first.sample_ids == ["clip000", "clip001", "clip002", "clip003"] and len(latest) == 5
    assert first.labels["label"][1] != second.labels["label"][1]
    video = {name: dict(zip(data.sample_ids, data.features["video"])) for name, data in read.items()}
    np.testing.assert_array_equal(video["second"]["clip002"], video["second"]["clip004"])  # the replaced video
    assert not np.array_equal(video["first"]["clip002"], video["second"]["clip002"])
    assert first.features["audio"].shape[1] == 160 and latest.features["audio"].shape[1] == 80


def test_a_set_emptied_by_a_later_run_is_not_chosen_and_an_unknown_run_is_refused(history):
    cache = history["cache"]
    latest, first = CacheView.open(cache), CacheView.open(cache, as_of="first")
    assert len(latest.embedding_tables("audio")) == 2 and len(embedding_sets(latest, "audio")) == 1
    assert embedding_sets(first, "audio") == first.embedding_tables("audio")
    assert embedding_sets(latest, "audio") != embedding_sets(first, "audio")
    with pytest.raises(ConfigError, match="--as-of fourth: no such run .* first, second, third"):
        load_features(cache, labels=["label"], as_of="fourth")


def test_train_and_evaluate_as_of_a_run_and_the_checkpoint_still_evaluates_later(history, tmp_path, capsys):
    cache, model = history["cache"], str(tmp_path / "model")
    assert main(["train", "--cache", cache, "--as-of", "first", "--label", "label", "--fusion", "concat", "--folds", "0",
                 "--epochs", "20", "--output", model]) == 0
    assert "(4 samples)" in capsys.readouterr().out
    with open(os.path.join(model, "metrics.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    first = CacheView.open(cache, as_of="first")
    assert report["n_samples"] == 4 and report["cache"]["run_id"] == "first"
    assert report["cache"]["samples_version"] == first.versions["samples"]
    assert {m: t["table"] for m, t in report["cache"]["tables"].items()} == {m: embedding_sets(first, m)[0] for m in ("video", "audio")}

    assert main(["evaluate", "--model", model, "--cache", cache, "--as-of", "first"]) == 0
    assert json.loads(capsys.readouterr().out) == report["final_model"]["metrics_on_training_cache"]
    # A later state: the five samples of the second run, from the sets the model was trained on ...
    assert main(["evaluate", "--model", model, "--cache", cache, "--as-of", "second"]) == 0
    assert np.sum(json.loads(capsys.readouterr().out)["label"]["confusion_matrix"]) == 5
    # ... and the latest, where its audio set is empty: the 80-d set that replaced it does not fit the model.
    assert main(["evaluate", "--model", model, "--cache", cache]) == 2
    assert "takes inputs of sizes {'video': 108, 'audio': 160}" in capsys.readouterr().err
    assert main(["compare", "--cache", cache, "--as-of", "nope", "--label", "label"]) == 2
    assert "--as-of nope: no such run" in capsys.readouterr().err


def _pinned_versions(cache: str) -> dict[str, dict[str, int]]:
    """Per run, the version of every table, read straight from the ``samples`` commits' metadata with deltalake."""
    from deltalake import DeltaTable

    pinned = {}
    for commit in DeltaTable(table_uri(cache, "samples")).history():
        if "mmfeat.versions" in commit:
            pinned[commit["mmfeat.run_id"]] = {**json.loads(commit["mmfeat.versions"]), "samples": int(commit["version"])}
    return pinned


def _readers(uri: str, version: int, columns: list[str]) -> dict[str, list[dict]]:
    """The rows of one Delta table at ``version``, ``columns`` only, read by pyarrow, Polars, DuckDB and Dask."""
    import dask.dataframe as dd
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    table = DeltaTable(uri, version=version)
    files = table.file_uris()
    rows = {
        "pyarrow": table.to_pyarrow_dataset().to_table(columns=columns).to_pylist(),
        "polars": pl.read_delta(uri, version=version).select(columns).to_dicts(),
        "duckdb": [dict(zip(columns, values)) for values in
                   duckdb.sql(f"select {', '.join(columns)} from read_parquet({files!r}, union_by_name = true)").fetchall()],
        "dask": [{c: row[c] for c in columns} for row in dd.read_parquet(files, columns=columns, dtype_backend="pyarrow")
                 .compute().to_dict("records")],
    }
    return {name: sorted(found, key=lambda row: row["sample_id"]) for name, found in rows.items()}


def _usable(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["sample_id"], r["label"]) for r in rows if r["manifest_ok"] and r["status"] != "failed" and r["label"] is not None]


def test_pyarrow_polars_duckdb_and_dask_pinned_at_a_run_read_the_rows_the_trainer_reads(history):
    from deltalake import DeltaTable

    cache, pinned = history["cache"], _pinned_versions(history["cache"])
    assert {run.run_id: {**run.versions, "samples": run.version} for run in runs(cache)} == pinned
    for run_id, versions in pinned.items():
        trained = load_features(cache, labels=["label"], as_of=run_id)
        expected = list(zip(trained.sample_ids, trained.labels["label"].tolist()))
        samples = _readers(table_uri(cache, "samples"), versions["samples"], ["sample_id", "label", "manifest_ok", "status"])
        for reader, rows in samples.items():
            assert _usable(rows) == expected, (run_id, reader)
        usable = (pc.field("manifest_ok") == True) & (pc.field("status") != "failed")  # noqa: E712 (an expression)
        filtered = DeltaTable(table_uri(cache, "samples"), version=versions["samples"]).to_pyarrow_dataset().to_table(filter=usable)
        assert sorted(filtered.column("sample_id").to_pylist()) == trained.sample_ids  # pushed-down filters see every file
        for modality, source in trained.source["tables"].items():
            assert source["version"] == versions[source["table"]]
            column = trained.modalities.index(modality)
            for reader, rows in _readers(table_uri(cache, source["table"]), source["version"], ["sample_id", "vector"]).items():
                assert [r["sample_id"] for r in rows] == [i for i, present in zip(trained.sample_ids, trained.present[:, column]) if present]
                vectors = np.array([np.asarray(r["vector"], np.float32) for r in rows])
                np.testing.assert_array_equal(vectors, trained.features[modality][trained.present[:, column]], err_msg=f"{run_id} {reader}")


def test_reading_a_table_folder_instead_of_a_pinned_version_would_see_superseded_rows(history):
    import pyarrow.dataset as ds

    cache = history["cache"]
    pinned = CacheView.open(cache).read("samples", ["sample_id"]).column("sample_id").to_pylist()
    folder = ds.dataset(table_uri(cache, "samples"), format="parquet", exclude_invalid_files=True).to_table(columns=["sample_id"])
    assert sorted(pinned) == [f"clip00{i}" for i in range(5)]
    assert folder.num_rows > len(pinned)  # the files of superseded rows are still there until vacuum
