import glob
import os
import pickle
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from schemas.config import DECODE_THREADS_ENV, ExtractConfig, VideoConfig
from schemas.records import ManifestRecord
from schemas.tables import table_schemas
from tests import media
from tests.beam_helpers import in_process_pipeline
from transforms.extract_sample import SampleExtractor
from transforms.extract_sample_fn import ExtractSampleFn
from transforms.large_samples import LARGE_SAMPLE_BYTES, WRITTEN_FILE, FeatureFiles, chunk_file_name, share_file_name
from transforms.parquet_sink import rows_to_table
from transforms.work_split import SharedChunk, WorkClaims


@pytest.fixture()
def record(tmp_path) -> ManifestRecord:
    return ManifestRecord(
        sample_id="a",
        manifest_row=0,
        video=media.video(str(tmp_path / "a.mp4"), seconds=2.0),
        audio=media.wav(str(tmp_path / "a.wav"), seconds=1.0),
        text=media.text(str(tmp_path / "a.txt"), "hello world"),
        extra={"label": "pos"},
    )


def test_a_good_sample_yields_features_then_its_samples_row(record, tokenizer):
    rows = list(SampleExtractor(ExtractConfig(), tokenizer).extract(record))
    tables = [table for table, _ in rows]
    assert tables[-1] == "samples"
    assert tables.count("frames") == 2 and tables.count("audio") == 2 and tables.count("text") == 1
    assert "errors" not in tables
    samples = rows[-1][1]
    assert samples["status"] == "ok" and samples["label"] == "pos"
    assert (samples["n_frames"], samples["n_audio_windows"], samples["n_tokens"]) == (2, 2, 4)
    assert samples["video_duration_s"] == pytest.approx(2.0) and samples["audio_duration_s"] == pytest.approx(1.0)
    assert {row["source"] for table, row in rows if table == "audio"} == {"video", "audio"}


def test_content_hash_follows_file_content(record, tokenizer, tmp_path):
    extractor = SampleExtractor(ExtractConfig(), tokenizer)
    first = list(extractor.extract(record))[-1][1]["content_hash"]
    assert list(extractor.extract(record))[-1][1]["content_hash"] == first
    media.text(record.text, "hello there")
    assert list(extractor.extract(record))[-1][1]["content_hash"] != first


def test_rows_already_produced_are_kept_when_another_modality_fails(record, tokenizer, tmp_path):
    broken = ManifestRecord(sample_id="a", manifest_row=0, video=record.video, text=media.text(str(tmp_path / "b.txt"), b"\xff\xfe"))
    rows = list(SampleExtractor(ExtractConfig(), tokenizer).extract(broken))
    tables = [table for table, _ in rows]
    assert tables.count("frames") == 2 and tables.count("errors") == 1
    assert rows[-1][1]["status"] == "partial"


def test_dofn_in_a_pipeline(record, tokenizer_path):
    config = ExtractConfig(video=VideoConfig(fps=2.0))
    with in_process_pipeline() as pipeline:
        tables = (
            pipeline
            | beam.Create([(record, None)])
            | beam.ParDo(ExtractSampleFn(config, tokenizer_path))
            | beam.Map(lambda pair: pair[0])
            | beam.combiners.Count.PerElement()
        )
        assert_that(tables, equal_to([("frames", 4), ("audio", 2), ("text", 1), ("samples", 1)]))


