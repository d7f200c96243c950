"""The one-pass decoder (``transforms.media_pass``): the same frames and MFCCs as decoding each stream on its own."""
import cv2
import numpy as np
import pytest

from schemas.config import AudioConfig, ConfigError, VideoConfig
from schemas.errors import ErrorKind
from tests import media
from tests.transforms.corrupt_media import corrupt_audio_packets
from transforms.audio_decode import MonoDecoder
from transforms.media_pass import MediaPass
from transforms.media_writers import write_media
from transforms.mfcc import MfccStream
from transforms.video import FrameSampler


def _moving_frames(n: int, *, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """A panning random texture: x264 codes it with P- and (non-reference) B-frames."""
    texture = np.random.default_rng(0).integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    return [np.ascontiguousarray(texture[:, (2 * k) % width: (2 * k) % width + width]) for k in range(n)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """4 s at 25 fps, 96x64 H.264 with B-frames, and a 4 s AAC track at 16 kHz."""
    path = str(tmp_path_factory.mktemp("pass") / "clip.mp4")
    write_media(path, frames=_moving_frames(100), width=96, height=64, fps=25, audio=media.tone(330.0, 4.0), sample_rate=16000)
    return path


def _same_images(jpegs, expected_jpegs, tolerance=8.0):
    """The same pictures: as many, of the same sizes, with a mean absolute difference under ``tolerance`` levels (of
    255) each. Not the same bytes: the one-pass decoder shrinks with FFmpeg's scaler, OpenCV's sampler with
    ``cv2.resize``, both by area averaging: about 5 levels apart on the clip's random texture, where the frame a second later
    differs by about 35."""
    images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    expected = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in expected_jpegs]
    differences = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(images, expected)]
    return (len(images) == len(expected) and all(a.shape == b.shape for a, b in zip(images, expected))
            and max(differences, default=0.0) < tolerance)


def _split(items):
    frames = [item for item in items if not isinstance(item, np.ndarray)]
    chunks = [item for item in items if isinstance(item, np.ndarray)]
    return frames, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))


@pytest.mark.parametrize("video", [VideoConfig(fps=1.0, frame_size=48), VideoConfig(fps=3.0), VideoConfig(frames_per_video=5)])
def test_one_pass_gives_the_frames_of_the_opencv_sampler(clip, video):
    media_pass = MediaPass(clip, video=video, sample_rate=16000, threads=2)
    frames, _ = _split(list(media_pass.items()))
    expected = list(FrameSampler(video).sample(clip))
    assert [f.timestamp_s for f in frames] == pytest.approx([f.timestamp_s for f in expected], abs=1e-9)
    assert [(f.width, f.height) for f in frames] == [(f.width, f.height) for f in expected]
    assert _same_images([f.jpeg for f in frames], [f.jpeg for f in expected])
    assert media_pass.video_failure is None and media_pass.audio_failure is None
    assert media_pass.duration_s == pytest.approx(4.0)


def test_frames_nobody_references_are_not_decoded_in_sampled_mode(clip):
    media_pass = MediaPass(clip, video=VideoConfig(fps=1.0), sample_rate=16000)
    frames, _ = _split(list(media_pass.items()))
    assert len(frames) == 4
    assert 4 <= media_pass.n_decoded_frames < 100  # non-reference B-frames away from a target were skipped


def test_one_pass_audio_and_mfccs_are_bit_identical_to_decoding_the_track_alone(clip):
    config = AudioConfig(window_s=1.0)
    media_pass = MediaPass(clip, video=VideoConfig(), sample_rate=config.sample_rate)
    _, samples = _split(list(media_pass.items()))
    alone = np.concatenate(list(MonoDecoder(clip, sample_rate=config.sample_rate).chunks()))
    assert samples.dtype == np.float32 and np.array_equal(samples, alone)
    # Pushed chunk by chunk as the pass goes, or pulled from the track decoded alone: the same windows, bit for bit.
    pushed = MfccStream(config)
    chunks = [item for item in MediaPass(clip, video=VideoConfig(), sample_rate=16000).items() if isinstance(item, np.ndarray)]
    assert len(chunks) > 4  # fed as the pass goes, not as one block
    windows = [window for chunk in chunks for window in pushed.feed(chunk)] + list(pushed.finish())
    pulled = list(MfccStream(config).windows(MonoDecoder(clip, sample_rate=config.sample_rate).chunks()))
    assert len(windows) == len(pulled) >= 4
    for a, b in zip(windows, pulled):
        assert np.array_equal(a.mfcc, b.mfcc) and np.array_equal(a.frame_times_s, b.frame_times_s)


