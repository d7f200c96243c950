"""Scheduled runs: a failed run commits nothing and leaves none of its files; status lists the committed runs.

What a killed run or two concurrent runs leave is tested in ``test_crash_safety.py``.
"""
import dataclasses
import hashlib
import os
import re

from deltalake import DeltaTable

import pipelines.extract
from runners.cli import main
from schemas.cache import CacheView, runs, table_uri
from tests import media


def _corpus(directory, n: int, seconds: float = 8.0) -> tuple[str, str]:
    """Two manifests over the same media: the first 3 samples, and all ``n``."""
    rows = []
    for i in range(n):
        rows.append({"id": f"v{i:02d}", "video": media.video(str(directory / f"v{i:02d}.mp4"), seconds=seconds, width=320, height=240, fps=25),
                     "text": media.text(str(directory / f"v{i:02d}.txt"), f"clip {i}")})
    return media.manifest(str(directory / "small.jsonl"), rows[:3]), media.manifest(str(directory / "all.jsonl"), rows)


def _snapshot(output: str) -> dict[str, tuple[int, dict[str, str]]]:
    """Per table of the latest state: its newest Delta version (pinned or not) and every committed data file with its hash."""
    view = CacheView.open(output)
    found = {}
    for table in view.tables():
        latest = DeltaTable(table_uri(output, table))
        files = {}
        for uri in latest.file_uris():
            with open(uri.removeprefix("file://"), "rb") as handle:
                files[os.path.basename(uri)] = hashlib.sha256(handle.read()).hexdigest()
        found[table] = (latest.version(), files)
    return found


def _files_of(output: str, run_id: str) -> list[str]:
    """Every file a run's attempts wrote anywhere in the cache folder (data files, ``_pending`` lists)."""
    return sorted(os.path.relpath(os.path.join(root, name), output) for root, _, names in os.walk(output)
                  for name in names if name.startswith(f"{run_id}-") or name.startswith(f"{run_id}."))


def _status(capsys, output: str) -> str:
    capsys.readouterr()
    assert main(["status", output]) == 0
    return capsys.readouterr().out


def _run_line(status: str, run_id: str) -> str:
    (line,) = [line for line in status.splitlines() if line.split()[:1] == [run_id]]
    return line


def test_a_failed_run_commits_nothing_and_the_cache_stays_usable(tmp_path, capsys, monkeypatch):
    small, full = _corpus(tmp_path, n=4, seconds=1.0)
    output = str(tmp_path / "cache")
    assert main(["extract", "--manifest", small, "--output", output, "--run-id", "good", "--no-embed"]) == 0
    before = _snapshot(output)

    listed = pipelines.extract.read_pending

    def lose_a_samples_file(cache, attempt):  # a runner that lost a writer's output
        pending = listed(cache, attempt)
        lost = next(f for f in pending.files if f.table == "samples")
        return dataclasses.replace(pending, files=[f for f in pending.files if f is not lost])

    monkeypatch.setattr("pipelines.extract.read_pending", lose_a_samples_file)
    capsys.readouterr()
    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "lossy", "--no-embed", "--num-shards", "1"]) == 3
    assert "does not match the 4 input rows: 0 samples rows were written and 3 samples found unchanged" in capsys.readouterr().err
    assert _snapshot(output) == before  # no commit on any table, no committed file touched
    assert _files_of(output, "lossy") == []  # the failed run removed what its workers wrote
    assert [run.run_id for run in runs(output)] == ["good"]
    status = _status(capsys, output)
    assert re.match(r"good +extract ", _run_line(status, "good"))
    assert "samples ok 3, partial 0, failed 0, unchanged 0" in status and "failures none" in status
    assert "lossy" not in status

    monkeypatch.undo()
    assert main(["extract", "--manifest", full, "--output", output, "--run-id", "fixed", "--no-embed"]) == 0
    samples = CacheView.open(output).read("samples", ["sample_id", "run_id"]).to_pylist()
    assert sorted((s["sample_id"], s["run_id"]) for s in samples) == [("v00", "good"), ("v01", "good"), ("v02", "good"), ("v03", "fixed")]
    status = _status(capsys, output)
    assert status.startswith(f"{output}: 2 runs")
    assert [line.split()[0] for line in status.splitlines()[1:] if not line.startswith(" ")] == ["good", "fixed"]
    assert re.match(r"fixed +extract ", _run_line(status, "fixed"))
    assert "samples ok 1, partial 0, failed 0, unchanged 3" in status


def test_status_of_a_folder_without_a_cache_fails_with_a_message(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "no cache at" in capsys.readouterr().err
