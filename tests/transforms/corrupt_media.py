"""Media with damaged audio packets, made by overwriting the bytes of packets of a file's audio stream."""
from __future__ import annotations

from typing import Optional, Sequence

import av


def audio_packets(path: str) -> list[tuple[int, int]]:
    """``(byte offset, size)`` of every packet of the first audio stream of ``path``, in order."""
    with av.open(path) as container:
        return [(packet.pos, packet.size) for packet in container.demux(container.streams.audio[0]) if packet.size]


def corrupt_audio_packets(source: str, path: str, *, indices: Optional[Sequence[int]] = None) -> str:
    """Copy ``source`` to ``path`` with the payload of some audio packets zeroed (their first two bytes kept).

    ``indices``: which packets (by rank in the stream); ``None``: the middle one. AAC and AC3 decoders reject
    such a packet (``InvalidDataError``), as they do an incomplete frame in files found in the wild.
    """
    packets = audio_packets(source)
    chosen = [len(packets) // 2] if indices is None else list(indices)
    with open(source, "rb") as handle:
        data = bytearray(handle.read())
    for index in chosen:
        offset, size = packets[index]
        data[offset + 2 : offset + size] = bytes(size - 2)
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    return path
