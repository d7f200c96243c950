"""Reading inputs through Beam's FileSystems, so local paths and ``gs://``-style URIs both work.

Decoders (OpenCV, PyAV) need a local file: ``local_copy`` hands them the
path itself for local files and a temporary copy for remote ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.errors import ErrorKind, SampleFailure, Stage

_CHUNK_BYTES = 1 << 20


def _open(uri: str):
    # Media bytes are read as they are: never let a '.gz' suffix trigger decompression.
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def check_readable(uri: str) -> int:
    """Size of ``uri`` in bytes.

    Raises:
        SampleFailure: (``read``, ``missing_file``) when it does not exist,
            (``read``, ``empty_file``) when it has zero bytes.
    """
    if is_local(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise SampleFailure(Stage.READ, ErrorKind.MISSING_FILE, f"no such file: {uri}")
        size = os.path.getsize(path)
    else:
        if not FileSystems.exists(uri):
            raise SampleFailure(Stage.READ, ErrorKind.MISSING_FILE, f"no such file: {uri}")
        size = FileSystems.match([uri])[0].metadata_list[0].size_in_bytes
    if size == 0:
        raise SampleFailure(Stage.READ, ErrorKind.EMPTY_FILE, f"file is empty (0 bytes): {uri}")
    return size


def read_bytes(uri: str) -> bytes:
    """The whole content of ``uri`` (for small files such as texts)."""
    with _open(uri) as handle:
        return handle.read()


def sha256_of(uri: str) -> str:
    """Hex SHA-256 of the bytes of ``uri``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with _open(uri) as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local filesystem path with the content of ``uri``; remote files are copied to a temporary file."""
    if is_local(uri):
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
    size = check_readable(uri)
    if is_local(uri):
        return f"{size}:{os.stat(_local_path(uri)).st_mtime_ns}"
    metadata = FileSystems.match([uri])[0].metadata_list[0]
    return f"{size}:{metadata.last_updated_in_seconds}"


def identity_size(identity: str) -> int:
    """The size in bytes a ``file_identity`` records."""
    return int(identity.split(":", 1)[0])
