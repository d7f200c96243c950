import pickle
import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from schemas.config import DECODE_THREADS_ENV, ExtractConfig, VideoConfig
from schemas.records import ManifestRecord
from tests import media
from tests.beam_helpers import in_process_pipeline
from transforms.extract_sample import SampleExtractor
from transforms.extract_sample_fn import ExtractSampleFn


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
