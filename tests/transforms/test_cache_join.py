"""The join with the cache decides per bucket of ids: duplicates, rows without an id, unchanged samples."""
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import open_manifest
from schemas.cache.layout import UNCHANGED_COUNT_PREFIX, RunCount, table_uri
from schemas.errors import ErrorKind
from schemas.records import ManifestError, ManifestRecord
from schemas.tables import SAMPLES_BASE
from transforms import cache_join, media_io
from transforms.cache_join import GROUP_ROWS, JOINED_EMBEDDINGS, _CachedRowsFn, _DecideBucketFn, cached_file_groups, hex_as_bytes
from transforms.manifest_rows import _ReadRangeFn, read_jsonl_range, record_of
from transforms.record_batches import batch_records, bucket_of, num_buckets
from transforms.unchanged import identities_json


EMBEDDINGS = "embeddings/text/enc"
FEATURES = "f" * 64
CONTENT_HASH = hashlib.sha256(b"words").hexdigest()


def _cache_side(cache, samples=(), embedded=()):
    """The join's cache side (one bucket) of a cache whose committed files hold ``samples`` (``samples`` rows, as
    dicts) and ``embedded`` (``(sample_id, modality, encoder fingerprint)``), split over two files each."""
    elements = []
    embedding_rows = [dict(zip(JOINED_EMBEDDINGS.names, row)) for row in embedded]
    for table, rows, schema in (("samples", list(samples), SAMPLES_BASE), (EMBEDDINGS, embedding_rows, JOINED_EMBEDDINGS)):
        folder = table_uri(str(cache), table)
        os.makedirs(folder, exist_ok=True)
        for part in range(2):
            pq.write_table(pa.Table.from_pylist(rows[part::2], schema=schema), f"{folder}/part-{part}.parquet")
        elements += list(_CachedRowsFn(str(cache), 1, FEATURES).process((table, ("part-0.parquet", "part-1.parquet"))))
    return [value for _, value in elements]


def _decide(records, cache_side=(), requests=None, verify_content=False):
    decide = _DecideBucketFn(requests or {}, verify_content)
    out = []
    for bucket, batch in batch_records(records, buckets=1, batch_rows=2):  # several batches of one bucket
        out.append(batch)
    return list(decide.process((0, {"manifest": out, "cache": list(cache_side)})))


def test_rows_without_an_id_are_not_duplicates_of_each_other_and_a_duplicate_keeps_the_first_row():
    failed = [ManifestRecord("", row, error=ManifestError(ErrorKind.MISSING_ID, "no id")) for row in (1, 2)]
    rows = [ManifestRecord("a", 9, text="/x"), ManifestRecord("a", 3, text="/y"), *failed, ManifestRecord("a", 5, text="/z")]
    out = _decide(rows)
    kept = [record for record, _ in out if record.sample_id == "a" and record.error is None]
    duplicates = sorted(record.manifest_row for record, _ in out if record.error and record.error.kind == ErrorKind.DUPLICATE_ID)
    assert [record.manifest_row for record in kept] == [3] and duplicates == [5, 9]
    assert sorted(record.manifest_row for record, _ in out if record.error and record.error.kind == ErrorKind.MISSING_ID) == [1, 2]


def _cached(record):
    """The ``samples`` row of ``record``'s sample from a cache that computed it from this very row (its files as now)."""
    return {name: 0 if field.type == pa.int32() else None for name, field in zip(SAMPLES_BASE.names, SAMPLES_BASE)} | {
        "sample_id": record.sample_id, "manifest_row": record.manifest_row, "status": "ok", "content_hash": CONTENT_HASH, "text": record.text,
        "file_identity": identities_json({"text": media_io.file_identity(record.text)}), "n_tokens": 3, "manifest_ok": True,
        "features_fingerprint": FEATURES, "manifest_hash": record.fingerprint(), "manifest_line_hash": record.line_hash, "run_id": "r"}


