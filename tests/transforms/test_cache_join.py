"""The join with the cache decides per bucket of ids: duplicates, rows without an id, unchanged samples."""
import os

from schemas.cache.layout import UNCHANGED_COUNT_PREFIX, RunCount
from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord
from transforms import media_io
from transforms.cache_join import _DecideBucketFn
from transforms.record_batches import batch_records, bucket_of, num_buckets, pickled
from transforms.unchanged import KnownSample, identities_json


def _decide(records, cached=(), embedded=(), requests=None, verify_content=False):
    decide = _DecideBucketFn("features", requests or {}, verify_content)
    out = []
    for bucket, batch in batch_records(records, buckets=1, batch_rows=2):  # several batches of one bucket
        out.append(batch)
    group = {"manifest": out, "cache": [("samples", pickled(list(cached))), ("embedded", pickled(list(embedded)))]}
    return list(decide.process((0, group)))


def test_rows_without_an_id_are_not_duplicates_of_each_other_and_a_duplicate_keeps_the_first_row():
    failed = [ManifestRecord("", row, error=ManifestError(ErrorKind.MISSING_ID, "no id")) for row in (1, 2)]
    rows = [ManifestRecord("a", 9, text="/x"), ManifestRecord("a", 3, text="/y"), *failed, ManifestRecord("a", 5, text="/z")]
    out = _decide(rows)
    kept = [record for record, _ in out if record.sample_id == "a" and record.error is None]
    duplicates = sorted(record.manifest_row for record, _ in out if record.error and record.error.kind == ErrorKind.DUPLICATE_ID)
    assert [record.manifest_row for record in kept] == [3] and duplicates == [5, 9]
    assert sorted(record.manifest_row for record, _ in out if record.error and record.error.kind == ErrorKind.MISSING_ID) == [1, 2]


def _known(record, path, embedded=frozenset()):
    return KnownSample(content_hash="h", features_fingerprint="features", manifest_hash=record.fingerprint(),
                       modalities_with_features=frozenset({"text"}), file_identity=identities_json({"text": media_io.file_identity(path)}),
                       embedded=embedded)


def test_a_sample_unchanged_by_metadata_is_only_counted_and_a_touched_or_unembedded_one_goes_on(tmp_path):
    paths = {name: str(tmp_path / f"{name}.txt") for name in ("same", "touched", "unembedded")}
    for path in paths.values():
        with open(path, "w") as handle:
            handle.write("words")
    records = {name: ManifestRecord(name, i, text=path) for i, (name, path) in enumerate(paths.items())}
    cached = [(name, _known(record, paths[name]).as_tuple()) for name, record in records.items()]
    embedded = [(name, "text", "enc-1") for name in ("same", "touched")]
    os.utime(paths["touched"], ns=(1, 1))
    out = _decide(list(records.values()), cached, embedded, requests={"text": "enc-1"})
    counts = [element for element in out if isinstance(element, RunCount)]
    assert counts == [RunCount(f"{UNCHANGED_COUNT_PREFIX}metadata", 1)]
    decided = [element for element in out if not isinstance(element, RunCount)]
    assert sorted(record.sample_id for record, known in decided) == ["touched", "unembedded"]
    assert all(known is not None for record, known in decided)  # the extractor gets what is cached
    touched = next(known for record, known in decided if record.sample_id == "touched")
    assert touched.embedded == {("text", "enc-1")} and touched.modalities_with_features == {"text"}
    verified = _decide(list(records.values()), cached, embedded, requests={"text": "enc-1"}, verify_content=True)
    assert len(verified) == 3 and all(isinstance(record, ManifestRecord) for record, _ in verified)  # the extractor hashes them


def test_buckets_are_stable_and_grow_with_the_manifest():
    assert bucket_of("clip-1", 64) == bucket_of("clip-1", 64) and 0 <= bucket_of("clip-1", 64) < 64
    assert num_buckets(0) == 64 and num_buckets(1 << 30) == 1024
