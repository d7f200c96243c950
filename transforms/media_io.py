"""Reading inputs through Beam's FileSystems, so local paths and ``gs://``-style URIs both work.

Decoders (OpenCV, PyAV) need a local file: ``local_copy`` hands them the
path itself for local files and a temporary copy for remote ones.

Inputs are checked before they are read: what is not a regular file (a
directory, a FIFO, a device, a socket, a symbolic link loop) fails as
``not_a_file`` (never opened: a FIFO would block the worker forever), a URI
scheme no Beam ``FileSystem`` here handles as ``unsupported_uri``. ``file://``
URIs (``file:///abs/path`` or ``file://localhost/abs/path``, percent-encoded as
RFC 8089 says) name local files.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import urllib.parse
from typing import BinaryIO, Iterator, Optional

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from schemas.errors import ErrorKind, SampleFailure, Stage

_CHUNK_BYTES = 1 << 20

FILE_SCHEME = "file"

_EXTRA_FOR_SCHEME = {"gs": "apache-beam[gcp]", "s3": "apache-beam[aws]", "azfs": "apache-beam[azure]", "hdfs": "apache-beam[hadoop]"}
"""Beam's own schemes whose ``FileSystem`` only registers with an extra installed (what to install for them)."""

_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def available_schemes() -> list[str]:
    """The URI schemes inputs may use here, sorted: ``file`` and those of Beam's registered ``FileSystem`` classes."""
    registered = {cls.scheme() for cls in FileSystem.get_all_subclasses()}
    return sorted({FILE_SCHEME} | {scheme for scheme in registered if scheme})


def scheme_of(uri: str) -> Optional[str]:
    """The scheme of ``uri`` (``gs`` for ``gs://b/a.mp4``), or ``None`` for a plain path."""
    if "://" not in uri:  # a plain path (the common case, asked for every file of every run)
        return None
    return FileSystems.get_scheme(uri)


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return scheme_of(uri) in (None, FILE_SCHEME)


def _unsupported(uri: str, message: str) -> SampleFailure:
    return SampleFailure(Stage.READ, ErrorKind.UNSUPPORTED_URI, message)


def check_scheme(uri: str) -> None:
    """Nothing when some file system here reads ``uri``'s scheme (plain paths always).

    Raises:
        SampleFailure: (``read``, ``unsupported_uri``) naming the schemes that are available, and the extra to
            install when the scheme is one of Beam's optional ones (``gs`` needs ``apache-beam[gcp]``).
    """
    scheme = scheme_of(uri)
    available = available_schemes()
    if scheme is None or scheme in available:
        return
    listed = ", ".join(f"{name}://" for name in available)
    message = f"unsupported URI scheme {scheme}:// in {uri}: inputs may be plain paths or {listed}"
    if scheme in _EXTRA_FOR_SCHEME:
        message += f" ({scheme}:// needs pip install '{_EXTRA_FOR_SCHEME[scheme]}')"
    raise _unsupported(uri, message)


def _local_path(uri: str) -> str:
    """The path a plain path or a ``file://`` URI names.

    Raises:
        SampleFailure: (``read``, ``unsupported_uri``) for a ``file://`` URI naming another host.
    """
    if scheme_of(uri) != FILE_SCHEME:
        return uri
    rest = uri.strip()[len("file://"):]
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost"):
        raise _unsupported(uri, f"{uri}: a file:// URI names a file on this machine (file:///abs/path); host {host!r} "
                                "is not supported")
    return urllib.parse.unquote(slash + path)


def _os_failure(error: OSError, uri: str) -> SampleFailure:
    """The ``SampleFailure`` of an ``OSError`` met while looking at or opening a local input."""
    if error.errno == errno.ELOOP:
        return SampleFailure(Stage.READ, ErrorKind.NOT_A_FILE, f"not a file: {uri} is a symbolic link loop")
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        dangling = error.errno == errno.ENOENT and os.path.islink(_local_path(uri))
        return SampleFailure(Stage.READ, ErrorKind.MISSING_FILE,
                             f"no such file: {uri}" + (" (a symbolic link to a missing file)" if dangling else ""))
    return SampleFailure(Stage.READ, ErrorKind.UNREADABLE, f"cannot read {uri}: {error.strerror or error}")


def _check_regular(mode: int, uri: str) -> None:
    """Nothing for a regular file.

    Raises:
        SampleFailure: (``read``, ``not_a_file``) saying what ``uri`` is instead.
    """
    if stat.S_ISREG(mode):
        return
    what = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    raise SampleFailure(Stage.READ, ErrorKind.NOT_A_FILE, f"not a file: {uri} is {what}")


def _stat_regular(uri: str) -> os.stat_result:
    """``os.stat`` of the local regular file ``uri`` (symbolic links followed).

    Raises:
        SampleFailure: ``missing_file``, ``not_a_file``, ``unreadable`` or ``unsupported_uri`` (``read`` stage).
    """
    path = _local_path(uri)
    try:
        status = os.stat(path)
    except OSError as error:
        raise _os_failure(error, uri) from None
    _check_regular(status.st_mode, uri)
    return status


