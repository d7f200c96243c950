"""Inputs that are not regular files, unknown URI schemes and ``file://`` URIs through ``mmfeat extract`` (issue 10, part 6).

Each special input becomes an ``errors`` row of its own kind (no traceback logged at ERROR), and ``file://`` rows
are extracted like plain paths.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.parse

from runners.cli import main
from schemas.cache import CacheView
from schemas.errors import ErrorKind, Stage
from tests import media
from transforms.media_io import available_schemes


def test_special_inputs_get_their_error_kinds_and_file_uris_succeed(tmp_path, caplog, capsys):
    video = media.video(str(tmp_path / "clip one.mp4"), seconds=1.0)
    text = media.text(str(tmp_path / "clip one.txt"), "hello there")
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "folder.mp4").mkdir()
    os.symlink(tmp_path / "loop_b.txt", tmp_path / "loop_a.txt")
    os.symlink(tmp_path / "loop_a.txt", tmp_path / "loop_b.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.txt"))
    rows = [
        {"id": "uri", "video": "file://" + urllib.parse.quote(video), "text": "file://localhost" + urllib.parse.quote(text)},
        {"id": "folder", "video": str(tmp_path / "folder.mp4")},
        {"id": "fifo", "audio": str(tmp_path / "pipe.wav")},
        {"id": "device", "text": "/dev/null"},
        {"id": "loop", "text": str(tmp_path / "loop_a.txt")},
        {"id": "socket", "text": str(tmp_path / "socket.txt")},
        {"id": "scheme", "video": "foo://bucket/a.mp4"},
        {"id": "host", "text": f"file://server{text}"},
    ]
    manifest = media.manifest(str(tmp_path / "m.jsonl"), rows)
    output = str(tmp_path / "out")
    try:
        with caplog.at_level(logging.INFO):
            assert main(["extract", "--manifest", manifest, "--output", output, "--no-embed", "--run-id", "r"]) == 0
    finally:
        server.close()
    assert "samples   8 (ok 1, partial 0, failed 7" in capsys.readouterr().out

    view = CacheView.open(output)
    errors = {row["sample_id"]: row for row in view.read("errors").to_pylist()}
    assert {sample: (row["stage"], row["error_kind"]) for sample, row in errors.items()} == {
        "folder": (Stage.READ, ErrorKind.NOT_A_FILE),
        "fifo": (Stage.READ, ErrorKind.NOT_A_FILE),
        "device": (Stage.READ, ErrorKind.NOT_A_FILE),
        "loop": (Stage.READ, ErrorKind.NOT_A_FILE),
        "socket": (Stage.READ, ErrorKind.NOT_A_FILE),
        "scheme": (Stage.READ, ErrorKind.UNSUPPORTED_URI),
        "host": (Stage.READ, ErrorKind.UNSUPPORTED_URI),
    }
    assert errors["fifo"]["message"] == f"not a file: {tmp_path}/pipe.wav is a FIFO (named pipe)"
    assert errors["scheme"]["message"].endswith(", ".join(f"{scheme}://" for scheme in available_schemes()))
    assert "gcp" not in errors["scheme"]["message"]

    samples = {row["sample_id"]: row for row in view.read("samples").to_pylist()}
    assert samples["uri"]["status"] == "ok" and samples["uri"]["n_frames"] > 0 and samples["uri"]["n_tokens"] > 0
    assert samples["uri"]["content_hash"]
    assert view.read("text").to_pylist()[0]["text"] == "hello there"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "a special input logged a traceback"
