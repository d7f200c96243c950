"""Caches for trainer tests: sample corpora extracted by mmfeat, and synthetic tables committed through ``schemas.cache``."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from pipelines.sample_corpus import make_sample_corpus
from runners.cli import main
from schemas.cache import RunCommit, RunInfo, commit_run, new_attempt, write_data_file


def extract_sample_cache(tmp_path_factory, *, n: int, seed: int, image_encoder: Optional[str] = None, extra: Optional[list[str]] = None) -> str:
    """Make a sample corpus of ``n`` clips and extract it with the default encoders (or another image encoder, and ``extra`` flags)."""
    corpus = make_sample_corpus(str(tmp_path_factory.mktemp("corpus")), n=n, seed=seed)
    output = str(tmp_path_factory.mktemp("cache") / "cache")
    flags = (["--image-encoder", image_encoder] if image_encoder else []) + (extra or [])
    if main(["extract", "--manifest", corpus, "--output", output, "--log-level", "WARNING", *flags]) != 0:
        raise RuntimeError("extracting the sample corpus failed")
    return output


def commit_tables(cache: str, parts: dict[str, list[pa.Table]], *, run_id: str = "synthetic",
                  descriptions: Optional[dict[str, dict[str, Any]]] = None) -> RunInfo:
    """Commit ``parts`` (per table, the tables of its data files) to ``cache`` as one run, through ``schemas.cache``.

    A run needs a ``samples`` table: without one in ``parts``, an empty one is committed.
    """
    attempt = new_attempt(run_id)
    parts = {"samples": [pa.table({"sample_id": pa.array([], pa.string())})], **parts}
    files = [write_data_file(cache, table, f"{attempt}-part-{number:05d}.parquet", data)
             for table, tables in parts.items() for number, data in enumerate(tables)]
    return commit_run(cache, RunCommit(run_id=run_id, attempt=attempt, files=files, schemas={t: data[0].schema for t, data in parts.items()},
                                       descriptions=descriptions or {}))


def write_vector_cache(folder: str, *, n: int, dim: int = 1024, rows_per_file: int = 1024, seed: int = 0) -> None:
    """A cache holding only ``samples`` (a binary ``label``) and one video embedding set of ``n`` float32 rows of ``dim``,
    in files of ``rows_per_file`` rows (so that a dask partition can be as small as one file), committed as one run.

    Dimension 0 is ``label * 4`` plus noise (Bayes accuracy about 0.98); the others are noise.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    ids = [f"s{i:08d}" for i in range(n)]
    samples = pa.table({"sample_id": ids, "status": ["ok"] * n, "manifest_ok": [True] * n, "label": labels})
    vectors = []
    for start in range(0, n, rows_per_file):
        rows = slice(start, min(n, start + rows_per_file))
        values = rng.standard_normal((rows.stop - rows.start, dim)).astype(np.float32)
        values[:, 0] += 4 * labels[rows]
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, values.size + 1, dim, dtype=np.int32)), pa.array(values.ravel()))
        vectors.append(pa.table({"sample_id": ids[rows], "vector": column}))
    table = "embeddings/video/synthetic-0"
    commit_tables(folder, {"samples": [samples], table: vectors},
                  descriptions={table: {"dim": dim, "modality": "video", "encoder": "synthetic", "encoder_fingerprint": "0"}})
