"""Records to extract, split between a known number of worker processes by their estimated cost.

Beam's ``FnApiRunner`` hands a stage's input to its N workers statically: the keys of the grouping before it, in
turn. After the join those keys are buckets of sample ids, so one worker may get most of the long videos of a small
corpus while the other idles (measured: 2 workers slower than one process on 20 videos and 20 light samples).
``SpreadByCost(n)`` keys each record by one of ``n`` slots, the least loaded so far by estimated cost, and groups by
slot: n keys for n workers, so each worker extracts one slot's records (within a largest sample of the others), as
one chunk (a list, which ``ExtractSampleFn`` extracts in as many threads as its worker has cores).

Only for a runner that gives each of exactly ``n`` workers one key (the direct runner's ``--workers N``): a
distributed runner (Dask, Dataflow) balances its own work and wants many keys. And only for a small manifest
(``SPREAD_MAX_MANIFEST_BYTES``): a slot's records reach its worker as one grouped value, held whole in memory, and in
a large corpus each bucket holds thousands of samples, so the static split of buckets is balanced already.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import apache_beam as beam

from schemas.errors import SampleFailure
from schemas.records import ManifestRecord
from transforms import media_io
from transforms.unchanged import KnownSample

Element = tuple[ManifestRecord, Optional[KnownSample]]

SPREAD_MAX_MANIFEST_BYTES = 4 << 20
"""The largest manifest (bytes; about 60,000 rows) whose records are spread by cost; a folder's are not (its size is
not known before the workers list it)."""
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


class _AssignSlotFn(beam.DoFn):
    """``element`` -> ``(slot, element)``: the slot (``0 .. slots - 1``) this instance has given the least cost so far."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._loads: list[float] = []

    def setup(self) -> None:
        self._loads = [0.0] * self._slots

    def process(self, element: Element) -> Iterator[tuple[int, Element]]:
        slot = min(range(self._slots), key=self._loads.__getitem__)
        self._loads[slot] += estimated_cost(element[0])
        yield slot, element


def _chunk(pair: tuple[int, Iterable[Element]]) -> list[Element]:
    return list(pair[1])


class SpreadByCost(beam.PTransform):
    """``PCollection[(ManifestRecord, KnownSample | None)]`` -> the same elements in ``slots`` lists (one per key) of
    about equal estimated cost (see the module docstring). ``slots`` < 2: returned as they are, one by one."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self._slots = slots

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if self._slots < 2:
            return records
        return (records
                | "AssignSlot" >> beam.ParDo(_AssignSlotFn(self._slots))
                | "GroupBySlot" >> beam.GroupByKey()
                | "SlotChunks" >> beam.Map(_chunk))
