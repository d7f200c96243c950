"""Special inputs and ``file://`` URIs in ``transforms.media_io`` (issue 10, part 6)."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Callable

import pytest

from schemas.errors import ErrorKind, SampleFailure, Stage
from tests import media
from tests.fake_remote_fs import FakeRemoteFileSystem
from transforms import media_io

READERS: dict[str, Callable[[str], object]] = {
    "check_readable": media_io.check_readable,
    "file_identity": media_io.file_identity,
    "sha256_of": media_io.sha256_of,
    "read_bytes": media_io.read_bytes,
    "local_copy": lambda uri: media_io.local_copy(uri).__enter__(),
}


def _failure(read: Callable[[str], object], uri: str, *, timeout_s: float = 10.0) -> SampleFailure:
    """The ``SampleFailure`` ``read(uri)`` raises, run in a thread so that a read blocked on a FIFO fails the test."""
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(read(uri))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"reading {uri} blocked"
    assert isinstance(outcome[0], SampleFailure), f"expected a SampleFailure, got {outcome[0]!r}"
    return outcome[0]


@pytest.fixture()
def special(tmp_path) -> dict[str, str]:
    """One input of each kind that is not a regular file."""
    os.mkfifo(tmp_path / "fifo.wav")
    (tmp_path / "folder.mp4").mkdir()
    os.symlink(tmp_path / "loop_b.txt", tmp_path / "loop_a.txt")
    os.symlink(tmp_path / "loop_a.txt", tmp_path / "loop_b.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.txt"))
    paths = {
        "a directory": str(tmp_path / "folder.mp4"),
        "a FIFO (named pipe)": str(tmp_path / "fifo.wav"),
        "a character device": "/dev/null",
        "a symbolic link loop": str(tmp_path / "loop_a.txt"),
        "a socket": str(tmp_path / "sock.txt"),
    }
    yield paths
    server.close()


@pytest.mark.parametrize("reader", sorted(READERS))
def test_what_is_not_a_regular_file_is_not_a_file_and_never_blocks(special, reader):
    for what, path in special.items():
        failure = _failure(READERS[reader], path)
        assert (failure.stage, failure.kind) == (Stage.READ, ErrorKind.NOT_A_FILE), (what, failure.message)
        assert failure.message == f"not a file: {path} is {what}"


def test_a_fifo_as_a_file_uri_is_not_a_file_either(special):
    failure = _failure(media_io.sha256_of, "file://" + special["a FIFO (named pipe)"])
    assert failure.kind == ErrorKind.NOT_A_FILE


@pytest.mark.parametrize("reader", sorted(READERS))
def test_missing_and_dangling_paths_are_missing_files(tmp_path, reader):
    os.symlink(tmp_path / "gone.mp4", tmp_path / "dangling.mp4")
    missing = _failure(READERS[reader], str(tmp_path / "none.mp4"))
    assert (missing.kind, missing.message) == (ErrorKind.MISSING_FILE, f"no such file: {tmp_path}/none.mp4")
    dangling = _failure(READERS[reader], str(tmp_path / "dangling.mp4"))
    assert dangling.kind == ErrorKind.MISSING_FILE and "symbolic link to a missing file" in dangling.message
    below_a_file = _failure(READERS[reader], media.text(str(tmp_path / "t.txt"), "x") + "/a.mp4")
    assert below_a_file.kind == ErrorKind.MISSING_FILE


def test_an_empty_file_is_empty_and_a_symlink_to_a_file_is_read(tmp_path):
    empty = media.text(str(tmp_path / "e.txt"), "")
    assert _failure(media_io.check_readable, empty).kind == ErrorKind.EMPTY_FILE
    target = media.text(str(tmp_path / "t.txt"), "hello")
    os.symlink(target, tmp_path / "link.txt")
    assert media_io.check_readable(str(tmp_path / "link.txt")) == 5
    assert media_io.read_bytes(str(tmp_path / "link.txt")) == b"hello"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_a_file_without_read_permission_is_unreadable(tmp_path):
    path = media.text(str(tmp_path / "secret.txt"), "x")
    os.chmod(path, 0)
    for reader in ("check_readable", "sha256_of", "read_bytes"):
        assert _failure(READERS[reader], path).kind == ErrorKind.UNREADABLE


def test_check_readable_asks_for_read_permission(tmp_path, monkeypatch):
    path = media.text(str(tmp_path / "secret.txt"), "x")
    assert media_io.check_readable(path) == 1  # the owner may read it: os.access is not asked
    os.chmod(path, 0o044)  # then only the system knows (as root, os.access says yes: it is told no here)
    monkeypatch.setattr(os, "access", lambda checked, mode: not (checked == path and mode == os.R_OK))
    failure = _failure(media_io.check_readable, path)
    assert (failure.kind, failure.message) == (ErrorKind.UNREADABLE, f"cannot read {path}: permission denied")


def test_file_uris_read_the_same_bytes_as_plain_paths(tmp_path):
    path = media.text(str(tmp_path / "a b%.txt"), "héllo")
    content = "héllo".encode()
    for uri in (f"file://{tmp_path}/a%20b%25.txt", f"file://localhost{tmp_path}/a%20b%25.txt"):
        assert media_io.is_local(uri)
        assert media_io.check_readable(uri) == len(content)
        assert media_io.read_bytes(uri) == content
        assert media_io.sha256_of(uri) == hashlib.sha256(content).hexdigest()
        assert media_io.file_identity(uri) == media_io.file_identity(path)
        with media_io.local_copy(uri) as local:
            assert local == path


def test_a_file_uri_on_another_host_is_unsupported(tmp_path):
    failure = _failure(media_io.check_readable, f"file://server{tmp_path}/a.txt")
    assert (failure.stage, failure.kind) == (Stage.READ, ErrorKind.UNSUPPORTED_URI)
    assert "file:///abs/path" in failure.message and "'server'" in failure.message


@pytest.mark.parametrize("reader", sorted(READERS))
def test_an_unknown_scheme_is_unsupported_and_lists_the_available_ones(reader):
    failure = _failure(READERS[reader], "foo://bucket/a.mp4")
    assert (failure.stage, failure.kind) == (Stage.READ, ErrorKind.UNSUPPORTED_URI)
    available = media_io.available_schemes()
    assert "file" in available and "foo" not in available
    assert failure.message == ("unsupported URI scheme foo:// in foo://bucket/a.mp4: inputs may be plain paths or "
                               + ", ".join(f"{scheme}://" for scheme in available))
    assert "gcp" not in failure.message and "pip install" not in failure.message


def test_available_schemes_come_from_beams_registry(tmp_path):
    FakeRemoteFileSystem.root = str(tmp_path)  # importing it registered the scheme, as a plugin's FileSystem would
    assert "fakeremote" in media_io.available_schemes()
    media.text(str(tmp_path / "a.txt"), "remote")
    assert media_io.read_bytes("fakeremote://a.txt") == b"remote"


def test_a_missing_optional_beam_scheme_says_what_to_install():
    if "gs" in media_io.available_schemes():
        pytest.skip("Beam's GCP extras are installed here")
    failure = _failure(media_io.check_readable, "gs://bucket/a.mp4")
    assert failure.kind == ErrorKind.UNSUPPORTED_URI
    assert failure.message.endswith("(gs:// needs pip install 'apache-beam[gcp]')")


def test_remote_folders_and_missing_objects(tmp_path):
    FakeRemoteFileSystem.root = str(tmp_path)
    (tmp_path / "folder").mkdir()
    media.text(str(tmp_path / "folder" / "inside.txt"), "x")
    assert _failure(media_io.check_readable, "fakeremote://folder/").kind == ErrorKind.NOT_A_FILE
    assert _failure(media_io.sha256_of, "fakeremote://folder").kind == ErrorKind.NOT_A_FILE
    assert _failure(media_io.check_readable, "fakeremote://none.mp4").kind == ErrorKind.MISSING_FILE
    assert _failure(media_io.sha256_of, "fakeremote://none.mp4").kind == ErrorKind.MISSING_FILE
