"""``mmfeat extract --transcribe`` on the command line: bad speech options fail at once (exit 2, nothing heavy
imported, nothing written), a run without --transcribe never imports the speech stack, and a real run works."""
from __future__ import annotations


import pytest

from tests.test_startup import HEAVY, _mmfeat, one_text  # noqa: F401 (a fixture)

SPEECH_STACK = ("faster_whisper", "ctranslate2", "onnxruntime")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transcribe", "--asr-model", "{tmp}"], "not a CTranslate2 Whisper model folder, it lacks model.bin"),
        (["--transcribe", "--asr-model", "{tmp}/absent"], "no such folder"),
        (["--transcribe", "--asr-language", "e n"], "--asr-language must be a language code"),
        (["--asr-model", "{tmp}"], "--asr-model: only with --transcribe"),
    ],
)
def test_bad_speech_options_exit_2_before_any_work(tmp_path, one_text, args, message):
    status, _, stderr, loaded = _mmfeat("extract", "--manifest", one_text, "--output", str(tmp_path / "out"),
                                        *[a.format(tmp=tmp_path) for a in args], heavy=HEAVY + SPEECH_STACK)
    assert status == 2 and message in stderr, stderr
    assert loaded == []
    assert not (tmp_path / "out").exists()


def test_a_run_without_transcribe_never_imports_the_speech_stack(tmp_path, one_text):
    status, _, stderr, loaded = _mmfeat("extract", "--manifest", one_text, "--output", str(tmp_path / "out"), "--no-embed",
                                        heavy=SPEECH_STACK)
    assert status == 0, stderr
    assert loaded == []


def test_transcribe_on_the_command_line(tmp_path, one_text):
    status, stdout, stderr, _ = _mmfeat("extract", "--manifest", one_text, "--output", str(tmp_path / "out"), "--no-embed",
                                        "--transcribe", "--asr-language", "en")
    assert status == 0, stderr
    assert "samples   1 (ok 1" in stdout and "words 0" in stdout and "segments 0" in stdout
