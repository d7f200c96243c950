"""An unattended job's faults: kills at five moments, two runs at once, damaged files, a full disk, a read-only cache.

After each: every reader sees the last committed state exactly, the next run completes, every input is
accounted for once, and no row appears twice in any table.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from deltalake import DeltaTable

from runners.cli import main
from schemas.cache import CacheView, runs
from tests import media

ENCODERS = ["--image-encoder", "builtin:color-hog", "--audio-encoder", "builtin:mfcc-stats", "--text-encoder", "none",
            "--log-level", "WARNING"]
KEYS = {"samples": ("sample_id",), "frames": ("sample_id", "frame_index"), "audio": ("sample_id", "source", "window_index"),
        "text": ("sample_id",), "errors": ("sample_id", "stage", "error_kind", "uri")}
COUNTS = {"frames": "n_frames", "audio": "n_audio_windows", "text": "n_tokens"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _corpus(directory: str, n: int) -> tuple[str, str]:
    """Manifests over the same media: the first ``n - 2`` samples, and all ``n`` (one of them with a missing file)."""
    rows = []
    for i in range(n):
        row = {"id": f"s{i}", "video": media.video(os.path.join(directory, f"s{i}.mp4"), seconds=1.0, fps=5),
               "text": media.text(os.path.join(directory, f"s{i}.txt"), f"sample {i}")}
        if i == 1:
            row["audio"] = os.path.join(directory, "missing.wav")
        rows.append(row)
    return (media.manifest(os.path.join(directory, "some.jsonl"), rows[: n - 2]),
            media.manifest(os.path.join(directory, "all.jsonl"), rows))


def _extract(manifest: str, output: str, run_id: str) -> int:
    return main(["extract", "--manifest", manifest, "--output", output, "--run-id", run_id, *ENCODERS])


def _spawn(args: list[str], moment: str = "") -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.runners.killed_extract", moment] if moment else [os.path.join(os.path.dirname(sys.executable), "mmfeat"), "extract"]
    return subprocess.Popen([*command, *args, *ENCODERS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(view: CacheView) -> dict[str, list[str]]:
    """Every row of every table of ``view``, as sorted strings (what any reader of this state sees)."""
    return {table: sorted(repr(_rounded(row)) for row in view.read(table).to_pylist()) for table in view.tables()}


def _rounded(value):
    """``value`` with floats to 5 significant digits (a recomputed pooled vector may differ in its last bits)."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _assert_consistent(cache: str, n_inputs: int) -> None:
    """Every input once in ``samples``; no row twice in any table; feature rows match the samples' counts; no table ahead."""
    view = CacheView.open(cache)
    samples = view.read("samples").to_pylist()
    keys = [row["manifest_row"] for row in samples]
    assert len(keys) == len(set(keys)) == n_inputs
    for table in view.tables():
        rows = view.read(table).to_pylist()
        keys = collections.Counter(tuple(row[k] for k in KEYS.get(table, ("sample_id",))) for row in rows)
        assert [k for k, c in keys.items() if c > 1] == [], f"duplicate rows in {table}"
        if table in COUNTS:  # a sample has rows in a feature table exactly when samples says so (frames: as many)
            have = collections.Counter(row["sample_id"] for row in rows)
            for sample in samples:
                count = sample[COUNTS[table]]
                assert have[sample["sample_id"]] == count if table == "frames" else (have[sample["sample_id"]] > 0) == (count > 0)
        # nothing committed after the pinned versions that changes rows: the latest table equals the pinned one
        latest = DeltaTable(os.path.join(cache, table)).to_pyarrow_table()
        assert sorted(map(repr, latest.to_pylist())) == sorted(map(repr, rows)), f"{table} is ahead of samples"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    return _corpus(str(tmp_path_factory.mktemp("media")), n=6)


@pytest.fixture(scope="module")
def first_cache(tmp_path_factory, corpus) -> str:
    output = str(tmp_path_factory.mktemp("first") / "cache")
    assert _extract(corpus[0], output, "first") == 0
    return output


@pytest.mark.parametrize("moment", ["before-writing", "mid-run", "after-workers", "between-table-commits", "after-samples-commit"])
def test_sigkill_at_any_moment_leaves_the_last_committed_state_and_the_next_run_completes(tmp_path, corpus, first_cache, moment):
    output = str(tmp_path / "cache")
    shutil.copytree(first_cache, output)
    before = _state(CacheView.open(output))
    killed = _spawn(["--manifest", corpus[1], "--output", output, "--run-id", "killed"], moment)
    assert killed.wait(timeout=300) == -9, killed.stderr.read()

    view = CacheView.open(output)
    if moment == "after-samples-commit":
        assert view.run.run_id == "killed"
        _assert_consistent(output, n_inputs=6)
    else:
        assert view.run.run_id == "first" and _state(view) == before

    assert _extract(corpus[1], output, "next") == 0
    _assert_consistent(output, n_inputs=6)
    assert [run.run_id for run in runs(output)] == ["first", *(["killed"] if moment == "after-samples-commit" else []), "next"]


