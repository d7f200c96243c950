"""Splitting the records to extract between a known number of workers by estimated cost (``transforms.work_split``)."""
import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from schemas.records import ManifestRecord
from tests.beam_helpers import in_process_pipeline
from transforms.work_split import (AUDIO_BYTE_WEIGHT, OTHER_FILE_COST, UNKNOWN_FILE_BYTES, VIDEO_FILE_COST, SpreadByCost,
                                   _AssignSlotFn, estimated_cost)


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


def test_heavy_and_light_samples_in_any_order_end_up_in_slots_of_about_equal_cost(tmp_path):
    """20 videos and 20 WAVs, the videos first (the worst order for a split by position): every slot gets within one
    video of the others' cost, where a static split of the first half against the second would give one slot all."""
    heavy = _file(tmp_path, "heavy.mp4", 700_000)
    light = _file(tmp_path, "light.wav", 960_000)
    records = [ManifestRecord(sample_id=f"v{i}", manifest_row=i, video=heavy) for i in range(20)]
    records += [ManifestRecord(sample_id=f"a{i}", manifest_row=20 + i, audio=light) for i in range(20)]
    assign = _AssignSlotFn(2)
    assign.setup()
    loads = [0.0, 0.0]
    for record in records:
        ((slot, element),) = assign.process((record, None))
        assert element == (record, None)
        loads[slot] += estimated_cost(record)
    assert abs(loads[0] - loads[1]) <= estimated_cost(records[0])


def test_every_record_comes_out_once_whatever_the_slots(tmp_path):
    """Each of 2 or 3 slots is one list (a worker's chunk); 1 slot leaves the records one by one."""
    records = [(ManifestRecord(sample_id=f"s{i}", manifest_row=i, text=_file(tmp_path, f"{i}.txt", 10 * i + 1)), None)
               for i in range(25)]
    for slots in (1, 2, 3):
        with in_process_pipeline() as pipeline:
            out = pipeline | f"Create{slots}" >> beam.Create(records) | f"Spread{slots}" >> SpreadByCost(slots)
            elements = out if slots == 1 else out | f"Unchunk{slots}" >> beam.FlatMap(lambda chunk: chunk)
            assert_that(elements | f"Ids{slots}" >> beam.Map(lambda element: element[0].sample_id),
                        equal_to([f"s{i}" for i in range(25)]), label=f"Check{slots}")
            if slots > 1:
                assert_that(out | f"Sizes{slots}" >> beam.Map(len) | f"Chunks{slots}" >> beam.combiners.Count.Globally(),
                            equal_to([slots]), label=f"CheckChunks{slots}")
