"""A sample too large to group writes its feature rows to a file of its own: same rows, bounded memory."""
import glob
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.cache import CacheView
from schemas.config import ExtractConfig
from tests import media
from transforms import large_samples
from transforms.parquet_sink import ParquetRowWriter, write_rows


def _extract(manifest: str, output: str, tokenizer_path: str, run_id: str = "run1"):
    return run_extract(open_manifest(manifest), output=output, config=ExtractConfig(num_shards=2), tokenizer_path=tokenizer_path,
                       runner=FnApiRunner(), run_id=run_id, encoders={})


def _rows(output: str) -> dict[str, list[str]]:
    view = CacheView.open(output)
    return {table: sorted(map(repr, view.read(table).to_pylist())) for table in ("audio", "text", "frames")}


def test_a_sample_past_the_limit_writes_its_own_file_with_the_rows_the_writers_would(tmp_path, tokenizer_path, monkeypatch):
    """With a limit below one 20 s sound track's MFCC windows, that sample's audio rows land in its own file
    (``-row-``), the small samples' rows in the shared shard files, and the cache holds exactly the rows of a run that
    wrote them all through the writers; a rerun finds every sample unchanged."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"id": "long", "audio": media.wav(str(corpus / "long.wav"), seconds=20.0)},
            {"id": "short", "audio": media.wav(str(corpus / "short.wav"), seconds=0.5), "text": media.text(str(corpus / "t.txt"), "a few words")},
            {"id": "clip", "video": media.video(str(corpus / "clip.mp4"), seconds=1.0)}]
    manifest = media.manifest(str(corpus / "m.jsonl"), rows)
    grouped, own = str(tmp_path / "grouped"), str(tmp_path / "own")
    all_grouped = _extract(manifest, grouped, tokenizer_path)
    monkeypatch.setattr(large_samples, "LARGE_SAMPLE_BYTES", 200_000)  # 20 s of MFCCs: 2,000 frames x 40 x 4 bytes = 320 kB
    report = _extract(manifest, own, tokenizer_path)
    assert len(glob.glob(f"{own}/audio/*-row-{0:016x}.parquet")) == 1  # "long", the first line: manifest_row 0
    assert not glob.glob(f"{grouped}/audio/*-row-*.parquet") and not glob.glob(f"{own}/text/*-row-*.parquet")
    assert _rows(own) == _rows(grouped)
    assert report.summary["samples"]["ok"] == 3
    assert report.summary["metrics"]["rows_written"] == all_grouped.summary["metrics"]["rows_written"]
    rerun = _extract(manifest, own, tokenizer_path, run_id="run2")
    assert rerun.summary["samples"]["unchanged"] == 3


def test_the_row_writer_converts_rows_by_bytes_not_only_by_count(tmp_path):
    """Ten rows of 1 MB each with a 4 MB row group: rows are converted to Arrow at least every 1 MB-quarter, so the
    writer never holds all ten as Python rows, and the file has several row groups."""
    schema = pa.schema([("sample_id", pa.string()), ("values", pa.list_(pa.float32()))])
    writer = ParquetRowWriter(str(tmp_path / "f.parquet"), schema, row_group_bytes=4 << 20)
    held = []
    for i in range(10):
        writer.add({"sample_id": "s", "values": np.full(250_000, i, np.float32)})
        held.append(len(writer._batch))
    count, _ = writer.close()
    assert count == 10 and max(held) == 1
    assert pq.ParquetFile(str(tmp_path / "f.parquet")).metadata.num_row_groups >= 2
    assert pq.read_table(str(tmp_path / "f.parquet")).column("values").to_pylist()[9][0] == 9


_PEAK = """
import sys
from runners.cli import main
sys.argv = ["mmfeat", "extract", "--manifest", sys.argv[1], "--output", sys.argv[2], "--no-embed"]
try:
    main()
except SystemExit as done:
    assert not done.code, done.code
with open("/proc/self/status") as status:  # this process's own peak (ru_maxrss starts from the parent's at fork)
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) // 1024)
"""


def _peak_mib(manifest: str, output: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, manifest, output], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return int(done.stdout.strip().splitlines()[-1])


def test_a_whole_run_on_a_2_hour_sound_track_peaks_less_than_150_mb_above_a_one_text_run(tmp_path):
    """Before: the 240 MFCC windows (110 MB) were held for the writers' grouping, decoded again and converted in one
    batch: +929 MiB over a one-text run (+613 MiB with the writer's batches bounded by bytes alone). Measured after:
    +84 MiB, the audio stack's imports included. Peaks are each process's own (``VmHWM``)."""
    sample_rate = 16000
    minute = (0.1 * np.sin(2 * np.pi * 220 * np.arange(60 * sample_rate) / sample_rate)).astype(np.float32)
    with soundfile.SoundFile(str(tmp_path / "long.wav"), "w", sample_rate, 1, subtype="PCM_16") as wav:
        for _ in range(120):
            wav.write(minute)
    media.text(str(tmp_path / "one.txt"), "hello there")
    text_manifest = media.manifest(str(tmp_path / "text.jsonl"), [{"id": "t", "text": "one.txt"}])
    audio_manifest = media.manifest(str(tmp_path / "audio.jsonl"), [{"id": "a", "audio": "long.wav"}])
    one_text = _peak_mib(text_manifest, str(tmp_path / "text-cache"))
    long_audio = _peak_mib(audio_manifest, str(tmp_path / "audio-cache"))
    assert CacheView.open(str(tmp_path / "audio-cache")).read("audio").num_rows == 240
    print(f"peak MiB: one text {one_text}, 2-hour sound track {long_audio}")
    assert long_audio - one_text < 150, f"a 2-hour sound track peaked at {long_audio} MiB, a one-text run at {one_text} MiB"


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    """Rows that fail half-way (the extractor raised) or a writer error: nothing is left in the folder."""
    schema = pa.schema([("sample_id", pa.string())])

    def failing_rows():
        yield {"sample_id": "a"}
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_rows(str(tmp_path / "f.parquet"), failing_rows(), schema)
    writer = ParquetRowWriter(str(tmp_path / "g.parquet"), schema)
    writer.add({"sample_id": "b"})
    writer.abort()
    assert os.listdir(tmp_path) == []