def test_a_chunk_extracted_in_threads_gives_every_sample_s_rows_in_its_order(tmp_path, tokenizer_path, monkeypatch):
    """A list of samples (the chunk of a small manifest on one process) is extracted by 2 threads: the same rows as
    one sample at a time, each sample's ``samples`` row after its features."""
    monkeypatch.setenv(DECODE_THREADS_ENV, "2")
    records = [ManifestRecord(sample_id=f"s{i}", manifest_row=i,
                              video=media.video(str(tmp_path / f"{i}.mp4"), seconds=1.0 + 0.5 * i),
                              audio=media.wav(str(tmp_path / f"{i}.wav"), seconds=1.0, frequency_hz=300.0 + 50 * i),
                              text=media.text(str(tmp_path / f"{i}.txt"), f"sample number {i}"))
               for i in range(5)]
    fn = ExtractSampleFn(ExtractConfig(video=VideoConfig(fps=2.0)), tokenizer_path)
    fn.setup()
    one_by_one = [pair for record in records for pair in fn.process((record, None))]
    chunk = list(fn.process([(record, None) for record in records]))

    def keyed(pairs):
        return sorted((table, row["sample_id"], pickle.dumps(row)) for table, row in pairs)

    assert keyed(chunk) == keyed(one_by_one) and len(chunk) == len(one_by_one) > 5 * 4
    for record in records:
        positions = [i for i, (_, row) in enumerate(chunk) if row["sample_id"] == record.sample_id]
        assert chunk[positions[-1]][0] == "samples"


def test_an_unforeseen_failure_in_a_chunk_fails_the_bundle_without_extracting_the_rest(tmp_path, tokenizer_path, monkeypatch):
    """A bug (not a bad file) in one sample of a chunk reaches Beam, which fails the run (nothing is committed); the
    chunk's samples not yet started are not extracted meanwhile."""
    monkeypatch.setenv(DECODE_THREADS_ENV, "2")
    started = []

    def extract(self, record, known=None):
        started.append(record.sample_id)
        if record.sample_id == "s0":
            raise RuntimeError("a bug")
        time.sleep(0.5)  # long enough that the failure is handled before either thread is free again
        yield "samples", {"sample_id": record.sample_id, "status": "ok", "audio_duration_s": None}

    monkeypatch.setattr(SampleExtractor, "extract", extract)
    records = [(ManifestRecord(sample_id=f"s{i}", manifest_row=i, text=str(tmp_path / "unused.txt")), None) for i in range(20)]
    fn = ExtractSampleFn(ExtractConfig(), tokenizer_path)
    fn.setup()
    with pytest.raises(RuntimeError, match="a bug"):
        list(fn.process(records))
    assert "s0" in started and len(started) <= 4


def _chunk_records(tmp_path, count: int = 4) -> list[ManifestRecord]:
    return [ManifestRecord(sample_id=f"s{i}", manifest_row=10 + i,
                           video=media.video(str(tmp_path / f"{i}.mp4"), seconds=1.0),
                           audio=media.wav(str(tmp_path / f"{i}.wav"), seconds=1.0, frequency_hz=300.0 + 50 * i),
                           text=media.text(str(tmp_path / f"{i}.txt"), f"sample number {i}"))
            for i in range(count)]


def _feature_files(cache: str) -> FeatureFiles:
    schemas = {table: schema for table, schema in table_schemas([]).items() if table not in ("samples", "errors")}
    return FeatureFiles(cache, "run-a", schemas, LARGE_SAMPLE_BYTES)


def test_a_chunk_with_files_of_its_own_writes_every_feature_row_there(tmp_path, tokenizer_path, monkeypatch):
    """A chunk that is its process's whole share (``chunk_files``) sends on only ``samples`` rows and one ``DataFile``
    per feature table, named by its first manifest row; those files hold exactly the feature rows of one sample at
    a time."""
    monkeypatch.setenv(DECODE_THREADS_ENV, "2")
    records = _chunk_records(tmp_path)
    config = ExtractConfig(video=VideoConfig(fps=2.0))
    files = _feature_files(str(tmp_path / "cache"))
    one_at_a_time = ExtractSampleFn(config, tokenizer_path)
    one_at_a_time.setup()
    expected = [pair for record in records for pair in one_at_a_time.process((record, None))]
    chunk_fn = ExtractSampleFn(config, tokenizer_path, feature_files=files, chunk_files=True)
    chunk_fn.setup()
    out = list(chunk_fn.process([(record, None) for record in reversed(records)]))

    assert sorted(table for table, _ in out) == [*[WRITTEN_FILE] * 3, *["samples"] * 4]
    written = {row.table: row for table, row in out if table == WRITTEN_FILE}
    assert sorted(written) == ["audio", "frames", "text"]
    for table, data_file in written.items():
        assert data_file.name == chunk_file_name("run-a", 10)
        stored = pq.read_table(os.path.join(str(tmp_path / "cache"), table, data_file.name))
        rows = rows_to_table([row for name, row in expected if name == table], files.schemas[table])
        assert data_file.n_rows == stored.num_rows == rows.num_rows > 0
        assert sorted(map(repr, stored.to_pylist())) == sorted(map(repr, rows.to_pylist()))


