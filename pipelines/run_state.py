"""Run bookkeeping in a cache folder: one lock, and a record of every run.

* ``{output}/_lock``: held for the whole run (pid, host, run id). A second
  run on the same cache fails before starting; a lock whose process is gone
  (same host, pid not alive) is taken over with a warning.
* ``{output}/_runs/{run_id}.json``: ``running`` when a run starts,
  ``committed`` (with its summary) or ``failed`` (with the error) when it
  ends. A ``running`` record whose process is gone is reported as ``died``.

Local paths get an exclusive create for the lock; on object stores the lock
is a best effort (check, then create), so schedule one writer per cache there.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems

from schemas.errors import ConfigError
from transforms.media_io import is_local

logger = logging.getLogger(__name__)

RUNS_DIR = "_runs"
LOCK_FILE = "_lock"
RUNNING, COMMITTED, FAILED, DIED = "running", "committed", "failed", "died"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One run of ``mmfeat extract`` on a cache."""

    run_id: str
    state: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: str = field(default_factory=now)
    finished_at: Optional[str] = None
    error: Optional[str] = None
    summary: Optional[dict[str, Any]] = None

    def alive(self) -> bool:
        """Whether the process of this run still exists (only knowable on the same host)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def effective_state(self) -> str:
        """``died`` for a ``running`` record whose process is gone, else the recorded state."""
        return DIED if self.state == RUNNING and not self.alive() else self.state


def _write_json(path: str, content: dict[str, Any]) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with FileSystems.create(temporary) as handle:
        handle.write(json.dumps(content, indent=2, sort_keys=True).encode("utf-8"))
    FileSystems.rename([temporary], [path])


def _read_json(path: str) -> dict[str, Any]:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_record(output: str, record: RunRecord) -> None:
    directory = FileSystems.join(output, RUNS_DIR)
    if not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
    _write_json(FileSystems.join(directory, f"{record.run_id}.json"), asdict(record))


def read_records(output: str) -> list[RunRecord]:
    """Every run recorded in ``output``, oldest first."""
    pattern = FileSystems.join(output, RUNS_DIR, "*.json")
    records = [RunRecord(**_read_json(m.path)) for m in FileSystems.match([pattern])[0].metadata_list]
    return sorted(records, key=lambda r: (r.started_at, r.run_id))


class OutputLock:
    """Exclusive use of a cache folder by one run (a context manager)."""

    def __init__(self, output: str, run_id: str) -> None:
        self.output = output
        self.path = FileSystems.join(output, LOCK_FILE)
        self.record = RunRecord(run_id=run_id, state=RUNNING)

    def __enter__(self) -> "OutputLock":
        if not FileSystems.exists(self.output):
            FileSystems.mkdirs(self.output)
        if FileSystems.exists(self.path):
            holder = RunRecord(**_read_json(self.path))
            if holder.alive():
                raise ConfigError(
                    f"--output {self.output} is in use by run {holder.run_id} (pid {holder.pid} on {holder.host}, "
                    f"since {holder.started_at}); wait for it, or delete {self.path} if that process is gone"
                )
            logger.warning("taking over the lock of run %s, whose process (pid %d) is gone", holder.run_id, holder.pid)
            FileSystems.delete([self.path])
        content = json.dumps(asdict(self.record)).encode("utf-8")
        if is_local(self.path):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError as error:
                raise ConfigError(f"--output {self.output} was locked by another run a moment ago; try again") from error
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
        else:
            with FileSystems.create(self.path) as handle:
                handle.write(content)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if FileSystems.exists(self.path):
            FileSystems.delete([self.path])
