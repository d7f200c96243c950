"""Sample corpora extracted into caches, for trainer tests (each test module builds the one it needs)."""
from __future__ import annotations

from typing import Optional

from pipelines.sample_corpus import make_sample_corpus
from runners.cli import main


def extract_sample_cache(tmp_path_factory, *, n: int, seed: int, image_encoder: Optional[str] = None, extra: Optional[list[str]] = None) -> str:
    """Make a sample corpus of ``n`` clips and extract it with the default encoders (or another image encoder, and ``extra`` flags)."""
    corpus = make_sample_corpus(str(tmp_path_factory.mktemp("corpus")), n=n, seed=seed)
    output = str(tmp_path_factory.mktemp("cache") / "cache")
    flags = (["--image-encoder", image_encoder] if image_encoder else []) + (extra or [])
    if main(["extract", "--manifest", corpus, "--output", output, "--log-level", "WARNING", *flags]) != 0:
        raise RuntimeError("extracting the sample corpus failed")
    return output
