"""What an existing cache already holds, read on the launcher (through a consistent view) before an incremental run."""
from __future__ import annotations

import collections
import logging

from schemas.cache import CacheView
from transforms.extract_sample import KnownSample

logger = logging.getLogger(__name__)


def known_samples(view: CacheView) -> dict[str, KnownSample]:
    """Per sample id: content hash, feature fingerprint, modalities with features and embeddings already cached."""
    if not view.has("samples"):
        return {}
    samples = view.read(
        "samples",
        ["sample_id", "content_hash", "features_fingerprint", "manifest_hash", "manifest_ok", "n_frames", "n_audio_windows", "n_tokens"],
    )
    embedded: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for table in view.embedding_tables():
        for row in view.read(table, ["sample_id", "modality", "encoder_fingerprint"]).to_pylist():
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
    logger.info("cache at %s already holds %d samples", view.cache, len(known))
    return known
