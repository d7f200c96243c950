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


def write_vector_cache(folder: str, *, n: int, dim: int = 1024, files: int = 8, row_group_size: int = 1024, seed: int = 0) -> None:
    """A cache holding only ``samples`` (a binary ``label``) and one video embedding set of ``n`` float32 rows of ``dim``.

    Written straight with pyarrow, ``files`` files, so large caches are quick to make. Dimension 0 is
    ``label * 4`` plus noise (Bayes accuracy about 0.98); the others are noise.
    """
    import os

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(folder, "samples"))
    embeddings = os.path.join(folder, "embeddings", "video", "synthetic-0")
    os.makedirs(embeddings)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    ids = [f"s{i:08d}" for i in range(n)]
    pq.write_table(pa.table({"sample_id": ids, "status": ["ok"] * n, "manifest_ok": [True] * n, "label": labels}),
                   os.path.join(folder, "samples", "part-0.parquet"))
    for part in range(files):
        rows = slice(part * n // files, (part + 1) * n // files)
        values = rng.standard_normal((rows.stop - rows.start, dim)).astype(np.float32)
        values[:, 0] += 4 * labels[rows]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim)
        pq.write_table(pa.table({"sample_id": ids[rows], "vector": vectors}), os.path.join(embeddings, f"part-{part}.parquet"),
                       row_group_size=row_group_size)
