"""What a run reads, checked on the launcher without reading a row: manifest shards or a folder.

Two inputs: ``--manifest``, a JSONL or CSV file or a glob of them
(``gs://b/manifests/*.jsonl``; one row per sample: ``id``, any of
``video``/``audio``/``text``, and extra columns), or ``--input``, a folder
whose files are grouped by stem (``a.mp4``, ``a.wav``, ``a.txt`` -> sample
``a``). The rows themselves are read by the pipeline's workers
(``transforms.manifest_rows``), so the launcher's work does not grow with
the corpus: it lists the shards (their number, not their rows) and checks
that there is something to read.
"""
from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from schemas.errors import ConfigError
from transforms.manifest_rows import MANIFEST_EXTENSIONS, Shard

logger = logging.getLogger(__name__)

FOLDER_SHARDS = 8
"""Files per table written for a folder input when ``--num-shards`` is 0 (its size is not known before the run)."""
MANIFEST_BYTES_PER_SHARD = 10_000
"""About 100 manifest rows: one file per table per this many manifest bytes when ``--num-shards`` is 0."""


@dataclass(frozen=True)
class Corpus:
    """What a run reads.

    Attributes:
        source: the ``--manifest`` glob or the ``--input`` folder.
        shards: the manifest files, sorted (their rank orders rows across files); empty for a folder.
        folder: the ``--input`` folder, or ``None``.
    """

    source: str
    shards: tuple[Shard, ...] = ()
    folder: Optional[str] = None

    def auto_num_shards(self) -> int:
        """Files per table when ``--num-shards`` is 0: about one per 100 manifest rows, between 1 and 64."""
        if self.folder is not None:
            return FOLDER_SHARDS
        return max(1, min(64, math.ceil(sum(s.size for s in self.shards) / MANIFEST_BYTES_PER_SHARD)))


def open_manifest(pattern: str, *, allow_empty: bool = False) -> Corpus:
    """The manifest shards ``pattern`` (a file or a glob) matches.

    Raises:
        ConfigError: an unknown extension, no file matched, or (without ``allow_empty``) every shard is empty.
    """
    if not pattern.lower().endswith(MANIFEST_EXTENSIONS):
        raise ConfigError(f"--manifest: {pattern} must end in .jsonl, .ndjson, .json (JSON lines) or .csv")
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # Beam raises BeamIOError (or OSError) for an unreachable location
        raise ConfigError(f"--manifest: cannot list {pattern} ({error})") from error
    if not matched:
        raise ConfigError(f"--manifest: no such file: {pattern}" if not any(c in pattern for c in "*?[")
                          else f"--manifest: {pattern} matches no file")
    kinds = {posixpath.splitext(m.path)[1].lower() == ".csv" for m in matched}
    if len(kinds) > 1:
        raise ConfigError(f"--manifest: {pattern} matches both CSV and JSON lines files; use one format")
    shards = tuple(Shard(uri=m.path, rank=rank, size=m.size_in_bytes) for rank, m in enumerate(sorted(matched, key=lambda m: m.path)))
    if not allow_empty and all(shard.size == 0 for shard in shards):
        raise ConfigError(f"--manifest: {pattern} is empty (no rows to extract); pass --allow-empty to run on an empty "
                          "manifest (a scheduled job whose input may be empty)")
    logger.info("--manifest: %d shards, %d bytes", len(shards), sum(s.size for s in shards))
    return Corpus(source=pattern, shards=shards)


def open_folder(uri: str) -> Corpus:
    """A folder input, checked to exist and hold a file (its files are listed by the pipeline).

    Raises:
        ConfigError: the folder cannot be listed or holds no file.
    """
    pattern = posixpath.join(uri.rstrip("/"), "*")
    try:
        matched = FileSystems.match([pattern], limits=[1])[0].metadata_list
    except Exception as error:  # Beam raises BeamIOError (or OSError) for a missing folder
        raise ConfigError(f"--input: cannot list {uri} ({error})") from error
    if not matched:
        raise ConfigError(f"--input: {uri} holds no file")
    return Corpus(source=uri, folder=uri)
