"""The cache: one Delta Lake table per table, read through consistent views, written by whole-run commits.

Everything that knows where a cache's files are lives here: table paths
(``layout``), consistent reading, latest or ``as_of`` a run (``view``),
committing a run (``commit``; the rows it replaces: ``supersede``), and repair, vacuum and compaction
(``maintenance``). It imports neither Beam nor the trainer, so the pipeline,
the trainer and the CLI all go through it.
"""
from schemas.cache.commit import ConcurrentRunError, RunCommit, commit_run, new_attempt
from schemas.cache.layout import DataFile, Replacement, data_folder, pending_uri, table_uri
from schemas.cache.maintenance import (
    DEFAULT_RETENTION_HOURS, Pending, compact, discard_attempt, find_damaged, read_pending, repair, vacuum,
)
from schemas.cache.supersede import DamagedFileError, SupersedeRule, file_rows, replace_file, write_data_file
from schemas.cache.view import CacheView, RunInfo, check_format, runs

__all__ = [
    "CacheView", "ConcurrentRunError", "DEFAULT_RETENTION_HOURS", "DamagedFileError", "DataFile", "Pending", "Replacement",
    "RunCommit", "RunInfo", "SupersedeRule", "check_format", "commit_run", "compact", "data_folder", "discard_attempt",
    "file_rows", "find_damaged", "new_attempt", "pending_uri", "read_pending", "replace_file", "repair", "runs", "table_uri",
    "vacuum", "write_data_file",
]
