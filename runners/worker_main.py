"""Entry point of the worker processes of ``mmfeat extract --runner direct --workers N``.

Beam's own ``multi_processing`` mode starts ``sdk_worker_main`` under a shell: a SIGKILL of the launcher left
both (about 180 MB a worker) running, and every worker printed Beam's import warning and each of its log lines
twice (once on its stderr, once forwarded to the launcher). This entry point is started with ``exec`` (the
launcher is its parent), sets up logging like the launcher's (each line once, on the stderr it shares with the
launcher), makes the process end with the launcher (``runners.worker_guard``), then runs Beam's SDK harness.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from runners import logging_setup
from runners.worker_guard import guard_worker

MODULE = "runners.worker_main"


def worker_command(launcher_pid: int, log_level: str) -> str:
    """The shell command Beam runs to start one worker (``exec``: no shell stays between launcher and worker).

    ``-P`` keeps the current directory off ``sys.path``: the worker imports the installed mmfeat, as the launcher does.
    """
    return (f"exec {shlex.quote(sys.executable)} -P -m {MODULE} "
            f"--launcher-pid {int(launcher_pid)} --log-level {shlex.quote(log_level)}")


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=MODULE, description="a Beam SDK worker process of mmfeat extract")
    parser.add_argument("--launcher-pid", type=int, required=True, help="pid of the mmfeat process that started this worker")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Set up logging and the launcher guard, then serve Beam's control plane until the launcher is done."""
    args = _parse(argv)
    logging_setup.install_handler()
    logging_setup.configure(args.log_level)
    guard_worker(args.launcher_pid)
    # This worker's stderr is the launcher's: forwarding its records to the launcher as well printed them twice.
    os.environ.pop("LOGGING_API_SERVICE_DESCRIPTOR", None)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv[:1])


if __name__ == "__main__":
    main()