def test_a_sample_unchanged_by_metadata_is_only_counted_and_a_touched_or_unembedded_one_goes_on(tmp_path):
    paths = {name: str(tmp_path / f"{name}.txt") for name in ("same", "touched", "unembedded")}
    for path in paths.values():
        with open(path, "w") as handle:
            handle.write("words")
    records = {name: ManifestRecord(name, i, text=path) for i, (name, path) in enumerate(paths.items())}
    invalid = _cached(ManifestRecord("touched", 9, text=paths["touched"])) | {"manifest_ok": False, "features_fingerprint": "b" * 64}
    cached = _cache_side(tmp_path / "cache", [*(_cached(record) for record in records.values()), invalid],
                         [(name, "text", "enc-1") for name in ("same", "touched")])
    os.utime(paths["touched"], ns=(1, 1))
    out = _decide(list(records.values()), cached, requests={"text": "enc-1"})
    counts = [element for element in out if isinstance(element, RunCount)]
    assert counts == [RunCount(f"{UNCHANGED_COUNT_PREFIX}metadata", 1)]
    decided = [element for element in out if not isinstance(element, RunCount)]
    assert sorted(record.sample_id for record, known in decided) == ["touched", "unembedded"]
    assert all(known is not None for record, known in decided)  # the extractor gets what is cached
    touched = next(known for record, known in decided if record.sample_id == "touched")
    assert touched.embedded == {("text", "enc-1")} and touched.modalities_with_features == {"text"}
    assert touched.same_features and touched.content_hash == CONTENT_HASH  # of its valid row
    verified = _decide(list(records.values()), cached, requests={"text": "enc-1"}, verify_content=True)
    assert len(verified) == 3 and all(isinstance(record, ManifestRecord) for record, _ in verified)  # the extractor hashes them


def test_buckets_are_stable_and_grow_with_the_manifest():
    assert bucket_of("clip-1", 64) == bucket_of("clip-1", 64) and 0 <= bucket_of("clip-1", 64) < 64
    assert num_buckets(0) == 16 and num_buckets(1 << 30) == 1024


def _line_batches(manifest, buckets=1):
    shard = open_manifest(str(manifest)).shards[0]
    return list(_ReadRangeFn(buckets).process((shard, 0, shard.size)))


def test_an_unchanged_line_is_found_by_its_hash_and_a_reformatted_one_by_its_row(tmp_path, monkeypatch):
    """A rerun parses a line only when its hash differs from the cached one's (then compares the parsed row's hash);
    either way a sample whose files kept their identity is only counted, and one whose file was touched goes on."""
    manifest = tmp_path / "m.jsonl"
    rows = [{"id": name, "text": f"{name}.txt", "label": i} for i, name in enumerate(("same", "reordered", "touched"))]
    for row in rows:
        (tmp_path / row["text"]).write_text("words", encoding="utf-8")
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    shard = open_manifest(str(manifest)).shards[0]
    cached = _cache_side(tmp_path / "cache", [_cached(record) for record in read_jsonl_range(shard, 0, shard.size)])
    manifest.write_text("".join(json.dumps(dict(reversed(row.items())) if row["id"] == "reordered" else row) + "\n" for row in rows),
                        encoding="utf-8")
    os.utime(tmp_path / "touched.txt", ns=(1, 1))
    parsed = []
    monkeypatch.setattr(cache_join, "record_of", lambda source, row: parsed.append(row[0]) or record_of(source, row))
    group = {"manifest": [batch for _, batch in _line_batches(manifest)], "cache": cached}
    out = list(_DecideBucketFn({}, False).process((0, group)))
    assert [element for element in out if isinstance(element, RunCount)] == [RunCount(f"{UNCHANGED_COUNT_PREFIX}metadata", 2)]
    assert [element[0].sample_id for element in out if not isinstance(element, RunCount)] == ["touched"]
    assert sorted(parsed) == ["reordered", "touched"]  # "same" never parsed; "touched" only to go on to the extractor