def test_two_workers_shares_of_one_list_extract_each_sample_once_into_files_of_their_own(tmp_path, tokenizer_path, monkeypatch):
    """``--workers 2``: each worker gets the whole list (``SharedChunk``) and extracts the samples it claims first.
    Worker 0 takes the first samples and is then held up; worker 1 goes through the list and takes the rest. Between
    them every sample is extracted once, and their files (one per worker and table) hold exactly the feature rows of
    one sample at a time."""
    monkeypatch.setenv(DECODE_THREADS_ENV, "1")  # a worker's share of 2 cores
    records = _chunk_records(tmp_path)
    config = ExtractConfig(video=VideoConfig(fps=2.0))
    files = _feature_files(str(tmp_path / "cache"))
    one_at_a_time = ExtractSampleFn(config, tokenizer_path)
    one_at_a_time.setup()
    expected = [pair for record in records for pair in one_at_a_time.process((record, None))]
    workers = [ExtractSampleFn(config, tokenizer_path, feature_files=files, chunk_files=True) for _ in range(2)]
    for fn in workers:
        fn.setup()
    elements = [(record, None) for record in records]
    shares = [fn.process(SharedChunk(elements, WorkClaims(str(tmp_path / "claims-folder"), slot)))
              for slot, fn in enumerate(workers)]
    (tmp_path / "claims-folder").mkdir()
    out = [[next(shares[0])], []]  # worker 0 has finished one sample and started its next
    out[1] = list(shares[1])
    out[0] += list(shares[0])

    samples = [[row["sample_id"] for table, row in share if table == "samples"] for share in out]
    assert sorted(samples[0] + samples[1]) == ["s0", "s1", "s2", "s3"] and samples[0] and samples[1]
    for slot, share in enumerate(out):
        written = {row.table: row for table, row in share if table == WRITTEN_FILE}
        assert sorted(written) == ["audio", "frames", "text"]
        for table, data_file in written.items():
            assert data_file.name == share_file_name("run-a", slot)
            stored = pq.read_table(os.path.join(str(tmp_path / "cache"), table, data_file.name))
            rows = rows_to_table([row for name, row in expected if name == table and row["sample_id"] in samples[slot]],
                                 files.schemas[table])
            assert data_file.n_rows == stored.num_rows == rows.num_rows > 0
            assert sorted(map(repr, stored.to_pylist())) == sorted(map(repr, rows.to_pylist()))


def test_a_chunk_that_fails_leaves_no_file_of_its_own(tmp_path, tokenizer_path, monkeypatch):
    """A bug in one sample after others' rows were written: the chunk's files (and their temporaries) are removed,
    and the failure reaches Beam."""
    monkeypatch.setenv(DECODE_THREADS_ENV, "2")
    extract = SampleExtractor.extract

    def failing_last(self, record, known=None):
        if record.sample_id == "s3":
            time.sleep(1.0)  # the others' rows have reached the chunk's files by now
            raise RuntimeError("a bug")
        yield from extract(self, record, known)

    monkeypatch.setattr(SampleExtractor, "extract", failing_last)
    cache = str(tmp_path / "cache")
    fn = ExtractSampleFn(ExtractConfig(video=VideoConfig(fps=2.0)), tokenizer_path, feature_files=_feature_files(cache),
                         chunk_files=True)
    fn.setup()
    out = []
    with pytest.raises(RuntimeError, match="a bug"):
        out.extend(fn.process([(record, None) for record in _chunk_records(tmp_path)]))
    assert [table for table, _ in out].count("samples") == 3  # those samples were done, their rows in the files
    assert [path for path in glob.glob(f"{cache}/**/*", recursive=True) if os.path.isfile(path)] == []