def _open_local(uri: str) -> BinaryIO:
    """The local regular file ``uri`` opened for reading.

    It is checked before it is opened, and opened without blocking (a FIFO swapped in between would otherwise wait
    for a writer forever), then checked again.

    Raises:
        SampleFailure: as ``_stat_regular``.
    """
    _stat_regular(uri)
    try:
        fd = os.open(_local_path(uri), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise _os_failure(error, uri) from None
    try:
        _check_regular(os.fstat(fd).st_mode, uri)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _open(uri: str) -> BinaryIO:
    """``uri`` opened for reading: a checked local file, or a stream from Beam's FileSystems.

    Raises:
        SampleFailure: for local files as ``_stat_regular``; ``unsupported_uri``; ``not_a_file`` for a remote folder.
    """
    if is_local(uri):
        return _open_local(uri)
    check_scheme(uri)
    try:
        # Media bytes are read as they are: never let a '.gz' suffix trigger decompression.
        return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)
    except IsADirectoryError:
        raise SampleFailure(Stage.READ, ErrorKind.NOT_A_FILE, f"not a file: {uri} is a folder") from None
    except FileNotFoundError:
        raise SampleFailure(Stage.READ, ErrorKind.MISSING_FILE, f"no such file: {uri}") from None


def _remote_size(uri: str) -> int:
    """Size in bytes of the object ``uri`` in a store Beam's FileSystems reach.

    Raises:
        SampleFailure: ``missing_file``; ``not_a_file`` for a folder (a prefix other objects live under);
            ``unreadable`` when the store fails (its message says why).
    """
    check_scheme(uri)
    try:
        matched = FileSystems.match([uri])[0].metadata_list if FileSystems.exists(uri) else []
        exact = [metadata for metadata in matched if metadata.path == uri]
        if exact:
            return exact[0].size_in_bytes
        if matched or FileSystems.match([uri.rstrip("/") + "/*"], limits=[1])[0].metadata_list:
            raise SampleFailure(Stage.READ, ErrorKind.NOT_A_FILE, f"not a file: {uri} is a folder")
    except BeamIOError as error:
        raise SampleFailure(Stage.READ, ErrorKind.UNREADABLE, f"cannot read {uri}: {error}") from None
    raise SampleFailure(Stage.READ, ErrorKind.MISSING_FILE, f"no such file: {uri}")


def check_readable(uri: str) -> int:
    """Size of ``uri`` in bytes, after checking that it is a regular file that can be read.

    Raises:
        SampleFailure: at stage ``read``: ``missing_file`` when it does not exist, ``not_a_file`` for a directory,
            FIFO, device, socket or symbolic link loop, ``unreadable`` without read permission (or when a store
            fails), ``unsupported_uri`` for a scheme no file system here reads, ``empty_file`` when it has zero bytes.
    """
    if is_local(uri):
        status = _stat_regular(uri)
        _check_local_access(uri, status)
        return status.st_size
    size = _remote_size(uri)
    if size == 0:
        raise SampleFailure(Stage.READ, ErrorKind.EMPTY_FILE, f"file is empty (0 bytes): {uri}")
    return size


_UID = os.getuid()
"""The real user id ``os.access`` checks with (a system call: asked once, not for every file of a rerun)."""


def _check_local_access(uri: str, status: os.stat_result) -> None:
    """Raises ``SampleFailure`` (``unreadable``, ``empty_file``) unless the local regular file ``uri`` (``os.stat``
    gave ``status``) can be read."""
    owner_may_read = status.st_uid == _UID and status.st_mode & stat.S_IRUSR  # what os.access would say, unasked
    if not owner_may_read and not os.access(_local_path(uri), os.R_OK):
        raise SampleFailure(Stage.READ, ErrorKind.UNREADABLE, f"cannot read {uri}: permission denied")
    if status.st_size == 0:
        raise SampleFailure(Stage.READ, ErrorKind.EMPTY_FILE, f"file is empty (0 bytes): {uri}")


def read_bytes(uri: str) -> bytes:
    """The whole content of ``uri`` (for small files such as texts).

    Raises:
        SampleFailure: as ``check_readable`` for what is not a regular file or has an unsupported scheme.
    """
    with _open(uri) as handle:
        return handle.read()


def sha256_of(uri: str) -> str:
    """Hex SHA-256 of the bytes of ``uri``, read in 1 MiB chunks.

    Raises:
        SampleFailure: as ``read_bytes``.
    """
    digest = hashlib.sha256()
    with _open(uri) as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local filesystem path with the content of ``uri``; remote files are copied to a temporary file.

    Raises:
        SampleFailure: as ``read_bytes`` (a local input is checked to be a regular file, never opened here).
    """
    if is_local(uri):
        _stat_regular(uri)
        yield _local_path(uri)
        return
    suffix = os.path.splitext(uri)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with _open(uri) as handle:
            shutil.copyfileobj(handle, tmp, _CHUNK_BYTES)
        tmp.flush()
        yield tmp.name


def file_identity(uri: str) -> str:
    """``"{size}:{modification time}"`` of ``uri``: nanoseconds on a local disk, the store's update time (seconds) elsewhere.

    Two equal identities are taken to mean the same content (an incremental run reads a file again only when its
    identity changed).

    Raises:
        SampleFailure: as ``check_readable``.
    """
    if is_local(uri):  # one stat (an unchanged rerun takes the identity of every file)
        status = _stat_regular(uri)
        _check_local_access(uri, status)
        return f"{status.st_size}:{status.st_mtime_ns}"
    size = check_readable(uri)
    metadata = FileSystems.match([uri])[0].metadata_list[0]
    return f"{size}:{metadata.last_updated_in_seconds}"


def identity_size(identity: str) -> int:
    """The size in bytes a ``file_identity`` records."""
    return int(identity.split(":", 1)[0])
