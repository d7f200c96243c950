"""Entry point of the worker processes of ``mmfeat extract --runner direct --workers N``.

Beam's own ``multi_processing`` mode starts ``sdk_worker_main`` under a shell: a SIGKILL of the launcher left
both (about 180 MB a worker) running, and every worker printed Beam's import warning and each of its log lines
twice (once on its stderr, once forwarded to the launcher). This entry point is started with ``exec`` (the
launcher is its parent), sets up logging like the launcher's (each line once, on the stderr it shares with the
launcher), makes the process end with the launcher (``runners.worker_guard``), then runs Beam's SDK harness.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import sys
from typing import Optional, Sequence

from runners import logging_setup
from runners.fast_exit import exit_at_once
from runners.worker_guard import guard_worker
from schemas.config import DECODE_THREADS_ENV

MODULE = "runners.worker_main"


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", DECODE_THREADS_ENV)
"""Thread counts set in each worker's environment (BLAS/OpenMP/torch, and mmfeat's video decoder)."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def worker_thread_env(threads: int) -> dict[str, str]:
    """``{variable: str(threads)}`` for ``THREAD_ENV_VARS``: ``threads`` per worker, so N workers on C cores
    (``threads = max(1, C // N)``) do not oversubscribe them."""
    return {name: str(max(1, int(threads))) for name in THREAD_ENV_VARS}


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' decode and BLAS/OpenMP threads: the cores shared out, at least one."""
    return max(1, available_cores() // workers)


def worker_argv(launcher_pid: int, log_level: str, *, module: str = MODULE, extra: Sequence[str] = ()) -> list[str]:
    """The arguments that start one worker: this interpreter, ``-P`` (the current directory off ``sys.path``: the
    worker imports the installed mmfeat, as the launcher does), ``module`` and its arguments, then ``extra``."""
    return [sys.executable, "-P", "-m", module, "--launcher-pid", str(int(launcher_pid)), "--log-level", log_level, *extra]


def worker_command(launcher_pid: int, log_level: str, threads: Optional[int] = None, *, module: str = MODULE,
                   extra: Sequence[str] = ()) -> str:
    """The shell command Beam runs to start one worker: ``worker_argv``, with ``exec`` (no shell stays between
    launcher and worker).

    ``threads``: set ``worker_thread_env(threads)`` in the worker's environment (through ``env``, before Python starts).
    ``module`` and ``extra``: what runs, and its further arguments (``runners.worker_pool`` claims a warm worker).
    """
    prefix = "" if threads is None else "env " + " ".join(f"{k}={v}" for k, v in worker_thread_env(threads).items()) + " "
    return f"exec {prefix}{shlex.join(worker_argv(launcher_pid, log_level, module=module, extra=extra))}"


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=MODULE, description="a Beam SDK worker process of mmfeat extract")
    parser.add_argument("--launcher-pid", type=int, required=True, help="pid of the mmfeat process that started this worker")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--wait-on", help="a warm worker (runners.worker_pool): import, then wait on this Unix socket for a run")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Set up logging and the launcher guard, then serve Beam's control plane until the launcher is done."""
    args = _parse(argv)
    logging_setup.install_handler()
    logging_setup.configure(args.log_level)
    guard_worker(args.launcher_pid)
    _limit_opencv_threads()
    run = _wait_for_run(args.wait_on) if args.wait_on else None
    # This worker's stderr is the launcher's: forwarding its records to the launcher as well printed them twice.
    os.environ.pop("LOGGING_API_SERVICE_DESCRIPTOR", None)
    from apache_beam.runners.worker import sdk_worker_main

    status = 1
    try:
        sdk_worker_main.main(sys.argv[:1])
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else int(done.code is not None)
        raise
    finally:
        if run is not None:  # the process Beam started waits for this (unless Beam already ended it)
            with run, contextlib.suppress(OSError):
                run.sendall(f"{status}\n".encode("ascii"))
    exit_at_once(status)  # the harness has answered every bundle and closed its channels; the launcher stops its workers one by one


def _wait_for_run(path: str) -> socket.socket:
    """Bind ``path``, import what a worker runs (Beam's harness, the extraction), then wait for the run that claims
    this worker (``runners.worker_pool.main``): its environment (Beam's endpoints and options) becomes this process's.
    Returns the connection to send the exit status on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        import apache_beam.runners.worker.sdk_worker_main  # noqa: F401  (the imports are the point: done while waiting)
        import pipelines.extract_graph  # noqa: F401
        import transforms.media_pass  # noqa: F401

        connection, _ = listener.accept()
    os.environ.update(json.loads(connection.makefile("rb").readline()))
    return connection


def _limit_opencv_threads() -> None:
    """OpenCV's own pool (resize, JPEG) to ``$MMFEAT_DECODE_THREADS`` threads, when the launcher set it."""
    threads = os.environ.get(DECODE_THREADS_ENV)
    if threads and threads.isdigit():
        import cv2

        cv2.setNumThreads(int(threads))


if __name__ == "__main__":
    main()