def test_the_identity_json_is_what_json_dumps_gives():
    """``samples.file_identity`` is compared as text: built without ``json.dumps`` (one per sample of a rerun), it must be
    exactly its sorted output, for one file and several."""
    for identities in ({"text": "5:17"}, {"video": "9:1", "audio": "3:2", "text": "5:17"}, {}):
        assert identities_json(identities) == json.dumps(identities, sort_keys=True)


def test_a_cache_written_before_line_hashes_decides_by_the_parsed_row(tmp_path, monkeypatch):
    """A cache older than ``samples.manifest_line_hash``: its files lack the column, read as null; every line is then
    parsed and a sample whose row and files are unchanged is still only counted."""
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "a.txt").write_text("words", encoding="utf-8")
    manifest.write_text(json.dumps({"id": "a", "text": "a.txt"}) + "\n", encoding="utf-8")
    shard = open_manifest(str(manifest)).shards[0]
    row = _cached(next(read_jsonl_range(shard, 0, shard.size)))
    folder = table_uri(str(tmp_path / "cache"), "samples")
    os.makedirs(folder)
    old_schema = pa.schema([field for field in SAMPLES_BASE if field.name != "manifest_line_hash"])
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), f"{folder}/old.parquet")
    pq.write_table(pa.Table.from_pylist([{**row, "sample_id": "b", "manifest_line_hash": "0" * 32}], schema=SAMPLES_BASE),
                   f"{folder}/new.parquet")  # read in one group with the old file
    cached = [value for _, value in _CachedRowsFn(str(tmp_path / "cache"), 1, FEATURES).process(("samples", ("old.parquet", "new.parquet")))]
    parsed = []
    monkeypatch.setattr(cache_join, "record_of", lambda source, row: parsed.append(row[0]) or record_of(source, row))
    group = {"manifest": [batch for _, batch in _line_batches(manifest)], "cache": cached}
    assert list(_DecideBucketFn({}, False).process((0, group))) == [RunCount(f"{UNCHANGED_COUNT_PREFIX}metadata", 1)]
    assert parsed == ["a"]


def test_cached_files_are_read_in_groups_of_one_table_and_bounded_rows():
    """Many small committed files make few elements (each file would cost one slice per bucket); a group never mixes
    tables, and one holds at most one file past ``GROUP_ROWS`` rows."""
    small = [("samples", {"path": f"s{i}.parquet", "num_records": 1000}) for i in range(300)]
    embedded = [(EMBEDDINGS, {"path": f"e{i}.parquet", "num_records": GROUP_ROWS}) for i in range(2)]
    groups = cached_file_groups([*small, *embedded, ("samples", {"path": "late.parquet", "num_records": None})])
    assert [(table, len(paths)) for table, paths in groups] == [
        ("samples", 263), ("samples", 37), (EMBEDDINGS, 1), (EMBEDDINGS, 1), ("samples", 1)]
    assert sorted(path for _, paths in groups for path in paths) == sorted(
        file["path"] for _, file in [*small, *embedded, ("samples", {"path": "late.parquet"})])


def test_hex_digests_travel_as_their_bytes_and_anything_else_as_null():
    """The join moves digests as bytes: each valid one decodes to exactly its bytes, across chunks and after nulls; a
    value that is no digest of that size (upper case, short, not hex, multi-byte) becomes null, so that its sample is
    recomputed rather than wrongly taken as unchanged."""
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    column = pa.chunked_array([[digests[0], None, "A" * 64], [digests[1], "abc", digests[2], "g" * 64, "é" * 32], [],
                               [digests[3], digests[4]]])
    decoded = hex_as_bytes(column, 32)
    assert decoded.type == pa.binary(32)
    assert decoded.to_pylist() == [bytes.fromhex(digests[0]), None, None, bytes.fromhex(digests[1]), None, bytes.fromhex(digests[2]),
                                   None, None, bytes.fromhex(digests[3]), bytes.fromhex(digests[4])]
    assert hex_as_bytes(pa.chunked_array([column.chunk(1).slice(2)]), 32).to_pylist() == [bytes.fromhex(digests[2]), None, None]
