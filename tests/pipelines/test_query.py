"""Search queries are embedded through the cache's own extraction and encoders: a cached clip given as a query file gets
its cached vector back, a text its cached text's vector; a file that does not decode and a changed encoder are errors."""
import json
import os

import numpy as np
import pytest

from pipelines.query import embed_query, recorded_encoder
from schemas.cache import CacheView
from schemas.errors import ConfigError
from tests import media
from tests.tiny_models import bert_folder
from tests.trainer.caches import extract_sample_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return extract_sample_cache(tmp_path_factory, n=6, seed=1, image_encoder="builtin:color-hog")


def _vectors(cache: str, modality: str) -> tuple[str, dict[str, np.ndarray]]:
    view = CacheView.open(cache)
    (table,) = view.embedding_tables(modality)
    rows = view.read(table, ["sample_id", "vector"]).to_pylist()
    return table, {row["sample_id"]: np.asarray(row["vector"], dtype=np.float32) for row in rows}


def _corpus_dir(cache: str) -> tuple[str, list[dict]]:
    source = CacheView.open(cache).run.summary["inputs"]["source"]
    with open(source, encoding="utf-8") as handle:
        return os.path.dirname(source), [json.loads(line) for line in handle]


def test_a_cached_clip_as_a_query_file_gets_its_cached_vector(cache):
    table, vectors = _vectors(cache, "video")
    directory, rows = _corpus_dir(cache)
    query = embed_query(cache, table, modality="video", file=os.path.join(directory, rows[2]["video"]))
    np.testing.assert_allclose(query, vectors[rows[2]["id"]], rtol=1e-5, atol=1e-6)
    assert recorded_encoder(cache, table)["source"] == "builtin:color-hog"


def test_a_text_query_is_embedded_like_the_cached_texts(cache):
    table, vectors = _vectors(cache, "text")
    directory, rows = _corpus_dir(cache)
    with open(os.path.join(directory, rows[0]["text"]), encoding="utf-8") as handle:
        sentence = handle.read()
    query = embed_query(cache, table, modality="text", text=sentence)
    np.testing.assert_allclose(query, vectors[rows[0]["id"]], rtol=1e-4, atol=1e-5)
    other = embed_query(cache, table, modality="text", text="a completely different request about cooking pasta")
    assert float(np.dot(other, vectors[rows[0]["id"]])) < float(np.dot(query, vectors[rows[0]["id"]])) - 0.2


def test_a_query_that_cannot_be_decoded_or_a_changed_encoder_is_an_error(cache, tmp_path, tokenizer_path):
    table, _ = _vectors(cache, "video")
    broken = media.random_bytes(str(tmp_path / "broken.mp4"))
    with pytest.raises(ConfigError, match="could not be embedded"):
        embed_query(cache, table, modality="video", file=broken)
    with pytest.raises(ConfigError, match="no such file"):
        embed_query(cache, table, modality="video", file=str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError, match="one of them"):
        embed_query(cache, table, modality="video")
    text_table, _ = _vectors(cache, "text")
    other_model = bert_folder(str(tmp_path / "bert"), tokenizer_path)
    with pytest.raises(ConfigError, match="not the one the cache used"):
        embed_query(cache, text_table, modality="text", text="hello", encoder=other_model)
