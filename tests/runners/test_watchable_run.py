"""A run a person can watch (issue 10, part 7), through the installed ``mmfeat`` console script.

INFO progress at the default level, ``--log-level`` obeyed, each warning once (also a worker process's), Beam's
``apitools`` import warning never shown, and no worker process left behind when the launcher is killed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

from pipelines.sample_corpus import make_sample_corpus

SCRIPT = os.path.join(os.path.dirname(sys.executable), "mmfeat")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEAM_NOISE = ("apitools", "semi_persistent_directory", "Worker: severity", "Python sdk harness")


def _mmfeat(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def _levels(stderr: str) -> list[str]:
    """The level of each log line (``2026-01-01 00:00:00,000 LEVEL name: message``)."""
    return [line.split()[2] for line in stderr.splitlines() if len(line.split()) > 3 and line.split()[2] in
            ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")]


def test_info_is_shown_by_default_and_log_level_is_obeyed(tmp_path):
    default = _mmfeat("make-sample-corpus", str(tmp_path / "a"), "--n", "2")
    assert default.returncode == 0, default.stderr
    assert "INFO pipelines.sample_corpus: wrote 2 samples to" in default.stderr
    assert not any(noise in default.stderr for noise in BEAM_NOISE), default.stderr
    assert len(default.stderr.splitlines()) == len(_levels(default.stderr)) == 1  # nothing else, in one format

    quiet = _mmfeat("make-sample-corpus", str(tmp_path / "b"), "--n", "2", "--log-level", "WARNING")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_each_warning_once_and_progress_with_worker_processes(tmp_path):
    manifest = make_sample_corpus(str(tmp_path / "corpus"), n=4, seed=0)
    with open(manifest, encoding="utf-8") as handle:
        texts = [row["id"] for row in map(json.loads, handle) if row.get("text")]
    # Every text is longer than 4 bytes: each worker warns once per sample it reads.
    done = _mmfeat("extract", "--manifest", manifest, "--output", str(tmp_path / "out"), "--no-embed", "--workers", "2",
                   "--max-text-bytes", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    warnings = [line for line in lines if " WARNING " in line]
    assert len(texts) == 4 and len(warnings) == len(texts), done.stderr  # each once (it was twice: stderr + forwarded)
    assert sorted(line.split("WARNING transforms.extract_sample: ")[1].split(":")[0] for line in warnings) == sorted(texts)
    assert len(lines) == len(set(lines)), "a line was printed twice"
    assert any("INFO transforms.extract_sample_fn: extracted" in line for line in lines), done.stderr  # from a worker
    assert any("INFO schemas.cache.commit: run" in line for line in lines), done.stderr  # from the launcher
    assert not any(noise in done.stderr for noise in BEAM_NOISE), done.stderr
    assert "samples   4 (ok 4" in done.stdout


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (children, their children, ...)."""
    parents = {int(name): _parent(int(name)) for name in os.listdir("/proc") if name.isdigit()}
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier and _alive(child)]
        found += below
        frontier = below
    return found


def _wait_for(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_killing_the_launcher_leaves_no_worker_process(tmp_path):
    manifest = make_sample_corpus(str(tmp_path / "corpus"), n=12, seed=0)
    log = open(tmp_path / "stderr.txt", "w+", encoding="utf-8")
    launcher = subprocess.Popen([SCRIPT, "extract", "--manifest", manifest, "--output", str(tmp_path / "out"), "--no-embed",
                                 "--workers", "2"], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    try:
        def processes() -> tuple[list[int], list[int]]:  # the process that forks the workers, and the workers
            ours = [pid for pid in _descendants(launcher.pid) if "runners.worker_main" in _cmdline(pid)]
            forking = [pid for pid in ours if _parent(pid) == launcher.pid]
            return forking, [pid for pid in ours if _parent(pid) in forking]

        def working() -> bool:  # both workers started, and one of them is extracting samples
            forking, workers = processes()
            return len(forking) == 1 and len(workers) == 2 and "extracted" in (tmp_path / "stderr.txt").read_text(encoding="utf-8")

        assert _wait_for(lambda: working() or launcher.poll() is not None, timeout_s=240)
        assert launcher.poll() is None, "the run ended before it could be killed mid-run"
        started = _descendants(launcher.pid)
        # The forking process is the launcher's own child, the workers are its children: no shell in between that
        # would outlive either.
        forking, workers = processes()
        assert len(forking) == 1 and len(workers) == 2, [_cmdline(pid) for pid in started]
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        killed_at = time.monotonic()
        assert _wait_for(lambda: not any(_alive(pid) for pid in started), timeout_s=10), "a worker outlived the launcher"
        print(f"workers gone {time.monotonic() - killed_at:.2f} s after the SIGKILL")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()
