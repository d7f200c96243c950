"""Worker processes that end when their launcher ends, even when it is killed with SIGKILL.

SIGKILL cannot be caught, so the launcher cannot stop its workers: each worker watches its parent instead.
Two mechanisms, either of which suffices: Linux's ``PR_SET_PDEATHSIG`` (the kernel kills the worker the moment
its parent dies) and a daemon thread that polls ``os.getppid()`` (a dead parent's children are re-parented),
which also works where ``prctl`` does not exist.

This module imports nothing of Beam's (nor of ours).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process receives when its parent thread dies (linux/prctl.h)."""

EXIT_ORPHANED = 3
"""Exit status of a worker whose launcher is gone."""


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_orphaned(parent_pid: int) -> None:
    logger.warning("the launcher (pid %d) is gone: worker %d exits", parent_pid, os.getpid())
    logging.shutdown()
    os._exit(EXIT_ORPHANED)


def _watch(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    _exit_orphaned(parent_pid)


def start_parent_watch(parent_pid: int, *, interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this process (``os._exit``) within ``interval_s`` of ``parent_pid`` ceasing to be its parent."""
    thread = threading.Thread(target=_watch, args=(parent_pid, interval_s), name="mmfeat-parent-watch", daemon=True)
    thread.start()
    return thread


def guard_worker(parent_pid: int, *, interval_s: float = 1.0) -> None:
    """Make this process end with ``parent_pid``, its launcher; end it now when the launcher is already gone.

    Args:
        parent_pid: the launcher's pid, which must be this process's parent (the worker is started with ``exec``,
            not as a grandchild under a shell that would outlive the launcher).
        interval_s: how often the watch thread looks.
    """
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # died before the kernel's watch was set
        _exit_orphaned(parent_pid)
    start_parent_watch(parent_pid, interval_s=interval_s)
