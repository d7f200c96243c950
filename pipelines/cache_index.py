"""What an existing cache already holds, read on the launcher before an incremental run."""
from __future__ import annotations

import collections
import logging

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.run_report import embedding_tables, read_columns, table_files
from schemas.errors import ConfigError
from schemas.tables import SCHEMA_VERSION
from transforms.extract_sample import KnownSample

logger = logging.getLogger(__name__)


def check_schema_version(directory: str) -> None:
    """Refuse a cache written with another schema version. Raises ``ConfigError``."""
    files = table_files(directory, "samples")
    if not files:
        return
    with FileSystems.open(files[0]) as handle:
        metadata = pq.read_schema(handle).metadata or {}
    found = metadata.get(b"mmfeat.schema_version", b"?").decode()
    if found != SCHEMA_VERSION:
        raise ConfigError(
            f"--output {directory} holds a cache of schema version {found}, this mmfeat writes {SCHEMA_VERSION}; "
            "use a new --output or pass --overwrite"
        )


def known_samples(directory: str) -> dict[str, KnownSample]:
    """Per sample id: content hash, feature fingerprint, modalities with features and embeddings already cached."""
    samples = read_columns(
        table_files(directory, "samples"),
        ["sample_id", "content_hash", "features_fingerprint", "manifest_hash", "manifest_ok", "n_frames", "n_audio_windows", "n_tokens"],
    )
    if samples.num_rows == 0:
        return {}
    embedded: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for table in embedding_tables(directory):
        rows = read_columns(table_files(directory, table), ["sample_id", "modality", "encoder_fingerprint"]).to_pylist()
        for row in rows:
            embedded[row["sample_id"]].add((row["modality"], row["encoder_fingerprint"]))
    known = {}
    for row in samples.to_pylist():
        if not row["manifest_ok"]:
            continue
        with_features = {m for m, n in (("video", row["n_frames"]), ("audio", row["n_audio_windows"]), ("text", row["n_tokens"])) if n}
        known[row["sample_id"]] = KnownSample(
            content_hash=row["content_hash"],
            features_fingerprint=row["features_fingerprint"],
            manifest_hash=row["manifest_hash"],
            modalities_with_features=frozenset(with_features),
            embedded=frozenset(embedded.get(row["sample_id"], ())),
        )
    logger.info("cache at %s already holds %d samples", directory, len(known))
    return known
