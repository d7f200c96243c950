import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from runners.cli import main
from schemas.cache import CacheView
from tests import media


def _count(output: str, table: str) -> int:
    return CacheView.open(output).read(table).num_rows


@pytest.fixture()
def small_manifest(tmp_path) -> str:
    rows = [
        {"id": "a", "video": media.video(str(tmp_path / "a.mp4"), seconds=1.0), "text": media.text(str(tmp_path / "a.txt"), "hi there"), "label": 1},
        {"id": "b", "text": media.text(str(tmp_path / "b.txt"), b"\xff"), "label": 0},
        {"id": "c", "audio": "missing.wav", "label": 0},
    ]
    return media.manifest(str(tmp_path / "m.jsonl"), rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--manifest", "{tmp}/nope.jsonl"], "no such file"),
        (["--manifest", "{manifest}", "--runner", "samza"], "invalid choice: 'samza'"),
        (["--manifest", "{manifest}", "--fps", "0"], "--fps must be > 0"),
        (["--manifest", "{manifest}", "--fps", "2", "--frames-per-video", "4"], "not allowed with argument"),
        (["--manifest", "{manifest}", "--n-mfcc", "100"], "--n-mfcc must be in 1..n_mels=64"),
        (["--manifest", "{manifest}", "--tokenizer", "{tmp}/none.json"], "--tokenizer: no tokenizer.json"),
        (["--manifest", "{manifest}", "--fsp", "2"], "unknown option '--fsp' (did you mean --fps?)"),
        (["--manifest", "{manifest}", "--run-id", "a/b"], "--run-id must be"),
        (["--manifest", "{manifest}", "--workers", "0"], "--workers must be >= 1"),
        (["--input", "{tmp}/no_such_folder"], "--input"),
        (["--manifest", "{manifest}", "--input", "{tmp}"], "not allowed with argument"),
    ],
)
def test_bad_command_lines_fail_before_any_work(tmp_path, small_manifest, capsys, args, message):
    output = tmp_path / "out"
    argv = ["extract", "--output", str(output)] + [a.format(tmp=tmp_path, manifest=small_manifest) for a in args]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_missing_output_is_an_argparse_error(small_manifest, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["extract", "--manifest", small_manifest])
    assert caught.value.code == 2
    assert "--output" in capsys.readouterr().err


def test_extract_prints_a_summary_and_exits_0_despite_bad_files(tmp_path, small_manifest, capsys):
    output = str(tmp_path / "out")
    assert main(["extract", "--manifest", small_manifest, "--output", output, "--run-id", "r1", "--log-level", "WARNING", "--no-embed"]) == 0
    printed = capsys.readouterr().out
    assert "samples   3 (ok 1, partial 0, failed 2, unchanged 0)" in printed
    assert "text/not_utf8 1" in printed and "read/missing_file 1" in printed
    assert _count(output, "errors") == 2
    # A second run into the same folder is incremental: nothing changed, nothing is added.
    assert main(["extract", "--manifest", small_manifest, "--output", output, "--no-embed"]) == 0
    assert "samples   3 (ok 0, partial 0, failed 0, unchanged 3)" in capsys.readouterr().out
    assert _count(output, "errors") == 2


def test_too_many_failures_exit_1_after_writing_everything(tmp_path, small_manifest, capsys):
    output = str(tmp_path / "out")
    assert main(["extract", "--manifest", small_manifest, "--output", output, "--max-failure-ratio", "0.5", "--no-embed"]) == 1
    assert "2 of 3 samples failed" in capsys.readouterr().err
    assert _count(output, "samples") == 3


def test_folder_input_and_beam_options_pass_through(tmp_path, capsys):
    folder = tmp_path / "media"
    folder.mkdir()
    media.wav(str(folder / "x.wav"))
    media.text(str(folder / "x.txt"), "hello")
    media.text(str(folder / "y.txt"), "world")
    output = str(tmp_path / "out")
    assert main(["extract", "--input", str(folder), "--output", output, "--job_name", "nightly", "--no-embed"]) == 0
    samples = CacheView.open(output).read("samples").to_pylist()
    assert sorted((s["sample_id"], s["status"], s["n_audio_windows"]) for s in samples) == [("x", "ok", 1), ("y", "ok", 0)]


def test_console_script_and_sample_corpus(tmp_path):
    """The installed `mmfeat` entry point runs; make-sample-corpus writes a manifest with labels."""
    script = os.path.join(os.path.dirname(sys.executable), "mmfeat")
    done = subprocess.run([script, "make-sample-corpus", str(tmp_path / "c"), "--n", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "c" / "manifest.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert [r["id"] for r in rows] == ["clip000", "clip001", "clip002"]
    assert all(r["label"] in ("positive", "negative") for r in rows)
    bad = subprocess.run([script, "extract", "--manifest", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_user_checkpoints_through_the_encoder_flags(tmp_path, small_manifest, tokenizer_path, capsys):
    from tests import tiny_models

    bert = tiny_models.bert_folder(str(tmp_path / "bert"), tokenizer_path)
    vit = tiny_models.vit_folder(str(tmp_path / "vit"))
    wav2vec2 = tiny_models.wav2vec2_folder(str(tmp_path / "wav2vec2"))
    output = str(tmp_path / "out")
    argv = ["extract", "--manifest", small_manifest, "--output", output, "--text-encoder", bert, "--image-encoder", vit,
            "--audio-encoder", wav2vec2, "--max-batch-size", "2"]
    assert main(argv) == 0
    view = CacheView.open(output)
    encoders = view.run.summary["encoders"]
    assert {m: (e["name"], e["dim"]) for m, e in encoders.items()} == {"text": ("bert", 32), "video": ("vit", 24), "audio": ("wav2vec2", 16)}
    for encoder in encoders.values():
        assert (view.description(encoder["table"])["encoder"], view.description(encoder["table"])["dim"]) == (encoder["name"], encoder["dim"])
    vectors = view.read(encoders["video"]["table"])
    assert vectors.num_rows == 1 and vectors.schema.field("vector").type == pa.list_(pa.float32())
    assert len(vectors.column("vector")[0]) == 24


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-encoder", "{tmp}/nothing_here"], "--image-encoder: '{tmp}/nothing_here' is neither a built-in encoder"),
        (["--audio-encoder", "{tmp}"], "is not a Hugging Face model folder"),
        (["--text-encoder", "bert-base-uncased"], "neither a built-in encoder (minilm, none) nor an existing path"),
        (["--precision", "fp16", "--device", "cpu"], "runs on CUDA only"),
    ],
)
def test_bad_encoder_options_fail_before_any_work(tmp_path, small_manifest, capsys, args, message):
    output = tmp_path / "out"
    argv = ["extract", "--manifest", small_manifest, "--output", str(output)] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_asking_for_cuda_without_a_gpu_fails_before_any_work(tmp_path, small_manifest, capsys):
    assert main(["extract", "--manifest", small_manifest, "--output", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_torchscript_image_encoder_through_the_flag(tmp_path, small_manifest):
    from tests import tiny_models

    scripted = tiny_models.torchscript_image_file(str(tmp_path / "frames.pt"))
    output = str(tmp_path / "out")
    assert main(["extract", "--manifest", small_manifest, "--output", output, "--image-encoder", scripted,
                 "--text-encoder", "none", "--audio-encoder", "none"]) == 0
    encoders = CacheView.open(output).run.summary["encoders"]
    assert list(encoders) == ["video"] and (encoders["video"]["name"], encoders["video"]["dim"]) == ("frames.pt", 12)
    assert _count(output, encoders["video"]["table"]) == 1
