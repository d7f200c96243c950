"""Beam helpers for tests."""
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline


def in_process_pipeline() -> TestPipeline:
    """A ``TestPipeline`` on the in-process ``FnApiRunner`` (the DirectRunner would first try to fetch Prism)."""
    return TestPipeline(runner=FnApiRunner())


def assert_same_cache_rows(direct: dict[str, list[dict]], other: dict[str, list[dict]]) -> None:
    """Two runners wrote the same rows: equal in every table, embedding vectors equal to float32 precision (runners
    batch other items together, and padding changes the order of float sums on some CPUs)."""
    import numpy as np

    assert set(other) == set(direct)
    for table in direct:
        if not table.startswith("embeddings/"):
            assert sorted(map(repr, other[table])) == sorted(map(repr, direct[table])), table
            continue
        by_id = {row["sample_id"]: row for row in direct[table]}
        assert sorted(row["sample_id"] for row in other[table]) == sorted(by_id), table
        for row in other[table]:
            expected = by_id[row["sample_id"]]
            arrays = {name for name, value in row.items() if isinstance(value, list)}
            assert {k: v for k, v in row.items() if k not in arrays} == {k: v for k, v in expected.items() if k not in arrays}
            for name in arrays:
                np.testing.assert_allclose(np.asarray(row[name], "float32"), np.asarray(expected[name], "float32"), rtol=1e-4, atol=1e-5)


def cache_tables(output: str) -> dict[str, list[dict]]:
    """Every row of the cache at ``output``, by table: its feature tables, ``errors`` and its embedding sets."""
    from schemas.cache import CacheView

    view = CacheView.open(output)
    return {table: view.read(table).to_pylist() for table in ["samples", "frames", "audio", "text", "errors", *view.embedding_tables()]}
