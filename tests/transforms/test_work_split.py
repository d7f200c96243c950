"""Sharing the records to extract between a known number of worker processes, which claim them (``transforms.work_split``)."""
import os
import threading

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from schemas.records import ManifestRecord
from tests.beam_helpers import in_process_pipeline
from transforms.work_split import (AUDIO_BYTE_WEIGHT, OTHER_FILE_COST, UNKNOWN_FILE_BYTES, VIDEO_FILE_COST, ShareOut, WorkClaims,
                                   estimated_cost)


def _file(tmp_path, name, size):
    path = tmp_path / name
    path.write_bytes(b"\0" * size)
    return str(path)


def test_a_video_costs_its_bytes_and_an_audio_or_text_file_a_fraction_of_theirs(tmp_path):
    video = ManifestRecord(sample_id="v", manifest_row=0, video=_file(tmp_path, "v.mp4", 700_000), text=_file(tmp_path, "v.txt", 200))
    audio = ManifestRecord(sample_id="a", manifest_row=1, audio=_file(tmp_path, "a.wav", 960_000))
    assert estimated_cost(video) == 700_000 + VIDEO_FILE_COST + AUDIO_BYTE_WEIGHT * 200 + OTHER_FILE_COST
    assert estimated_cost(audio) == AUDIO_BYTE_WEIGHT * 960_000 + OTHER_FILE_COST
    assert estimated_cost(video) > 10 * estimated_cost(audio)  # a 30 s 480p video against a 30 s WAV
    missing = ManifestRecord(sample_id="m", manifest_row=2, video=str(tmp_path / "gone.mp4"))
    remote = ManifestRecord(sample_id="r", manifest_row=3, video="gs://bucket/clip.mp4")
    assert estimated_cost(missing) == VIDEO_FILE_COST  # its extraction fails fast and says why
    assert estimated_cost(remote) == UNKNOWN_FILE_BYTES + VIDEO_FILE_COST  # no remote call just to estimate
    spaced = _file(tmp_path, "a clip.mp4", 5_000)  # a file:// URI as the extraction reads it: host, percent-encoding
    as_uri = ManifestRecord(sample_id="u", manifest_row=4, video="file://localhost" + spaced.replace(" ", "%20"))
    assert estimated_cost(as_uri) == 5_000 + VIDEO_FILE_COST


def test_each_sample_goes_to_the_first_worker_that_claims_it_and_back_to_it_on_a_retry(tmp_path):
    """Two workers' claims in one folder: a sample claimed by one is refused to the other, and given again to the slot
    that holds it (its bundle retried: the rows of the failed attempt were discarded)."""
    first, second = WorkClaims(str(tmp_path), 0), WorkClaims(str(tmp_path), 1)
    assert first.take(7) and not second.take(7)
    assert second.take(8) and not first.take(8)
    assert first.take(7) and second.take(8)  # a retry of each slot
    assert sorted(os.listdir(tmp_path)) == ["7", "8"]


def test_two_workers_racing_through_one_list_extract_every_sample_exactly_once(tmp_path):
    """Two threads claim the same 2,000 samples as fast as they can (the claim is one atomic system call): every
    sample is taken by exactly one of them."""
    taken: dict[int, list[int]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def worker(slot: int) -> None:
        claims = WorkClaims(str(tmp_path), slot)
        start.wait()
        taken[slot] = [row for row in range(2000) if claims.take(row)]

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken[0] + taken[1]) == list(range(2000))


def test_a_slow_worker_leaves_the_rest_of_the_list_to_the_others(tmp_path):
    """A worker busy with one long sample does not hold back a share of the list fixed in advance: the other worker
    takes every sample it comes to (a split by estimated cost gave it half, and it idled while the first finished)."""
    slow, fast = WorkClaims(str(tmp_path), 0), WorkClaims(str(tmp_path), 1)
    assert slow.take(0)  # then decodes a long video while the other goes through the list
    assert [row for row in range(20) if fast.take(row)] == list(range(1, 20))
    assert [row for row in range(20) if slow.take(row)] == [0]


def test_every_worker_gets_the_whole_list_largest_samples_first(tmp_path):
    """``ShareOut(n)``: n chunks (one per key: one per worker), each the whole list, the largest estimated cost first
    (the small samples come last, where they even out the workers' ends); 1 slot leaves the records one by one."""
    records = [(ManifestRecord(sample_id=f"s{i}", manifest_row=i, text=_file(tmp_path, f"{i}.txt", 1000 * ((i * 7) % 25) + 1)), None)
               for i in range(25)]
    by_cost = [record.sample_id for record, _ in sorted(records, key=lambda element: -estimated_cost(element[0]))]
    claims = str(tmp_path / "claims")
    for slots in (1, 2, 3):
        with in_process_pipeline() as pipeline:
            out = pipeline | f"Create{slots}" >> beam.Create(records) | f"Share{slots}" >> ShareOut(slots, claims)
            if slots == 1:
                assert_that(out | "Ids" >> beam.Map(lambda element: element[0].sample_id), equal_to([f"s{i}" for i in range(25)]))
                continue
            summary = out | f"Summary{slots}" >> beam.Map(
                lambda chunk: (chunk.claims.slot, chunk.claims.folder, [record.sample_id for record, _ in chunk.elements]))
            assert_that(summary, equal_to([(slot, claims, by_cost) for slot in range(slots)]), label=f"Check{slots}")