def _dead_run(output: str) -> None:
    """What a run killed between its table commits leaves: a data file no commit references, and a ``frames``
    commit (of a process that no longer exists) that ``samples`` never pinned."""
    from schemas.cache import RunCommit, new_attempt, write_data_file
    from schemas.cache.commit import _commit_table

    view = CacheView.open(output)
    attempt = new_attempt("dead")
    frames = view.read("frames").slice(0, 1)
    dead = RunCommit(run_id="dead", attempt=attempt, superseded=frozenset(frames.column("sample_id").to_pylist()),
                     files=[write_data_file(output, "frames", f"{attempt}-part-00000.parquet", frames)])
    write_data_file(output, "audio", f"{attempt}-part-00000.parquet", view.read("audio"))
    _commit_table(output, "frames", dead, view.versions["frames"], dead.marks("extract") | {"mmfeat.pid": "999999999"})


@pytest.mark.serial  # two cold launchers race each other; other work on the machine would stagger their starts
@pytest.mark.parametrize("trial", range(10))
def test_two_runs_started_together_both_account_for_every_input_once(tmp_path, corpus, first_cache, trial):
    output = str(tmp_path / "cache")
    n_inputs = 6
    if trial % 2:
        shutil.copytree(first_cache, output)
        _dead_run(output)
    runs_ = [_spawn(["--manifest", corpus[1], "--output", output, "--run-id", name]) for name in ("left", "right")]
    results = [(run.wait(timeout=300), run.communicate()[1]) for run in runs_]
    assert any(code == 0 for code, _ in results), results
    for code, stderr in results:
        assert code == 0 or ("is committing to" in stderr and code == 3), stderr  # a loser says which run won
    _assert_consistent(output, n_inputs)
    committed = {run.run_id for run in runs(output)}
    assert {name for (code, _), name in zip(results, ("left", "right")) if code == 0} <= committed


def _damage(path: str, how: str) -> None:
    if how == "delete":
        os.remove(path)
    else:
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("how", ["truncate", "delete"])
@pytest.mark.parametrize("table", ["samples", "frames", "audio", "text", "errors", "embeddings"])
def test_a_damaged_or_missing_file_is_named_removed_and_its_samples_recomputed(tmp_path, corpus, first_cache, table, how, caplog):
    output = str(tmp_path / "cache")
    shutil.copytree(first_cache, output)
    view = CacheView.open(output)
    name = view.embedding_tables("video")[0] if table == "embeddings" else table
    expected = _state(view)
    victim = view.files(name)[0]
    _damage(victim, how)
    assert main(["status", output]) == 0  # still readable: status needs no data file
    assert _extract(corpus[0], output, "after-damage") == 0
    assert os.path.basename(victim) in caplog.text  # the run names the file it removed
    recovered = CacheView.open(output)
    assert recovered.run.run_id == "after-damage"
    assert {t: rows for t, rows in _state(recovered).items() if t != "samples"} == {t: rows for t, rows in expected.items() if t != "samples"}
    _assert_consistent(output, n_inputs=4)


def test_mmfeat_repair_removes_a_damaged_file_and_the_next_run_recomputes(tmp_path, corpus, first_cache, capsys):
    output = str(tmp_path / "cache")
    shutil.copytree(first_cache, output)
    _damage(CacheView.open(output).files("frames")[0], "truncate")
    assert main(["repair", output]) == 0
    assert "removed 1 damaged files (frames); 4 samples will be recomputed" in capsys.readouterr().out
    assert CacheView.open(output).read("frames").num_rows == 0
    assert main(["repair", output]) == 0 and "every data file is intact" in capsys.readouterr().out
    assert _extract(corpus[0], output, "recompute") == 0
    assert CacheView.open(output).run.summary["samples"]["ok"] + CacheView.open(output).run.summary["samples"]["partial"] == 4
    _assert_consistent(output, n_inputs=4)


def _mount_tmpfs(path: str, size: str, *options: str) -> bool:
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", path],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path) -> Any:
    mount = str(tmp_path / "disk")
    if not _mount_tmpfs(mount, "40k"):
        pytest.skip("mounting a tmpfs needs root (CI and the dev machines run as root)")
    yield mount
    subprocess.run(["umount", "-l", mount], check=False)


def test_a_full_disk_fails_the_run_cleanly_and_the_next_run_succeeds_once_there_is_space(small_disk, corpus, capsys):
    output = os.path.join(small_disk, "cache")
    assert _extract(corpus[1], output, "too-big") == 3
    error = capsys.readouterr().err
    assert "No space left on device" in error and output in error and "nothing of this run was committed" in error
    leftovers = [os.path.join(root, f) for root, _, files in os.walk(small_disk) for f in files if "_delta_log" not in root]
    assert leftovers == []  # its own data files are gone: the disk is as free as before
    assert CacheView.open(output).run is None
    assert subprocess.run(["mount", "-o", "remount,size=64m", small_disk]).returncode == 0
    assert _extract(corpus[1], output, "fits") == 0
    _assert_consistent(output, n_inputs=6)


def test_a_read_only_cache_is_refused_before_work_and_still_readable(small_disk, corpus, capsys):
    subprocess.run(["mount", "-o", "remount,size=64m", small_disk], check=True)
    output = os.path.join(small_disk, "cache")
    assert _extract(corpus[0], output, "first") == 0
    state = _state(CacheView.open(output))
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    capsys.readouterr()
    assert _extract(corpus[1], output, "refused") == 2
    assert "is not writable" in capsys.readouterr().err
    assert main(["status", output]) == 0 and _state(CacheView.open(output)) == state
    subprocess.run(["mount", "-o", "remount,rw", small_disk], check=True)
    assert _extract(corpus[1], output, "writable") == 0
    _assert_consistent(output, n_inputs=6)
