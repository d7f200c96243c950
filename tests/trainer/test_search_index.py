"""Search indexes over a cache's embedding sets: exact on small caches, incremental refresh, spaces, refusals."""
from __future__ import annotations

import concurrent.futures
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from schemas.cache import RunCommit, commit_run, compact, new_attempt, vacuum, write_data_file
from schemas.errors import ConfigError
from trainer.feature_set import FeatureSet
from trainer.pretrain import PretrainConfig, pretrain, save
from trainer.search_index import build_index, encode_queries, list_indexes, open_index, refresh_index

DIM = 16
TABLE = "embeddings/video/synthetic-0"
DESCRIPTION = {"dim": DIM, "modality": "video", "encoder": "synthetic", "encoder_fingerprint": "0"}


def vectors_table(ids: list[str], values: np.ndarray) -> pa.Table:
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)),
                                      pa.array(values.astype(np.float32).ravel()))
    return pa.table({"sample_id": ids, "vector": column})


def commit(cache: str, run_id: str, ids: list[str], values: np.ndarray, *, failed: frozenset = frozenset(),
           superseded: frozenset = frozenset(), overwrite: bool = False, rows_per_file: int = 50,
           bad_manifest: frozenset = frozenset(), samples_only: bool = False) -> None:
    """Commit ``ids`` (samples, ``failed`` ones failed, ``bad_manifest`` ones with an invalid manifest row) and their
    vectors (none with ``samples_only``), in files of ``rows_per_file`` rows."""
    attempt = new_attempt(run_id)
    samples = pa.table({"sample_id": ids, "status": ["failed" if i in failed else "ok" for i in ids],
                        "manifest_ok": [i not in bad_manifest for i in ids]})
    parts = {"samples": [samples], TABLE: [vectors_table(ids[s:s + rows_per_file], values[s:s + rows_per_file])
                                           for s in range(0, len(ids), rows_per_file)]}
    if samples_only:
        del parts[TABLE]
    files = [write_data_file(cache, table, f"{attempt}-part-{n:05d}.parquet", data)
             for table, tables in parts.items() for n, data in enumerate(tables)]
    commit_run(cache, RunCommit(run_id=run_id, attempt=attempt, files=files, schemas={t: d[0].schema for t, d in parts.items()},
                                descriptions={TABLE: DESCRIPTION}, superseded=superseded, overwrite=overwrite))


