"""Entry point of the worker processes of ``mmfeat extract --runner direct --workers N``.

Beam's own ``multi_processing`` mode starts ``sdk_worker_main`` under a shell: a SIGKILL of the launcher left
both (about 180 MB a worker) running, and every worker printed Beam's import warning and each of its log lines
twice (once on its stderr, once forwarded to the launcher). This entry point is started by the launcher itself
(``runners.worker_runner``: no shell in between), sets up logging like the launcher's (each line once, on the
stderr it shares with the launcher), makes the process end with the launcher (``runners.worker_guard``), then runs
Beam's SDK harness.
With ``--wait-on`` it imports once and forks the warm workers instead (``runners.worker_pool``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional, Sequence

from runners import logging_setup
from runners.fast_exit import exit_at_once
from runners.worker_guard import guard_worker
from schemas.config import DECODE_THREADS_ENV, available_cores

logger = logging.getLogger(__name__)

MODULE = "runners.worker_main"


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", DECODE_THREADS_ENV)
"""Thread counts set in each worker's environment (BLAS/OpenMP/torch, and mmfeat's video decoder)."""


def worker_thread_env(threads: int) -> dict[str, str]:
    """``{variable: str(threads)}`` for ``THREAD_ENV_VARS``: ``threads`` per worker, so N workers on C cores
    (``threads = max(1, C // N)``) do not oversubscribe them."""
    return {name: str(max(1, int(threads))) for name in THREAD_ENV_VARS}


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' decode and BLAS/OpenMP threads: the cores shared out, at least one."""
    return max(1, available_cores() // workers)


def worker_argv(launcher_pid: int, log_level: str, *, extra: Sequence[str] = ()) -> list[str]:
    """The arguments that start one worker (or, with ``--wait-on`` in ``extra``, the warm workers): this interpreter,
    ``-P`` (the current directory off ``sys.path``: the worker imports the installed mmfeat, as the launcher does),
    this module and its arguments."""
    return [sys.executable, "-P", "-m", MODULE, "--launcher-pid", str(int(launcher_pid)), "--log-level", log_level, *extra]


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=MODULE, description="a Beam SDK worker process of mmfeat extract")
    parser.add_argument("--launcher-pid", type=int, required=True, help="pid of the mmfeat process that started this worker")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--wait-on", action="append", default=[],
                        help="warm workers (runners.worker_pool): import once, then fork one worker per Unix socket given, "
                             "each waiting on its socket for a run")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Set up logging and the launcher guard, then serve Beam's control plane until the launcher is done; with
    ``--wait-on``, fork the warm workers and wait for them."""
    args = _parse(argv)
    logging_setup.install_handler()
    logging_setup.configure(args.log_level)
    if args.wait_on:
        exit_at_once(_fork_warm_workers(args.wait_on, args.launcher_pid))
    guard_worker(args.launcher_pid)
    exit_at_once(_serve(None))  # the harness has answered every bundle and closed its channels; the launcher stops its workers one by one


WORKER_MODULES = ("apache_beam.runners.worker.sdk_worker_main", "pipelines.extract_graph", "transforms.media_pass")
"""What a worker runs: Beam's harness and the extraction."""


def _fork_warm_workers(paths: Sequence[str], launcher_pid: int) -> int:
    """Bind a Unix socket at each of ``paths`` (a run that claims one from now on waits for its worker), import
    ``WORKER_MODULES`` once, then fork one worker per socket: each waits on its socket for the run that claims it
    (``runners.worker_pool.run_worker``). This process ends with the launcher, its workers with it; it waits for them and
    returns 0.

    The workers are copies of a process that has only imported: no thread, no thread pool used (a fork copies only
    the calling thread; OpenCV's pool, once used, hangs a copy that resizes it), no CUDA."""
    started = time.monotonic()
    try:
        listeners = [_listen(path) for path in paths]
    except OSError as error:
        logger.error("no warm workers (%s): the run starts its workers itself", error)
        return 1
    for name in WORKER_MODULES:
        importlib.import_module(name)
    gc.freeze()  # the imported objects left out of every collection: no worker's collector writes to (copies) their pages
    workers, forking = [], os.getpid()
    for listener in listeners:
        pid = os.fork()
        if pid == 0:
            for other in listeners:
                if other is not listener:
                    other.close()
            exit_at_once(_serve_claimed(listener, forking))
        workers.append(pid)
        listener.close()
    logger.info("%d warm workers forked after %.1f s of imports", len(workers), time.monotonic() - started)
    guard_worker(launcher_pid)  # now, not before: no thread of its own is copied into the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the launcher's to handle: it ends this process
    for pid in workers:
        os.waitpid(pid, 0)
    return 0


IMPORTED_LATER = ("scipy.fft",)
"""What a warm worker imports after its fork, in a thread, while it waits for its run and starts it: what its first
samples would otherwise import (``scipy.fft``, the first audio's MFCCs: 0.2 s) but the forking process need not, as
its imports are on the run's critical path (the launcher is ready about when its workers are)."""


def _import_later() -> None:
    for name in IMPORTED_LATER:
        importlib.import_module(name)


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    return listener


def _serve_claimed(listener: socket.socket, forking_pid: int) -> int:
    """A forked warm worker: wait on ``listener`` for the run that claims it, serve it; returns the exit status."""
    try:
        guard_worker(forking_pid)  # ends with the process that forked it, which ends with the launcher
        threading.Thread(target=_import_later, name="mmfeat-import-later", daemon=True).start()
        with listener:
            run, _ = listener.accept()
        return _serve(run)
    except BaseException:  # never back into the forking process's code
        logger.exception("warm worker %d failed", os.getpid())
        return 1


def _serve(run: Optional[socket.socket]) -> int:
    """Run Beam's SDK harness until the launcher is done; returns its exit status. ``run``: the connection of the run
    that claimed this warm worker (its environment, Beam's endpoints and options, becomes this process's; the
    status is sent back on it), or ``None`` (a worker process started for the run, with that environment)."""
    if run is not None:
        os.environ.update(json.loads(run.makefile("rb").readline()))
    _limit_opencv_threads()
    # This worker's stderr is the launcher's: forwarding its records to the launcher as well printed them twice.
    os.environ.pop("LOGGING_API_SERVICE_DESCRIPTOR", None)
    from apache_beam.runners.worker import sdk_worker_main

    status = 1
    try:
        sdk_worker_main.main(sys.argv[:1])
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else int(done.code is not None)
    finally:
        if run is not None:  # the process Beam started waits for this (unless Beam already ended it)
            with run, contextlib.suppress(OSError):
                run.sendall(f"{status}\n".encode("ascii"))
    return status


def _limit_opencv_threads() -> None:
    """OpenCV's own pool (resize, JPEG) to ``$MMFEAT_DECODE_THREADS`` threads, when the launcher set it."""
    threads = os.environ.get(DECODE_THREADS_ENV)
    if threads and threads.isdigit():
        import cv2

        cv2.setNumThreads(int(threads))


if __name__ == "__main__":
    main()
