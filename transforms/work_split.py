"""Records to extract, shared between a known number of worker processes of this machine, which claim them as they go.

Beam's ``FnApiRunner`` hands a stage's input to its N workers statically: the keys of the grouping before it, in
turn. After the join those keys are buckets of sample ids, so one worker may get most of the long videos of a small
corpus while the other idles (measured: 2 workers slower than one process on 20 videos and 20 light samples). A
split fixed in advance, even by estimated cost, still left one of 2 workers idle for 0.1-0.7 s at the end of the
mixed bench corpus (4 s of extraction): estimates miss, and a worker that shares its core with the launcher's
threads runs slower. One process's threads take the next sample when they are free; ``ShareOut(n, claims)`` gives
``n`` worker processes the same: every worker gets the whole list (one key of a grouping each, n keys for n
workers), the largest samples first by estimated cost, and extracts only the samples it claims first
(``WorkClaims``: a file per sample in a folder of this machine, created atomically). The workers end within one
sample of each other, and the small samples come last.

Only for a runner whose ``n`` workers are processes of this machine that each get one key (the direct runner's
``--workers N``): a distributed runner (Dask, Dataflow) balances its own work and wants many keys. And only for a
small manifest (``SPREAD_MAX_MANIFEST_BYTES``): the list reaches each worker as one grouped value, held whole in
memory, and in a large corpus each bucket holds thousands of samples, so the static split of buckets is balanced
already.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import apache_beam as beam

from schemas.errors import SampleFailure
from schemas.records import ManifestRecord
from transforms import media_io
from transforms.unchanged import KnownSample

Element = tuple[ManifestRecord, Optional[KnownSample]]

SPREAD_MAX_MANIFEST_BYTES = 4 << 20
"""The largest manifest (bytes; about 60,000 rows) whose records are shared out; a folder's are not (its size is not
known before the workers list it)."""
VIDEO_FILE_COST = 80_000
"""A video file's fixed cost (opening, probing, the decoder's start) in bytes of video: about 20 ms on this
project's 2-core machine, where a 480p H.264 file costs about 0.25 ms per KB."""
AUDIO_BYTE_WEIGHT = 0.04
"""A byte of an audio or text file against a byte of video: a 30 s 16 kHz WAV (960 KB) costs about 10 ms."""
OTHER_FILE_COST = 4_000
"""An audio or text file's fixed cost, in bytes of video (about 1 ms)."""
UNKNOWN_FILE_BYTES = 1 << 20
"""The size assumed for a file that cannot be looked at cheaply (a remote URI, or one that cannot be read)."""


def estimated_cost(record: ManifestRecord) -> float:
    """What extracting ``record`` costs, in bytes of video (see the constants): its files' sizes, weighted."""
    cost = 0.0
    for modality, uri in record.uris().items():
        size = _size(uri)
        cost += size + VIDEO_FILE_COST if modality == "video" else AUDIO_BYTE_WEIGHT * size + OTHER_FILE_COST
    return cost


def _size(uri: str) -> int:
    if not media_io.is_local(uri):
        return UNKNOWN_FILE_BYTES
    try:
        return media_io.check_readable(uri)
    except SampleFailure:
        return 0  # the extraction records why it cannot be read


@dataclass(frozen=True)
class WorkClaims:
    """Which of the workers sharing one list extracts a sample: the first that claims it. A claim is a symbolic link
    named after the sample's manifest row in ``folder`` (a folder of this machine that every worker sees), pointing at
    the claimer's ``slot``: made in one atomic step, so two workers never both get one. A slot's retried bundle gets
    back the samples it had claimed (their rows were discarded with the failed bundle)."""

    folder: str
    slot: int

    def take(self, manifest_row: int) -> bool:
        """Whether this slot extracts the sample of ``manifest_row``: it claimed it now, or had claimed it before."""
        path = os.path.join(self.folder, f"{manifest_row:x}")
        try:
            os.symlink(str(self.slot), path)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise
            return os.readlink(path) == str(self.slot)
        return True


@dataclass(frozen=True)
class SharedChunk:
    """One worker's share (``ShareOut``): the whole list of ``elements``, largest estimated cost first, of which it
    extracts those its ``claims`` take (``ExtractSampleFn``)."""

    elements: list[Element]
    claims: WorkClaims


def _copies(element: Element, slots: int) -> Iterator[tuple[int, tuple[float, Element]]]:
    cost = estimated_cost(element[0])
    for slot in range(slots):
        yield slot, (cost, element)


def _shared_chunk(pair: tuple[int, Iterable[tuple[float, Element]]], claims_folder: str) -> SharedChunk:
    slot, costed = pair
    ordered = sorted(costed, key=lambda item: (-item[0], item[1][0].manifest_row))
    return SharedChunk([element for _, element in ordered], WorkClaims(claims_folder, slot))


class ShareOut(beam.PTransform):
    """``PCollection[(ManifestRecord, KnownSample | None)]`` -> ``slots`` ``SharedChunk`` s (one per key), each the
    whole list, whose samples the workers claim in ``claims_folder`` (a new, empty folder of this machine; see the
    module docstring). ``slots`` < 2: the elements as they are, one by one."""

    def __init__(self, slots: int, claims_folder: str) -> None:
        super().__init__()
        self._slots = slots
        self._claims_folder = claims_folder

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if self._slots < 2:
            return records
        return (records
                | "CopyPerSlot" >> beam.FlatMap(_copies, self._slots)
                | "GroupBySlot" >> beam.GroupByKey()
                | "SharedChunks" >> beam.Map(_shared_chunk, self._claims_folder))