def test_keyframes_mode_keeps_only_key_frames_at_their_times(tmp_path):
    path = str(tmp_path / "gop25.mp4")
    write_media(path, frames=_moving_frames(75), width=96, height=64, fps=25, gop_size=25, video_options={"sc_threshold": "0"},
                audio=media.tone(440.0, 3.0), sample_rate=16000)
    media_pass = MediaPass(path, video=VideoConfig(frame_mode="keyframes", frame_size=32), sample_rate=16000)
    frames, samples = _split(list(media_pass.items()))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 1.0, 2.0])
    assert [f.frame_index for f in frames] == [0, 1, 2]
    assert media_pass.n_decoded_frames == 3
    assert min(frames[0].width, frames[0].height) == 32
    assert len(samples) == pytest.approx(3 * 16000, abs=1024)  # the sound track comes from the same pass
    assert media_pass.duration_s == pytest.approx(3.0)


def test_frame_mode_is_validated_and_part_of_the_fingerprint(tokenizer_path):
    from pipelines.extract import features_fingerprint
    from schemas.config import ExtractConfig

    with pytest.raises(ConfigError, match="--frame-mode"):
        VideoConfig(frame_mode="every")
    sampled = features_fingerprint(ExtractConfig(), tokenizer_path)
    keyframes = features_fingerprint(ExtractConfig(video=VideoConfig(frame_mode="keyframes")), tokenizer_path)
    assert sampled != keyframes


def test_corrupt_audio_packets_are_skipped_and_counted_in_the_one_pass(clip, tmp_path):
    damaged = corrupt_audio_packets(clip, str(tmp_path / "damaged.mp4"), indices=[10, 20])
    media_pass = MediaPass(damaged, video=VideoConfig(), sample_rate=16000)
    frames, samples = _split(list(media_pass.items()))
    alone = MonoDecoder(damaged, sample_rate=16000)
    expected = np.concatenate(list(alone.chunks()))
    assert media_pass.n_skipped_packets == alone.n_skipped_packets == 2
    assert np.array_equal(samples, expected)
    assert len(frames) == 4 and media_pass.audio_failure is None and media_pass.video_failure is None


def test_an_unreadable_file_fails_both_streams_without_raising(tmp_path):
    path = media.random_bytes(str(tmp_path / "noise.mp4"))
    media_pass = MediaPass(path, video=VideoConfig(), sample_rate=16000)
    assert list(media_pass.items()) == []
    assert (media_pass.video_failure.stage, media_pass.video_failure.kind) == ("video", ErrorKind.UNREADABLE)
    assert (media_pass.audio_failure.stage, media_pass.audio_failure.kind) == ("audio", ErrorKind.UNREADABLE)


def test_a_cut_stream_keeps_its_frames_and_reports_truncation(tmp_path):
    full = media.noisy_faststart_video(str(tmp_path / "full.mp4"))
    cut = media.truncated_copy(full, str(tmp_path / "cut.mp4"), keep=0.4)
    media_pass = MediaPass(cut, video=VideoConfig(fps=1.0), sample_rate=16000)
    kept, _ = _split(list(media_pass.items()))
    assert media_pass.video_failure is not None and media_pass.video_failure.kind == ErrorKind.TRUNCATED
    assert 1 <= len(kept) < 5 and "kept" in media_pass.video_failure.message


def test_the_extractor_rows_of_a_video_match_the_streams_decoded_separately(clip, tokenizer_path):
    from schemas.config import ExtractConfig
    from schemas.records import ManifestRecord
    from transforms.extract_sample import SampleExtractor
    from transforms.text import TextTokenizer

    config = ExtractConfig(audio=AudioConfig(window_s=1.0))
    extractor = SampleExtractor(config, TextTokenizer(tokenizer_path, max_tokens=16))
    rows = list(extractor.extract(ManifestRecord(sample_id="a", manifest_row=0, video=clip)))
    frames = [row for table, row in rows if table == "frames"]
    audio = [row for table, row in rows if table == "audio"]
    samples = [row for table, row in rows if table == "samples"]
    assert _same_images([row["image"] for row in frames], [f.jpeg for f in FrameSampler(config.video).sample(clip)])
    pulled = list(MfccStream(config.audio).windows(MonoDecoder(clip, sample_rate=16000).chunks()))
    assert [row["window_index"] for row in audio] == list(range(len(pulled)))
    assert all(np.array_equal(row["mfcc"], w.mfcc) and row["source"] == "video" for row, w in zip(audio, pulled))
    assert samples[0]["status"] == "ok" and samples[0]["n_frames"] == 4 and samples[0]["n_audio_windows"] == len(pulled)
    assert samples[0]["video_duration_s"] == pytest.approx(4.0) and samples[0]["audio_duration_s"] == pytest.approx(4.0, abs=0.1)
