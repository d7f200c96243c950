"""Scheduled runs: killed runs leave the cache untouched, the next run completes; status; one writer at a time."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest

from pipelines.run_report import AccountingError
from runners.cli import main
from tests import media


def _corpus(directory, n: int, seconds: float = 8.0) -> tuple[str, str]:
    """Two manifests over the same media: the first 3 samples, and all ``n``."""
    rows = []
    for i in range(n):
        rows.append({"id": f"v{i:02d}", "video": media.video(str(directory / f"v{i:02d}.mp4"), seconds=seconds, width=320, height=240, fps=25),
                     "text": media.text(str(directory / f"v{i:02d}.txt"), f"clip {i}")})
    return media.manifest(str(directory / "small.jsonl"), rows[:3]), media.manifest(str(directory / "all.jsonl"), rows)


def _snapshot(output: str) -> dict[str, str]:
    """Every committed file of the cache (tables and _run.json) with its hash."""
    found = {}
    for root, _, names in os.walk(output):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, output)
            if relative.endswith(".parquet") and not relative.startswith(("_staging", "_commit")) or relative == "_run.json":
                with open(path, "rb") as handle:
                    found[relative] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _status(capsys, output: str) -> str:
    assert main(["status", output]) == 0
    return capsys.readouterr().out


def test_a_killed_run_leaves_the_cache_unchanged_and_the_next_run_completes(tmp_path, capsys):
    small, full = _corpus(tmp_path, n=14)
    output = str(tmp_path / "cache")
    assert main(["extract", "--manifest", small, "--output", output, "--run-id", "first", "--no-embed"]) == 0
    before = _snapshot(output)
    mmfeat = os.path.join(os.path.dirname(sys.executable), "mmfeat")
    victim = subprocess.Popen([mmfeat, "extract", "--manifest", full, "--output", output, "--run-id", "killed", "--no-embed"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    record = os.path.join(output, "_runs", "killed.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(record), "the run never started"
    time.sleep(1.0)

    # While it runs: status shows it, and a second run on the same cache is refused before starting.
    assert "killed                 running" in _status(capsys, output)
    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "second", "--no-embed"]) == 2
    assert "is in use by run killed" in capsys.readouterr().err

    assert victim.poll() is None, "the run finished before it could be killed; make the corpus larger"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert _snapshot(output) == before  # nothing of the killed run reached the cache
    assert "killed                 died" in _status(capsys, output)

    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "resumed", "--no-embed"]) == 0
    samples = ds.dataset(os.path.join(output, "samples")).to_table().to_pylist()
    assert sorted(s["sample_id"] for s in samples) == [f"v{i:02d}" for i in range(14)]  # nothing lost, nothing twice
    assert {s["run_id"] for s in samples if s["sample_id"] in ("v00", "v01", "v02")} == {"first"}  # not computed again
    frames = ds.dataset(os.path.join(output, "frames")).to_table().to_pylist()
    assert len(frames) == len({(f["sample_id"], f["frame_index"]) for f in frames}) == 14 * 8
    assert not os.path.exists(os.path.join(output, "_staging")) and not os.path.exists(os.path.join(output, "_lock"))
    status = _status(capsys, output)
    assert "first                  committed" in status and "resumed                committed" in status
    assert "killed                 failed" in status and "ended before committing" in status


def test_status_reports_a_failed_run_and_the_cache_stays_usable(tmp_path, capsys, monkeypatch):
    small, full = _corpus(tmp_path, n=4, seconds=1.0)
    output = str(tmp_path / "cache")
    assert main(["extract", "--manifest", small, "--output", output, "--run-id", "good", "--no-embed"]) == 0
    before = _snapshot(output)

    def lose_data(directory, n_inputs):
        raise AccountingError("samples table does not match the 4 input rows: missing rows [3]")

    monkeypatch.setattr("pipelines.extract.check_accounting", lose_data)
    with pytest.raises(AccountingError):
        main(["extract", "--manifest", full, "--output", output, "--run-id", "lossy", "--no-embed"])
    assert _snapshot(output) == before
    status = _status(capsys, output)
    assert "good                   committed" in status
    assert "lossy                  failed" in status and "AccountingError: samples table does not match" in status
    assert "samples ok 3, partial 0, failed 0, unchanged 0" in status

    monkeypatch.undo()
    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "fixed", "--no-embed"]) == 0
    assert ds.dataset(os.path.join(output, "samples")).count_rows() == 4


def test_an_interrupted_commit_is_finished_by_the_next_run(tmp_path, monkeypatch):
    small, full = _corpus(tmp_path, n=4, seconds=1.0)
    output = str(tmp_path / "cache")
    assert main(["extract", "--manifest", small, "--output", output, "--run-id", "one", "--no-embed"]) == 0

    def crash(*args, **kwargs):
        raise RuntimeError("power cut during the commit")

    monkeypatch.setattr("pipelines.commit._move_staged", crash)
    with pytest.raises(RuntimeError):
        main(["extract", "--manifest", full, "--output", output, "--run-id", "two", "--no-embed"])
    assert os.path.exists(os.path.join(output, "_commit", "two.json"))
    monkeypatch.undo()

    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "three", "--no-embed"]) == 0
    samples = ds.dataset(os.path.join(output, "samples")).to_table().to_pylist()
    assert sorted((s["sample_id"], s["run_id"]) for s in samples) == [("v00", "one"), ("v01", "one"), ("v02", "one"), ("v03", "two")]
    assert not os.path.exists(os.path.join(output, "_commit"))
