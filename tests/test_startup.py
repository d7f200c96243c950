"""Start-up of the ``mmfeat`` command line: what ``--help``, option errors and a run without encoders import.

Each case runs in a fresh interpreter (what a user's shell starts) and reports which heavy modules it loaded;
no timing here (``bench/startup.py`` times them). The heavy modules take seconds to import; ``runners.cli``
imports each where the command that needs it runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEAVY = ("torch", "transformers", "apache_beam", "librosa", "deltalake", "cv2", "av", "tokenizers", "pyarrow", "pandas", "scipy")
"""Modules neither ``--help`` nor an option error may import."""

_RUN_MAIN = """
import atexit, json, sys
heavy = {heavy!r}
atexit.register(lambda: sys.__stderr__.write("\\nLOADED " + json.dumps(sorted(m for m in heavy if m in sys.modules)) + "\\n"))
from runners.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mmfeat(*argv: str, heavy: tuple[str, ...] = HEAVY) -> tuple[int, str, str, list[str]]:
    """Exit status, stdout, stderr (the report line removed) and the ``heavy`` modules loaded by ``mmfeat argv``."""
    done = subprocess.run([sys.executable, "-c", _RUN_MAIN.format(heavy=heavy), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    stderr, _, report = done.stderr.rpartition("\nLOADED ")
    return done.returncode, done.stdout, stderr, json.loads(report)


@pytest.fixture
def one_text(tmp_path) -> str:
    (tmp_path / "a.txt").write_text("A short text to tokenise.\n", encoding="utf-8")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "text": "a.txt"}) + "\n", encoding="utf-8")
    return str(manifest)


def test_importing_the_cli_imports_no_heavy_module():
    code = f"import runners.cli, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["extract", "make-sample-corpus", "status", "repair", "vacuum", "compact",
                                     "train", "evaluate", "compare", "pretrain", "retrieval-eval", "predict", "generate", "index", "search"])
def test_subcommand_help_imports_no_heavy_module(command):
    status, stdout, _, loaded = _mmfeat(command, "--help")
    assert status == 0 and f"usage: mmfeat {command}" in stdout
    assert loaded == []


def test_top_level_help_imports_no_heavy_module():
    status, stdout, _, loaded = _mmfeat("--help")
    assert status == 0 and "extract" in stdout and "train" in stdout
    assert loaded == []


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: --output"),  # argparse: a missing required option
        (["--output", "{tmp}/out", "--fps", "fast"], "argument --fps: invalid float value: 'fast'"),
        (["--output", "{tmp}/out", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--output", "{tmp}/out", "--jpeg-quality", "0"], "--jpeg-quality"),  # the config's own validation
    ],
)
def test_extract_option_errors_exit_2_before_importing_anything_heavy(tmp_path, one_text, args, message):
    status, _, stderr, loaded = _mmfeat("extract", "--manifest", one_text, *[a.format(tmp=tmp_path) for a in args])
    assert status == 2 and message in stderr
    assert loaded == []
    assert not (tmp_path / "out").exists()


def test_an_unknown_option_exits_2_without_importing_torch(tmp_path, one_text):
    """Checking a pass-through option against Beam's pipeline options imports Beam, but nothing of the run."""
    status, _, stderr, loaded = _mmfeat("extract", "--manifest", one_text, "--output", str(tmp_path / "out"), "--bogus")
    assert status == 2 and "unknown option '--bogus'" in stderr
    assert "torch" not in loaded and "deltalake" not in loaded
    assert not (tmp_path / "out").exists()


def test_a_run_without_encoders_never_imports_torch(tmp_path, one_text):
    status, stdout, stderr, loaded = _mmfeat("extract", "--manifest", one_text, "--output", str(tmp_path / "out"), "--no-embed",
                                             heavy=("torch", "transformers"))
    assert status == 0, stderr
    assert "samples   1 (ok 1" in stdout
    assert loaded == []


def test_a_run_whose_only_encoder_is_builtin_mfcc_stats_never_imports_torch(tmp_path):
    """The default audio encoder is computed by the extraction (inline): no model, so neither the launcher nor the
    run imports torch, and the sample still gets its audio embedding."""
    from tests import media

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": media.wav(str(tmp_path / "a.wav"), seconds=3.0)}) + "\n", encoding="utf-8")
    status, stdout, stderr, loaded = _mmfeat("extract", "--manifest", str(manifest), "--output", str(tmp_path / "out"),
                                             "--text-encoder", "none", "--image-encoder", "none", heavy=("torch", "transformers"))
    assert status == 0, stderr
    assert "samples   1 (ok 1" in stdout and "embeddings_audio 1" in stdout
    assert loaded == []


def test_the_console_script_ends_at_once_with_the_status_and_all_output(tmp_path, one_text):
    """``runners.cli.run`` (the ``mmfeat`` script) skips the interpreter's teardown; the run's report still reaches a
    pipe whole, its log lines too, and the exit status is the command's (0, then 2 for a bad option value)."""
    script = "import atexit, sys; atexit.register(lambda: print('ATEXIT RAN', file=sys.stderr)); from runners.cli import run; run()"
    command = [sys.executable, "-c", script, "extract", "--manifest", one_text, "--no-embed", "--log-level", "INFO"]
    done = subprocess.run([*command, "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "samples   1 (ok 1" in done.stdout and done.stdout.rstrip().splitlines()[-1].startswith("  wall time")
    assert "committed" in done.stderr and done.stderr.rstrip().endswith("ATEXIT RAN")  # callbacks run, after the log
    bad = subprocess.run([*command, "--output", str(tmp_path / "out2"), "--fps", "fast"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "invalid float value: 'fast'" in bad.stderr
