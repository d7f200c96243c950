"""A cache folder whose name has spaces or non-ASCII letters reads as any other (deltalake percent-encodes file URIs)."""
import pyarrow as pa

from schemas.cache import CacheView
from tests.trainer.caches import commit_tables
from trainer.cache_reader import read_partitions


def test_a_cache_under_a_folder_with_spaces_and_accents_reads(tmp_path):
    cache = str(tmp_path / "my cache é")
    commit_tables(cache, {"samples": [pa.table({"sample_id": ["a", "b"], "status": ["ok", "ok"]})]})
    view = CacheView.open(cache)
    assert all("my cache é" in path and "%20" not in path for path in view.files("samples"))
    assert view.read("samples", ["sample_id"]).column("sample_id").to_pylist() == ["a", "b"]
    assert sum(part.num_rows for part in read_partitions(view, "samples", ["sample_id"])) == 2