def exact(ids: list[str], values: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    return [[ids[i] for i in np.argsort(-row)[:k]] for row in scores]


def found_ids(results: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[sample_id for sample_id, _ in row] for row in results]


@pytest.fixture()
def first(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"s{i:04d}" for i in range(200)]
    values = rng.standard_normal((200, DIM)).astype(np.float32)
    cache = str(tmp_path / "cache")
    commit(cache, "run-1", ids, values, failed=frozenset({"s0003", "s0100"}))
    return cache, ids, values


def test_results_equal_exact_search_and_a_sample_finds_itself(first):
    cache, ids, values = first
    info = build_index(cache, table="video", name="v")
    assert (info.table, info.count, info.dim, info.library, info.run_id) == (TABLE, 198, DIM, "faiss-ivf", "run-1")
    index = open_index(cache, "v")
    usable = [i for i in ids if i not in ("s0003", "s0100")]
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    results = index.search(queries, 5)
    assert found_ids(results) == exact(usable, values[[ids.index(i) for i in usable]], queries, 5)
    assert all(a[1] >= b[1] for row in results for a, b in zip(row, row[1:]))
    own = index.search(index.vector_of("s0042"), 3)[0]
    assert own[0][0] == "s0042" and own[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [i.name for i in list_indexes(cache)] == ["v"]


def test_failed_samples_are_not_searchable(first):
    cache, ids, values = first
    build_index(cache, table=TABLE, name="v")
    index = open_index(cache, "v")
    hits = index.search(values[[3, 100]], 198)
    assert not {"s0003", "s0100"} & {sample_id for row in hits for sample_id, _ in row}
    with pytest.raises(ConfigError, match="not searchable"):
        index.vector_of("s0003")


def test_refresh_adds_and_removes_incrementally_and_matches_a_fresh_build(first):
    cache, ids, values = first
    build_index(cache, table=TABLE, name="v")
    rng = np.random.default_rng(2)
    new_ids = [f"s{i:04d}" for i in range(10)] + [f"n{i:04d}" for i in range(40)]  # 10 recomputed, 40 new
    new_values = rng.standard_normal((50, DIM)).astype(np.float32)
    commit(cache, "run-2", new_ids, new_values, superseded=frozenset(new_ids[:10]), rows_per_file=25)
    with pytest.raises(ConfigError, match="stale.*mmfeat index --cache .* --name v --refresh"):
        open_index(cache, "v")
    info = refresh_index(cache, "v")
    assert info.action == "incremental" and info.run_id == "run-2"
    # the first file (s0000-s0049, s0003 failed) leaves: its 49 vectors go; its rewrite (40 rows) and 50 new rows come
    assert (info.removed, info.added) == (49, 90)
    all_ids = [i for i in ids if i not in new_ids[:10]] + new_ids
    all_values = np.concatenate([values[10:], new_values])
    usable = [i for i in all_ids if i not in ("s0003", "s0100") or i in new_ids]
    assert info.count == len(usable) == 239
    vacuum(cache, retention_hours=0)
    assert os.path.exists(os.path.join(cache, "indexes", "v", "index.json"))
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    fresh = build_index(cache, table=TABLE, name="fresh")
    expected = exact(usable, all_values[[all_ids.index(i) for i in usable]], queries, 5)
    assert found_ids(open_index(cache, "v").search(queries, 5)) == found_ids(open_index(cache, "fresh").search(queries, 5)) == expected
    assert fresh.count == 239 and refresh_index(cache, "v").action == "unchanged"
    recomputed = open_index(cache, "v").vector_of("s0000")
    np.testing.assert_allclose(recomputed, new_values[0] / np.linalg.norm(new_values[0]), atol=1e-6)


def test_two_refreshes_at_once_leave_one_whole_index(first):
    """Two runs finishing together both refresh (mmfeat extract does after its run): each writes its own files, the
    last to replace index.json wins whole, and the index answers as a fresh build does."""
    cache, ids, values = first
    build_index(cache, table=TABLE, name="v")
    rng = np.random.default_rng(3)
    new_ids = [f"n{i:04d}" for i in range(60)]
    new_values = rng.standard_normal((60, DIM)).astype(np.float32)
    commit(cache, "run-2", new_ids, new_values, rows_per_file=20)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        infos = list(pool.map(lambda _: refresh_index(cache, "v"), range(2)))
    assert {info.generation for info in infos} == {2} and len({info.token for info in infos}) == 2
    index = open_index(cache, "v")
    assert index.info.token in {info.token for info in infos} and len(index) == 258
    usable = [i for i in ids if i not in ("s0003", "s0100")] + new_ids
    every = dict(zip(ids + new_ids, np.concatenate([values, new_values])))
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    assert found_ids(index.search(queries, 5)) == exact(usable, np.stack([every[i] for i in usable]), queries, 5)
    files = os.listdir(os.path.join(cache, "indexes", "v"))
    assert sum(name.startswith("index-1") for name in files) == 1  # the previous generation stays for readers that opened it


def test_a_copied_cache_keeps_working_indexes_of_its_own(first, tmp_path):
    cache, ids, values = first
    build_index(cache, table=TABLE, name="v")
    copy = str(tmp_path / "copy")
    shutil.copytree(cache, copy)
    original = open(os.path.join(cache, "indexes", "v", "index.json"), encoding="utf-8").read()
    commit(copy, "run-2", ["n0000"], np.ones((1, DIM), np.float32))
    assert refresh_index(copy, "v").count == 199 and open_index(copy, "v").search(np.ones(DIM, np.float32), 1)[0][0][0] == "n0000"
    assert open(os.path.join(cache, "indexes", "v", "index.json"), encoding="utf-8").read() == original  # the original untouched
    assert open_index(cache, "v").info.cache == os.path.abspath(cache) and len(open_index(cache, "v")) == 198


def test_a_sample_that_becomes_usable_is_added_without_touching_the_table(tmp_path):
    cache, values = str(tmp_path / "cache"), np.random.default_rng(4).standard_normal((100, DIM)).astype(np.float32)
    ids = [f"s{i:04d}" for i in range(100)]
    commit(cache, "run-1", ids, values, bad_manifest=frozenset({"s0005"}))
    assert build_index(cache, table=TABLE, name="v").count == 99
    commit(cache, "run-2", ["s0005"], values[5:6], samples_only=True)  # its manifest row is valid now
    info = refresh_index(cache, "v")
    assert (info.action, info.added, info.removed, info.count) == ("incremental", 1, 0, 100)
    assert open_index(cache, "v").search(values[5], 1)[0][0][0] == "s0005"


def test_overwrite_and_compaction_rebuild(first):
    cache, ids, values = first
    build_index(cache, table=TABLE, name="v")
    commit(cache, "run-2", ids[:60], values[:60], overwrite=True)
    index = open_index(cache, "v", refresh=True)
    assert index.info.action.startswith("rebuilt") and "an overwrite" in index.info.action and index.info.count == 60
    commit(cache, "run-3", ["n1"], values[:1])
    compact(cache)
    info = refresh_index(cache, "v")
    assert info.action.startswith("rebuilt") and "compacted" in info.action and info.count == 61


def test_space_maps_vectors_through_the_pretrained_projection(first, tmp_path):
    cache, ids, values = first
    text = values[:, ::-1] + 0.1 * np.random.default_rng(3).standard_normal(values.shape).astype(np.float32)
    data = FeatureSet(sample_ids=ids, modalities=["video", "text"], features={"video": values, "text": text},
                      present=np.ones((200, 2), bool), labels={})
    model, standardiser, _ = pretrain(data, config := PretrainConfig(hidden=8, epochs=2))
    space = str(tmp_path / "space")
    save(model, standardiser, config, space)
    info = build_index(cache, table=TABLE, name="x", space=space)
    assert info.dim == 8 and info.space == space and info.space_hash
    usable = [i for i in ids if i not in ("s0003", "s0100")]
    projected = encode_queries(values[[ids.index(i) for i in usable]], "video", space)
    queries = encode_queries(text[:10], "text", space)
    assert found_ids(open_index(cache, "x").search(queries, 5)) == exact(usable, projected, queries, 5)
    with pytest.raises(ConfigError, match="no audio projection"):
        encode_queries(values[:1], "audio", space)


def test_bad_arguments_raise_clear_errors(first):
    cache, _, values = first
    with pytest.raises(ConfigError, match="no such embedding set"):
        build_index(cache, table="embeddings/audio/nothing", name="v")
    with pytest.raises(ConfigError, match="matches nothing"):
        build_index(cache, table="video/other", name="v")
    with pytest.raises(ConfigError, match="local cache folder"):
        build_index("gs://bucket/cache", table=TABLE, name="v")
    with pytest.raises(ConfigError, match="no index 'missing'"):
        open_index(cache, "missing")
    build_index(cache, table=TABLE, name="v")
    index = open_index(cache, "v")
    with pytest.raises(ConfigError, match="k >= 1"):
        index.search(values[:1], 0)
    with pytest.raises(ConfigError, match=r"queries must be \(q, 16\)"):
        index.search(np.zeros((2, 8), np.float32), 3)
