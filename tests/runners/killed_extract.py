"""``python -m tests.runners.killed_extract MOMENT ARGS...``: ``mmfeat extract ARGS`` that SIGKILLs itself at MOMENT.

A kill from inside at a named point is the same, for the cache, as ``kill -9`` from outside at that moment, and
never misses it. Moments: ``before-writing`` (the cache index is read, no data file is written yet), ``mid-run``
(the workers have written some data files), ``after-workers`` (every data file written and listed, nothing
committed), ``between-table-commits`` (the first table committed, ``samples`` not), ``after-samples-commit``.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(module: Any, name: str, *, after_calls: int = 0, after_return: bool = False) -> None:
    original: Callable = getattr(module, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > after_calls and not after_return:
            _die()
        result = original(*args, **kwargs)
        if after_return:
            _die()
        return result

    setattr(module, name, wrapper)


def main(argv: list[str]) -> int:
    import pipelines.extract as extract
    import schemas.cache.commit as commit
    import transforms.parquet_sink as sink
    from runners.cli import main as mmfeat

    moment, args = argv[0], argv[1:]
    if moment == "before-writing":
        _kill_on_call(extract, "ExtractCorpus")  # the graph is being built: no worker has written yet
    elif moment == "mid-run":
        _kill_on_call(sink.ParquetRowWriter, "close", after_calls=2)  # every data file (a chunk's, a shard's) is closed so
    elif moment == "after-workers":
        _kill_on_call(extract, "read_pending")
    elif moment == "between-table-commits":
        _kill_on_call(commit, "_commit_table", after_calls=1)
    elif moment == "after-samples-commit":
        _kill_on_call(extract, "commit_run", after_return=True)
    else:
        raise SystemExit(f"unknown moment {moment}")
    return mmfeat(["extract", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
