"""Worker processes of ``--workers N`` started before the launcher builds its pipeline (warm workers).

A worker process spends about 1.3 s importing Beam and the media stack before it does any work, and Beam starts
its workers only once the pipeline runs, after the launcher's own imports, checks and graph (about 1.7 s): the two
added up on every ``--workers`` run. So ``--workers N`` starts one process first (``WarmWorkers``), before the
launcher imports Beam: it binds N Unix sockets in a private folder, imports what a worker needs while the launcher
imports too, then forks N workers, each waiting on its socket (``runners.worker_main``). One import for N workers:
started as N interpreters, they each spent 1.3-2 CPU-s importing, on 2 cores at the same time as the launcher, which
held back the work by about 0.5 s; forked, they share the imported modules' memory until they write it.

When Beam starts a worker (the command ``worker_command`` gives it), this module's ``main`` claims a waiting
worker's socket (an atomic rename, so two never share one), hands it the environment Beam set (its control and
logging endpoints, options, worker id), then waits for the worker's exit status and exits with it, as Beam expects
of the process it started. With no waiting worker left it becomes a worker itself (``exec``, the cold start). The
warm workers end with the launcher (``runners.worker_guard``: each with the process that forked it, which ends with
the launcher); ``WarmWorkers.close`` ends those a run did not use.

This module imports nothing of Beam's: the command runs it for each worker, and the launcher starts the pool
before it imports Beam.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from runners.worker_main import worker_argv, worker_command, worker_thread_env, working_directory

MODULE = "runners.worker_pool"
SOCKET_SUFFIX = ".sock"


class WarmWorkers:
    """``count`` worker processes, forked by a process started now, each waiting on a socket of ``folder`` for the run
    that uses it.

    Args:
        count: workers to start; launcher_pid: this process (the workers end with it); log_level: theirs;
        threads: each worker's decode and BLAS threads (``worker_thread_env``).
    """

    def __init__(self, count: int, *, launcher_pid: int, log_level: str, threads: int) -> None:
        self.folder = tempfile.mkdtemp(prefix="mmfeat-workers-")
        self.launcher_pid = launcher_pid
        self.log_level = log_level
        self.threads = threads
        sockets = [arg for index in range(count) for arg in ("--wait-on", os.path.join(self.folder, f"{index}{SOCKET_SUFFIX}"))]
        self._forking = subprocess.Popen(worker_argv(launcher_pid, log_level, extra=sockets),
                                         env={**os.environ, **worker_thread_env(threads)})

    def worker_command(self) -> str:
        """The shell command Beam runs to start one worker: claim a warm one (``main``), else start cold."""
        return worker_command(self.launcher_pid, self.log_level, self.threads, module=MODULE, extra=("--pool", self.folder))

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
        claimed = os.path.join(pool, f"{name}.claimed-{os.getpid()}")
        try:
            os.rename(os.path.join(pool, name), claimed)
        except OSError:  # another worker start claimed it first
            continue
        return claimed
    return None


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=MODULE, description="start one Beam SDK worker of mmfeat extract, warm when one waits")
    parser.add_argument("--pool", required=True, help="the folder of the waiting workers' sockets")
    parser.add_argument("--launcher-pid", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Hand this process's environment to a waiting worker and exit with its status; or become a worker."""
    args = _parse(argv)
    claimed = _claim(args.pool) if os.path.isdir(args.pool) else None
    if claimed is None:
        os.execv(sys.executable, worker_argv(args.launcher_pid, args.log_level))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        with working_directory(args.pool):
            connection.connect(os.path.basename(claimed))
        connection.sendall(json.dumps(dict(os.environ)).encode("utf-8") + b"\n")
        status = connection.makefile("rb").readline().strip()  # empty: the worker died without saying
    sys.exit(int(status) if status.lstrip(b"-").isdigit() else 1)


if __name__ == "__main__":
    main()
