"""``runners.worker_guard``: a worker ends when its parent does, by each of its two mechanisms; the worker command."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from runners.worker_guard import EXIT_ORPHANED
from runners.worker_main import worker_argv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _orphan_after_parent_exits(guard: str) -> int:
    """The pid of a grandchild that ran ``guard`` (with ``parent`` = its parent's pid) before its parent exited."""
    child = textwrap.dedent(f"""
        import os, sys, time
        from runners.worker_guard import set_parent_death_signal, start_parent_watch
        parent = os.getppid()
        {guard}
        print("ready", flush=True)
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout.readline() == "ready\\n"
        print(child.pid, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        os.kill(pid, 9)
        return False
    return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_the_watch_thread_ends_a_worker_whose_parent_is_gone():
    orphan = _orphan_after_parent_exits("start_parent_watch(parent, interval_s=0.05)")
    assert _gone_within(orphan, timeout_s=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_parent_death_signal_ends_a_worker_whose_parent_is_gone():
    orphan = _orphan_after_parent_exits("assert set_parent_death_signal()")
    assert _gone_within(orphan, timeout_s=2)


def test_without_a_guard_the_orphan_survives():
    """The control: what the two tests above detect does not happen by itself."""
    orphan = _orphan_after_parent_exits("pass")
    assert not _gone_within(orphan, timeout_s=0.5)


def test_a_worker_whose_launcher_is_already_gone_exits_at_once():
    code = "from runners.worker_guard import guard_worker; guard_worker(1); print('still running')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == EXIT_ORPHANED and "still running" not in done.stdout
    assert "the launcher (pid 1) is gone" in done.stderr


def test_a_worker_imports_the_installed_mmfeat_and_carries_the_launcher_pid():
    argv = worker_argv(4321, "WARNING")  # started by the launcher itself, no shell between: the launcher is its parent
    assert argv[1:] == ["-P", "-m", "runners.worker_main", "--launcher-pid", "4321", "--log-level", "WARNING"]
