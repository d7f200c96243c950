"""``runners.worker_pool``: ``--workers N`` starts its workers before the launcher's own work; the run claims them."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from runners import worker_pool
from runners.cli import main
from schemas.cache import CacheView
from tests import media


@pytest.fixture
def pools(monkeypatch):
    """Every ``WarmWorkers`` the command starts, with what its folder held when it was closed."""
    started = []
    close = worker_pool.WarmWorkers.close

    def recording_close(self):
        if not hasattr(self, "seen"):
            self.seen = sorted(os.path.basename(path) for path in glob.glob(os.path.join(self.folder, "*")))
        close(self)

    monkeypatch.setattr(worker_pool.WarmWorkers, "close", recording_close)
    init = worker_pool.WarmWorkers.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(worker_pool.WarmWorkers, "__init__", recording_init)
    return started


def test_a_workers_run_claims_every_warm_worker_and_leaves_no_process(tmp_path, pools):
    """Both workers Beam starts are the warm ones (each socket claimed once: none left unclaimed), the run writes
    its rows, and after the command no worker runs and the pool's folder is gone."""
    media.text(str(tmp_path / "a.txt"), "a few words")
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": "a.txt"}, {"id": "b", "text": "a.txt"}])
    assert main(["extract", "--manifest", manifest, "--output", str(tmp_path / "cache"), "--no-embed", "--workers", "2"]) == 0
    assert CacheView.open(str(tmp_path / "cache")).read("samples").num_rows == 2
    pool, = pools
    assert len(pool.seen) == 2 and all(".sock.claimed-" in name for name in pool.seen), pool.seen
    assert _no_process_names(pool.folder)
    assert not os.path.exists(pool.folder)


def test_workers_started_for_a_command_that_then_fails_are_ended(tmp_path, pools):
    """A bad manifest is found after the workers started: the command fails as before, and none of them is left."""
    assert main(["extract", "--manifest", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "cache"), "--no-embed",
                 "--workers", "2"]) == 2
    pool, = pools
    assert _no_process_names(pool.folder) and not os.path.exists(pool.folder)


def test_a_worker_start_claims_each_waiting_socket_once_and_none_when_all_are_taken(tmp_path):
    for index in range(2):
        (tmp_path / f"{index}{worker_pool.SOCKET_SUFFIX}").touch()
    claimed = {worker_pool._claim(str(tmp_path)), worker_pool._claim(str(tmp_path))}
    assert len(claimed) == 2 and all(".claimed-" in path for path in claimed)
    assert worker_pool._claim(str(tmp_path)) is None  # the next worker Beam starts is a cold one


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_LAUNCHER = """
import atexit, os, sys
from runners.cli import main
marker = sys.argv[1]
atexit.register(lambda: open(marker, "a").write(f"{os.getpid()}\\n"))  # the launcher's own exit callback
status = main(["extract", "--manifest", sys.argv[2], "--output", sys.argv[3], "--no-embed", "--workers", "2", "--log-level", "INFO"])
sys.exit(status)
"""


def _no_process_names(text: str, wait_s: float = 5.0) -> bool:
    """No process (a zombie has no command line) holds ``text`` in its command line, within ``wait_s`` (the warm
    workers keep the command line of the process that forked them, and end with it)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        found.append(int(pid))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return not found
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm workers are forked on Linux only")
def test_the_warm_workers_are_forked_after_one_import_and_run_none_of_the_launcher_s_exit_callbacks(tmp_path):
    """A command as users start it: one process imports and forks the 2 workers, the run writes every sample, the
    launcher's exit callback runs once (in the launcher), and no worker is left once the command is done."""
    media.text(str(tmp_path / "a.txt"), "a few words")
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": f"s{i}", "text": "a.txt"} for i in range(4)])
    output, marker = str(tmp_path / "cache"), str(tmp_path / "exit-callbacks")
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, marker, manifest, output], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "2 warm workers forked after" in stderr and "starting a new worker process" not in stderr
    assert CacheView.open(output).read("samples").num_rows == 4
    with open(marker) as lines:
        assert len(lines.read().split()) == 1
    assert _no_process_names(f"--launcher-pid\0{launcher.pid}\0")  # the forking process and its workers carry it


def test_a_sockets_folder_leaves_room_for_the_sockets_names_under_a_long_temporary_folder(tmp_path, monkeypatch):
    """A Unix socket's path holds 107 bytes at most: under a job's long temporary folder the sockets go to /tmp."""
    long = tmp_path / ("x" * 80)
    long.mkdir()
    monkeypatch.setattr(worker_pool.tempfile, "tempdir", str(long))
    folder = worker_pool._sockets_folder()
    try:
        assert len(os.path.join(folder, f"0.sock.claimed-{2 ** 64}")) <= worker_pool.SOCKET_PATH_BYTES
    finally:
        os.rmdir(folder)
