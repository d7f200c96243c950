"""Logging of the ``mmfeat`` command line and of its worker processes: one handler on stderr, each record once.

Importing Beam logs a warning on the root logger (``apitools not found``, harmless without the GCP extras); with
no handler installed yet, that call configures the root logger at WARNING, and a later ``logging.basicConfig``
does nothing: INFO never showed. ``install_handler`` therefore runs before Beam is imported (at the top of
``runners.cli`` and of the worker entry point), and ``configure`` sets the level ``--log-level`` asks for.

This module imports nothing of Beam's (nor of ours).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

QUIET_LOGGERS = ("apache_beam", "distributed")
"""Loggers shown at WARNING and above unless ``--log-level DEBUG`` (their INFO lines are per-bundle noise)."""

HARMLESS_MESSAGES = (
    "apitools not found",  # Beam without its GCP extras, on every import: nothing mmfeat needs is missing
    "No semi_persistent_directory found",  # every local Beam worker process: there is no staged session to load
)
"""Starts of messages dropped at every level: they carry no information for a user of mmfeat."""


class HarmlessMessageFilter(logging.Filter):
    """Drops the records whose message starts with one of ``HARMLESS_MESSAGES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(HARMLESS_MESSAGES))


class StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` that writes to the ``sys.stderr`` of the moment a record is emitted (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


_FILTER = HarmlessMessageFilter()
_handler: Optional[StderrHandler] = None


DASK_LOGGING_VARIABLE = "DASK_LOGGING__DISTRIBUTED"
"""dask.distributed sets its loggers' levels from this when it is imported (here and in cluster workers)."""

_DASK_LEVEL_OURS = "MMFEAT_DASK_LOGGING"
"""Where ``_quiet_dask`` notes the value it set, to tell it from one the user set."""


def _quiet_dask(level: str) -> None:
    """Have dask.distributed log at WARNING (DEBUG under ``--log-level DEBUG``), unless the user's environment says otherwise.

    The variable is read when ``dask`` is imported, which may already have happened (``trainer`` imports it):
    then dask's config is updated too; ``distributed`` applies it when it is imported, for a Dask runner.
    """
    if DASK_LOGGING_VARIABLE in os.environ and os.environ.get(_DASK_LEVEL_OURS) != os.environ[DASK_LOGGING_VARIABLE]:
        return  # set by the user
    value = "debug" if level == "DEBUG" else "warning"
    os.environ[DASK_LOGGING_VARIABLE] = os.environ[_DASK_LEVEL_OURS] = value
    dask_config = sys.modules.get("dask.config")
    if dask_config is not None:
        dask_config.set({"logging.distributed": value})


def install_handler() -> None:
    """Before Beam is imported: drop its harmless import warning, and own the root logger when nobody does.

    When the root logger has no handler (a console script), mmfeat's stderr handler is installed at WARNING
    until ``configure`` runs. When something else configured logging first (pytest, an application that calls
    ``runners.cli.main``), its handlers are left alone. Calling this again does nothing.
    """
    global _handler
    _quiet_dask("INFO")
    root = logging.getLogger()
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)  # records logged on the root logger itself, as Beam's import warning is
    if _handler is None and not root.handlers:
        _handler = StderrHandler()
        _handler.setFormatter(logging.Formatter(LOG_FORMAT))
        _handler.addFilter(_FILTER)  # records propagated from named loggers
        root.addHandler(_handler)


def owns_root_logger() -> bool:
    """True when ``install_handler`` installed mmfeat's handler (nobody else had configured logging)."""
    return _handler is not None and _handler in logging.getLogger().handlers


def configure(level: str) -> None:
    """Show records at ``level`` (``DEBUG``, ``INFO``, ...) and above; Beam's and dask's below WARNING only at DEBUG."""
    install_handler()
    _quiet_dask(level)
    numeric = logging.getLevelName(level)
    if owns_root_logger():
        logging.getLogger().setLevel(numeric)
        _handler.setLevel(numeric)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
