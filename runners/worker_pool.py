"""Worker processes of ``--workers N`` started before the launcher builds its pipeline (warm workers).

A worker process spends about 1.3 s importing Beam and the media stack before it does any work, and Beam starts
its workers only once the pipeline runs, after the launcher's own imports, checks and graph (about 1.7 s): the two
added up on every ``--workers`` run. So ``--workers N`` starts one process first (``WarmWorkers``), before the
launcher imports Beam: it binds N Unix sockets in a private folder, imports what a worker needs while the launcher
imports too, then forks N workers, each waiting on its socket (``runners.worker_main``). One import for N workers:
started as N interpreters, they each spent 1.3-2 CPU-s importing, on 2 cores at the same time as the launcher, which
held back the work by about 0.5 s; forked, they share the imported modules' memory until they write it.

When Beam starts a worker (``runners.worker_runner``), ``run_worker`` claims a waiting worker's socket (an atomic
rename, so two never share one), hands it the environment Beam sets for a worker (its control endpoint, options,
worker id) and waits for the worker's exit status. With no waiting worker left it starts a new worker process (the
cold start). The warm workers end with the launcher (``runners.worker_guard``: each with the process that forked
it, which ends with the launcher); ``WarmWorkers.close`` ends those a run did not use.

This module imports nothing of Beam's: the launcher starts the pool before it imports Beam.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Mapping, Optional

from runners.worker_main import worker_argv, worker_thread_env

logger = logging.getLogger(__name__)

SOCKET_SUFFIX = ".sock"
SOCKET_PATH_BYTES = 107
"""The longest path a Unix socket may have (Linux; 103 on macOS): the sockets' folder is made short enough."""


class WarmWorkers:
    """``count`` worker processes, forked by a process started now, each waiting on a socket of ``folder`` for the run
    that uses it.

    Args:
        count: workers to start; launcher_pid: this process (the workers end with it); log_level: theirs;
        threads: each worker's decode and BLAS threads (``worker_thread_env``).
    """

    def __init__(self, count: int, *, launcher_pid: int, log_level: str, threads: int) -> None:
        self.folder = _sockets_folder()
        self.threads = threads
        sockets = [arg for index in range(count) for arg in ("--wait-on", os.path.join(self.folder, f"{index}{SOCKET_SUFFIX}"))]
        self._forking = subprocess.Popen(worker_argv(launcher_pid, log_level, extra=sockets),
                                         env={**os.environ, **worker_thread_env(threads)})

    def close(self) -> None:
        """Ends the workers no run claimed (those a run used have exited with it; the others end with the process that
        forked them) and removes the folder. Idempotent."""
        if self._forking.poll() is None:
            self._forking.kill()
        self._forking.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _claim(pool: str) -> Optional[str]:
    """The socket of a waiting worker, renamed so that no other claims it; ``None`` when none is left."""
    for name in sorted(os.listdir(pool)):
        if not name.endswith(SOCKET_SUFFIX):
            continue
        claimed = os.path.join(pool, f"{name}.claimed-{threading.get_ident()}")
        try:
            os.rename(os.path.join(pool, name), claimed)
        except OSError:  # another worker start claimed it first
            continue
        return claimed
    return None


def run_worker(environment: Mapping[str, str], *, launcher_pid: int, log_level: str, threads: int, pool: Optional[str]) -> int:
    """One SDK worker of a run, until it ends; returns its exit status. ``environment``: what Beam tells a worker (its
    control endpoint, options and id). A warm worker waiting in ``pool`` gets it, claimed by an atomic rename (two
    never share one); with none left (or no pool), a new process runs one (the cold start, ``threads`` threads)."""
    claimed = _claim(pool) if pool and os.path.isdir(pool) else None
    if claimed is not None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            try:
                connection.connect(claimed)
            except OSError as error:  # the process that forks them failed (it said why): start one instead
                logger.warning("no warm worker at %s (%s): starting a new worker process", claimed, error)
            else:
                connection.sendall(json.dumps(dict(environment)).encode("utf-8") + b"\n")
                status = connection.makefile("rb").readline().strip()  # empty: the worker died without saying
                return int(status) if status.lstrip(b"-").isdigit() else 1
    return subprocess.run(worker_argv(launcher_pid, log_level), env={**os.environ, **environment, **worker_thread_env(threads)},
                          check=False).returncode


def _sockets_folder() -> str:
    """A new private folder for the sockets: in the temporary folder, or in ``/tmp`` where that one's path leaves too
    little room for the sockets' names (``{index}.sock.claimed-{thread}``, 40 bytes)."""
    base = tempfile.gettempdir()
    if len(base) + 64 > SOCKET_PATH_BYTES and os.access("/tmp", os.W_OK):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="mmfeat-workers-", dir=base)
