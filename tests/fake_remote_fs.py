"""A Beam ``FileSystem`` for the ``fakeremote://`` scheme, stored in a local folder.

It stands in for ``gs://`` and other object stores in tests: URIs with a
scheme go through Beam's FileSystems and ``local_copy`` exactly as remote
ones do. Importing this module registers the scheme (Beam finds FileSystem
subclasses by their ``scheme()``); set ``FakeRemoteFileSystem.root`` first.
"""
from __future__ import annotations

import os

from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "fakeremote://"


class FakeRemoteFileSystem(FileSystem):
    """Every operation translates ``fakeremote://a/b`` to ``{root}/a/b`` and delegates to Beam's LocalFileSystem."""

    root: str = ""

    def __init__(self, pipeline_options=None) -> None:
        super().__init__(pipeline_options)
        self._local_fs = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls) -> str:
        return "fakeremote"

    def _local(self, uri: str) -> str:
        if not uri.startswith(PREFIX):
            raise ValueError(f"not a {PREFIX} URI: {uri}")
        return os.path.join(self.root, uri[len(PREFIX):])

    def _uri(self, local: str) -> str:
        return PREFIX + os.path.relpath(local, self.root)

    def _all_local(self, uris):
        return [self._local(u) for u in uris]

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path[len(PREFIX):].rstrip("/").rpartition("/")
        return PREFIX + head, tail

    def has_dirs(self) -> bool:
        return True

    def _list(self, dir_or_prefix: str):
        for directory, _, names in os.walk(self._local(dir_or_prefix)):
            for name in names:
                path = os.path.join(directory, name)
                yield FileMetadata(self._uri(path), os.path.getsize(path), os.path.getmtime(path))

    def mkdirs(self, path):
        return self._local_fs.mkdirs(self._local(path))

    def create(self, path, *args, **kwargs):
        return self._local_fs.create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return self._local_fs.open(self._local(path), *args, **kwargs)

    def copy(self, sources, destinations):
        return self._local_fs.copy(self._all_local(sources), self._all_local(destinations))

    def rename(self, sources, destinations):
        return self._local_fs.rename(self._all_local(sources), self._all_local(destinations))

    def delete(self, paths):
        return self._local_fs.delete(self._all_local(paths))

    def exists(self, path):
        return self._local_fs.exists(self._local(path))

    def size(self, path):
        return self._local_fs.size(self._local(path))

    def last_updated(self, path):
        return self._local_fs.last_updated(self._local(path))

    def checksum(self, path):
        return self._local_fs.checksum(self._local(path))

    def metadata(self, path):
        metadata = self._local_fs.metadata(self._local(path))
        return FileMetadata(path, metadata.size_in_bytes, metadata.last_updated_in_seconds)
