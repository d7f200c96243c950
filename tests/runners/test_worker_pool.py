"""``runners.worker_pool``: ``--workers N`` starts its workers before the launcher's own work; the run claims them."""
from __future__ import annotations

import glob
import os

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
    assert all(process.poll() is not None for process in pool._processes)
    assert not os.path.exists(pool.folder)


def test_workers_started_for_a_command_that_then_fails_are_ended(tmp_path, pools):
    """A bad manifest is found after the workers started: the command fails as before, and none of them is left."""
    assert main(["extract", "--manifest", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "cache"), "--no-embed",
                 "--workers", "2"]) == 2
    pool, = pools
    assert all(process.poll() is not None for process in pool._processes) and not os.path.exists(pool.folder)


def test_a_worker_start_claims_each_waiting_socket_once_and_none_when_all_are_taken(tmp_path):
    for index in range(2):
        (tmp_path / f"{index}{worker_pool.SOCKET_SUFFIX}").touch()
    claimed = {worker_pool._claim(str(tmp_path)), worker_pool._claim(str(tmp_path))}
    assert len(claimed) == 2 and all(".claimed-" in path for path in claimed)
    assert worker_pool._claim(str(tmp_path)) is None  # the next worker Beam starts is a cold one
