"""The cache package on hand-made runs: superseding, exactly-once commits, pinned views, time travel, repair, vacuum."""
from __future__ import annotations

import collections
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from schemas.cache import CacheView, RunCommit, commit_run, compact, find_damaged, new_attempt, repair, runs, vacuum, write_data_file
from schemas.cache.commit import _commit_table
from schemas.cache.view import check_format
from schemas.errors import ConfigError
from tests.schemas.cache_helpers import FEATURES, SCHEMAS, frames_rows, run, samples_rows


def _rows(view: CacheView, table: str) -> list[tuple]:
    columns = {"samples": ["sample_id", "label"], "frames": ["sample_id", "frame_index", "width"]}[table]
    return sorted(tuple(row.values()) for row in view.read(table, columns).to_pylist())


def test_every_table_exists_after_the_first_run_even_when_empty(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b"])
    view = CacheView.open(cache)
    assert view.tables() == sorted(FEATURES)
    assert view.read("errors").num_rows == 0 and view.read("audio").num_rows == 0
    assert DeltaTable(os.path.join(cache, "errors")).to_pyarrow_table().num_rows == 0


def test_a_recomputed_sample_replaces_its_rows_in_the_same_commit(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b", "c"])
    frames = DeltaTable(os.path.join(cache, "frames"))
    version, (shared_file,) = frames.version(), frames.file_uris()
    run(cache, "second", ["b"], label=1, width=16)
    view = CacheView.open(cache)
    assert _rows(view, "samples") == [("a", 0), ("b", 1), ("c", 0)]
    assert _rows(view, "frames") == [("a", 0, 8), ("a", 1, 8), ("b", 0, 16), ("b", 1, 16), ("c", 0, 8), ("c", 1, 8)]
    frames.update_incremental()
    assert frames.version() == version + 1 and frames.history(1)[0]["mmfeat.run_id"] == "second"  # one commit...
    files = frames.file_uris()
    assert shared_file not in files and any("-rewrite-" in f for f in files)  # ...removed a, b, c's file and added a, c's rewrite
    assert DeltaTable(os.path.join(cache, "frames"), version=version).to_pyarrow_table().num_rows == 6


def test_commit_is_exactly_once_per_attempt(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b"])
    attempt = new_attempt("again")
    files = [write_data_file(cache, "samples", f"{attempt}-0.parquet", samples_rows(["a"], run_id="again", label=5)),
             write_data_file(cache, "frames", f"{attempt}-0.parquet", frames_rows(["a"], width=32))]
    change = RunCommit(run_id="again", attempt=attempt, files=files, schemas={t: SCHEMAS[t] for t in FEATURES}, superseded=frozenset(["a"]))
    commit_run(cache, change)
    for table in ("frames", "samples"):  # a commit repeated after a crash: nothing is added twice
        _commit_table(cache, table, change, None, change.marks("extract"))
    commit_run(cache, change)
    view = CacheView.open(cache)
    assert _rows(view, "samples") == [("a", 5), ("b", 0)]
    assert collections.Counter(r[0] for r in _rows(view, "frames")) == {"a": 2, "b": 2}


def test_as_of_reads_the_state_a_run_left(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b", "c"])
    first = _rows(CacheView.open(cache), "frames"), _rows(CacheView.open(cache), "samples")
    run(cache, "second", ["b", "d"], label=1, width=16)
    run(cache, "third", ["a"], label=2, width=24)
    old = CacheView.open(cache, as_of="first")
    assert (_rows(old, "frames"), _rows(old, "samples")) == first
    assert _rows(CacheView.open(cache, as_of="second"), "samples") == [("a", 0), ("b", 1), ("c", 0), ("d", 1)]
    assert [r.run_id for r in runs(cache)] == ["first", "second", "third"]
    with pytest.raises(ConfigError, match="no such run in .* first, second, third"):
        CacheView.open(cache, as_of="fourth")


def test_a_run_that_died_between_table_commits_is_invisible_and_undone_by_the_next(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b"])
    before = CacheView.open(cache)
    attempt = new_attempt("dead")
    dead = RunCommit(run_id="dead", attempt=attempt, schemas={t: SCHEMAS[t] for t in FEATURES}, superseded=frozenset(["a"]),
                     files=[write_data_file(cache, "frames", f"{attempt}-0.parquet", frames_rows(["a"], width=99))])
    metadata = dead.marks("extract") | {"mmfeat.pid": "999999999"}  # a process that no longer exists
    _commit_table(cache, "frames", dead, before.versions["frames"], metadata)
    assert DeltaTable(os.path.join(cache, "frames")).version() > before.versions["frames"]  # the table is ahead of samples...
    view = CacheView.open(cache)
    assert _rows(view, "frames") == _rows(before, "frames") and view.versions == before.versions  # ...but no reader sees it
    run(cache, "next", ["c"])
    latest = DeltaTable(os.path.join(cache, "frames")).to_pyarrow_table(columns=["sample_id", "width"]).to_pylist()
    assert sorted((r["sample_id"], r["width"]) for r in latest) == [("a", 8)] * 2 + [("b", 8)] * 2 + [("c", 8)] * 2


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("table", ["samples", "frames"])
def test_a_damaged_file_is_found_removed_and_its_samples_left_to_recompute(tmp_path, damage, table):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b", "c", "d"], files_per_table=2)
    victim = sorted(CacheView.open(cache).files(table))[0]
    lost = set(pq.read_table(victim, columns=["sample_id"]).column("sample_id").to_pylist())
    if damage == "delete":
        os.remove(victim)
    else:
        with open(victim, "r+b") as handle:
            handle.truncate(os.path.getsize(victim) // 2)
    assert set(find_damaged(CacheView.open(cache))) == {table}
    repaired = repair(cache)
    assert repaired.summary["samples_to_recompute"] == len(lost)
    view = CacheView.open(cache)
    assert {r[0] for r in _rows(view, "samples")} == {"a", "b", "c", "d"} - lost
    assert {r[0] for r in _rows(view, "frames")} == {"a", "b", "c", "d"} - lost
    assert repair(cache) is None
    run(cache, "second", sorted(lost))
    assert {r[0] for r in _rows(CacheView.open(cache), "frames")} == {"a", "b", "c", "d"}


def test_vacuum_removes_unreferenced_files_but_keeps_the_pinned_state(tmp_path):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b"])
    run(cache, "second", ["a"], width=16)
    orphan = os.path.join(cache, "frames", "killed-12345678-part-00000.parquet")
    pq.write_table(frames_rows(["z"]), orphan)
    assert vacuum(cache) == []  # younger than the retention window: a run in progress is never touched
    removed = vacuum(cache, retention_hours=0)
    assert "frames/killed-12345678-part-00000.parquet" in removed and not os.path.exists(orphan)
    assert _rows(CacheView.open(cache), "frames") == [("a", 0, 16), ("a", 1, 16), ("b", 0, 8), ("b", 1, 8)]


def test_compact_merges_files_and_keeps_rows(tmp_path):
    cache = str(tmp_path / "cache")
    for i in range(4):
        run(cache, f"run{i}", [f"s{i}"])
    before = CacheView.open(cache)
    rows = _rows(before, "frames")
    assert len(before.files("frames")) == 4
    info = compact(cache)
    after = CacheView.open(cache)
    assert after.run.run_id == info.run_id and after.run.kind == "compact"
    assert len(after.files("frames")) == 1 and _rows(after, "frames") == rows
    assert _rows(CacheView.open(cache, as_of="run3"), "frames") == rows


def test_an_old_cache_is_refused_with_what_to_do(tmp_path):
    cache = tmp_path / "cache"
    os.makedirs(cache / "samples")
    pq.write_table(samples_rows(["a"], run_id="old"), cache / "samples" / "part-00000.parquet")
    with pytest.raises(ConfigError, match="schema version 1 .*--overwrite"):
        CacheView.open(str(cache))


def test_new_manifest_columns_join_the_schema_and_a_changed_type_is_refused(tmp_path):
    import pyarrow as pa

    from schemas.cache.commit import new_columns
    from tests.schemas.cache_helpers import SCHEMAS as WITH_LABEL

    cache = str(tmp_path / "cache")
    without = {t: s for t, s in WITH_LABEL.items() if t in FEATURES} | {"samples": WITH_LABEL["samples"].remove(WITH_LABEL["samples"].get_field_index("label"))}
    attempt = new_attempt("plain")
    rows = samples_rows(["a"], run_id="plain").drop(["label"])
    commit_run(cache, RunCommit(run_id="plain", attempt=attempt, schemas=without, superseded=frozenset(["a"]),
                                files=[write_data_file(cache, "samples", f"{attempt}-0.parquet", rows)]))
    run(cache, "labelled", ["b"], label=3)
    assert sorted(map(tuple, (r.values() for r in CacheView.open(cache).read("samples", ["sample_id", "label"]).to_pylist()))) == [("a", None), ("b", 3)]
    changed = WITH_LABEL["samples"].set(WITH_LABEL["samples"].get_field_index("label"), pa.field("label", pa.string()))
    with pytest.raises(ConfigError, match="label: int64 in the cache, string now"):
        new_columns(CacheView.open(cache).table("samples"), changed, "samples")


def test_a_claim_of_a_reused_pid_counts_as_dead():
    import socket
    import time

    from schemas.cache.commit import _alive

    mine = {"mmfeat.host": socket.gethostname(), "mmfeat.pid": str(os.getpid())}
    assert _alive(mine | {"timestamp": int(time.time() * 1000)})
    assert not _alive(mine | {"timestamp": int(time.time() * 1000) - 3_600_000})  # made before this process started
    assert not _alive({"mmfeat.host": "elsewhere", "mmfeat.pid": "1", "timestamp": int(time.time() * 1000) - 3_600_000})


_COMMIT_AT = """
import sys, time
from tests.schemas.cache_helpers import run
cache, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
run(cache, name, ["a", "b", "c", name], width=len(name))
"""


@pytest.mark.serial  # three fresh processes meet at a start time set 2 s ahead; on a busy machine their imports miss it
@pytest.mark.parametrize("trial", range(10))
def test_runs_committing_at_the_same_moment_serialise_without_duplicates(tmp_path, trial):
    import subprocess
    import sys
    import time

    cache = str(tmp_path / "cache")
    if trial % 2:
        run(cache, "earlier", ["a", "z"])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    start = time.time() + 2.0
    names = ["left", "right", "middle"]
    processes = [subprocess.Popen([sys.executable, "-c", _COMMIT_AT, cache, name, str(start)], cwd=root, stderr=subprocess.PIPE, text=True)
                 for name in names]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0], [p.stderr.read() for p in processes]
    view = CacheView.open(cache)
    ids = [r[0] for r in _rows(view, "samples")]
    assert ids == sorted(set(ids)) == sorted({"a", "b", "c", *names} | ({"z"} if trial % 2 else set()))
    frames = collections.Counter(r[0] for r in _rows(view, "frames"))
    assert set(frames.values()) == {2}
    assert set(names) <= {r.run_id for r in runs(cache)}
    assert len({r[2] for r in _rows(view, "frames") if r[0] == "a"}) == 1  # a's rows come from one run, whichever committed last


def _planned_run(cache: str, run_id: str, ids: list[str], *, width: int) -> RunCommit:
    """A run of ``ids`` whose replacements were made as the workers make them, against the cache's current state."""
    from schemas.cache import SupersedeRule, file_rows, replace_file

    view = CacheView.open(cache)
    attempt = new_attempt(run_id)
    rule = SupersedeRule.of("extract", frozenset(ids))
    replacements = [r for table in view.tables() for file in file_rows(view.table(table))
                    if (r := replace_file(cache, table, file, rule, attempt))]
    files = [write_data_file(cache, "samples", f"{attempt}-0.parquet", samples_rows(ids, run_id=run_id, label=width)),
             write_data_file(cache, "frames", f"{attempt}-0.parquet", frames_rows(ids, width=width))]
    return RunCommit(run_id=run_id, attempt=attempt, files=files, schemas={t: SCHEMAS[t] for t in FEATURES}, superseded=frozenset(ids),
                     replacements=replacements, replaced_on=view.run.version)


def test_a_commit_applies_the_workers_rewrites_without_reading_a_file(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b", "c", "d"], files_per_table=2)
    planned = _planned_run(cache, "second", ["b", "c"], width=16)
    assert {r.table for r in planned.replacements} == {"samples", "frames"}

    def no_reading(*args, **kwargs):
        raise AssertionError("the commit rewrote a file although the workers' rewrites applied")

    monkeypatch.setattr("schemas.cache.commit.replace_file", no_reading)
    commit_run(cache, planned)
    view = CacheView.open(cache)
    assert _rows(view, "samples") == [("a", 0), ("b", 16), ("c", 16), ("d", 0)]
    assert collections.Counter(r[0] for r in _rows(view, "frames")) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert {r[2] for r in _rows(view, "frames") if r[0] in "bc"} == {16}


def test_rewrites_planned_on_an_older_state_are_made_again_at_commit(tmp_path):
    """Another run committed between this run's workers and its commit: the workers' rewrites would bring back rows
    that run replaced, so the commit rewrites from the state it commits on."""
    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b", "c"])
    planned = _planned_run(cache, "second", ["b"], width=16)
    run(cache, "meanwhile", ["a"], label=7, width=24)
    commit_run(cache, planned)
    view = CacheView.open(cache)
    assert _rows(view, "samples") == [("a", 7), ("b", 16), ("c", 0)]
    assert sorted({(r[0], r[2]) for r in _rows(view, "frames")}) == [("a", 24), ("b", 16), ("c", 8)]
    assert collections.Counter(r[0] for r in _rows(view, "frames")) == {"a": 2, "b": 2, "c": 2}


def test_a_sample_embedded_again_keeps_one_row_per_embedding_set(tmp_path):
    """Two runs that both embed a cached sample again (a new encoder, runs started together): the later row replaces
    the earlier one in that set, and the sample's rows in other sets stay."""
    import pyarrow as pa

    cache = str(tmp_path / "cache")
    run(cache, "first", ["a", "b"])
    schema = pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32()))])

    def embed(run_id: str, table: str, value: float) -> None:
        attempt = new_attempt(run_id)
        rows = pa.table({"sample_id": ["a"], "vector": [[value]]}, schema=schema)
        commit_run(cache, RunCommit(run_id=run_id, attempt=attempt, files=[write_data_file(cache, table, f"{attempt}-0.parquet", rows)],
                                    schemas={table: schema}, reembedded_in={table: frozenset(["a"])}))

    embed("set-one", "embeddings/text/one", 1.0)
    embed("set-two", "embeddings/text/two", 2.0)
    embed("set-one-again", "embeddings/text/one", 3.0)
    view = CacheView.open(cache)
    assert view.read("embeddings/text/one").to_pylist() == [{"sample_id": "a", "vector": [3.0]}]
    assert view.read("embeddings/text/two").to_pylist() == [{"sample_id": "a", "vector": [2.0]}]
    assert _rows(view, "samples") == [("a", 0), ("b", 0)]


def test_an_extraction_reads_only_files_whose_statistics_allow_rows_it_replaces():
    """Manifest-level rows (an invalid ``samples`` row, a ``manifest`` error) are replaced by every extraction: a file is
    read when its statistics allow such rows or a superseded id, or when it has no statistics (an older table)."""
    from schemas.cache import SupersedeRule

    def samples(ok_low):
        return {"num_records": 3, "min.sample_id": "a", "max.sample_id": "c", "min.manifest_ok": ok_low}

    def errors(low, high):
        return {"num_records": 3, "min.sample_id": "a", "max.sample_id": "c", "min.stage": low, "max.stage": high}

    unchanged = SupersedeRule.of("extract")
    assert not unchanged.may_hold(samples(True), "samples") and not unchanged.may_hold(errors("read", "video"), "errors")
    assert unchanged.may_hold(samples(False), "samples") and unchanged.may_hold(samples(None), "samples")
    assert unchanged.may_hold(errors("audio", "read"), "errors") and unchanged.may_hold(errors(None, None), "errors")
    assert not unchanged.may_hold({**samples(False), "num_records": 0}, "samples")
    assert SupersedeRule.of("extract", frozenset({"b"})).may_hold(samples(True), "samples")
    assert not SupersedeRule.of("extract", frozenset({"x"})).may_hold(samples(True), "samples")
    reembedded = SupersedeRule.of("extract", reembedded_in={"embeddings/text/enc": frozenset({"b"})})
    assert reembedded.may_hold(errors("audio", "embed"), "errors") and not unchanged.may_hold(errors("audio", "embed"), "errors")


def test_a_rule_that_refreshes_identities_rewrites_only_the_samples_files_holding_those_samples(tmp_path):
    """Samples unchanged by their content keep their rows, with their files' new identity: a ``samples`` file holding
    one is rewritten with every other column and row as it was; a file holding none, or another table, is kept."""
    from schemas.cache import SupersedeRule
    from schemas.cache.supersede import replace_file, write_data_file

    schema = pa.schema([("sample_id", pa.string()), ("manifest_ok", pa.bool_()), ("file_identity", pa.string()), ("n_tokens", pa.int32())])
    holding = write_data_file(str(tmp_path), "samples", "a.parquet", pa.table(
        {"sample_id": ["a", "b", "c"], "manifest_ok": [True] * 3, "file_identity": ["old-a", "old-b", None], "n_tokens": [1, 2, 3]}, schema))
    other = write_data_file(str(tmp_path), "samples", "x.parquet", pa.table(
        {"sample_id": ["x"], "manifest_ok": [True], "file_identity": ["old-x"], "n_tokens": [9]}, schema))
    rule = SupersedeRule.of("extract", frozenset({"c"}), refreshed={"b": "new-b", "c": "new-c"})  # c recomputed: dropped, not refreshed

    def described(data_file):
        return {"path": data_file.name, "size_bytes": data_file.size, "num_records": data_file.n_rows,
                **{f"{bound}.{name}": value for name, (low, high, *_) in data_file.stats.items() for bound, value in (("min", low), ("max", high))}}

    replacement = replace_file(str(tmp_path), "samples", described(holding), rule, "attempt")
    rewritten = pq.read_table(tmp_path / "samples" / replacement.rewrite.name)
    assert rewritten.to_pylist() == [{"sample_id": "a", "manifest_ok": True, "file_identity": "old-a", "n_tokens": 1},
                                     {"sample_id": "b", "manifest_ok": True, "file_identity": "new-b", "n_tokens": 2}]
    assert rewritten.schema == schema
    assert replace_file(str(tmp_path), "samples", described(other), rule, "attempt") is None
    assert not rule.may_hold({"num_records": 1, "min.sample_id": "x", "max.sample_id": "x", "min.manifest_ok": True}, "samples")


def test_an_empty_samples_folder_is_no_cache_but_plain_parquet_is_refused(tmp_path):
    """A first run that failed writing ``samples`` (a full disk) leaves an empty folder once its files are removed: the
    next run must start a cache there, not refuse it as an older layout. A folder of plain Parquet still is refused."""
    (tmp_path / "samples").mkdir()
    check_format(str(tmp_path))
    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "samples" / "part-0.parquet")
    with pytest.raises(ConfigError, match="schema version 1"):
        check_format(str(tmp_path))


def test_a_first_run_s_uncommitted_files_are_no_cache_but_with_old_bookkeeping_they_are_refused(tmp_path):
    """Two runs started together on a new cache: one's workers may have written ``samples`` files before its first
    commit when the other checks the folder. Those are a first run's, not an older layout: the other run goes on (and
    the commit decides). Files of that name beside schema version 1's bookkeeping are still refused."""
    (tmp_path / "samples").mkdir()
    attempt = new_attempt("left")
    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "samples" / f"{attempt}-part-00000.parquet")
    check_format(str(tmp_path))
    (tmp_path / "_run.json").write_text("{}")
    with pytest.raises(ConfigError, match="schema version 1"):
        check_format(str(tmp_path))
