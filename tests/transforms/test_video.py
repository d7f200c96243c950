import cv2
import numpy as np
import pytest

from schemas.config import VideoConfig
from schemas.errors import ErrorKind, SampleFailure
from tests import media
from tests.memory import peak_rss_growth_mb
from transforms.media_writers import write_media
from transforms.video import FrameSampler, resized_shape


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """3 s at 10 fps, 64x48; frame k has grey level (20 k) % 256."""
    return media.video(str(tmp_path_factory.mktemp("video") / "clip.mp4"), seconds=3.0)


def _grey(frame) -> float:
    image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(image.mean())


def test_fps_sampling_keeps_one_frame_per_second_with_timestamps(clip):
    sampler = FrameSampler(VideoConfig(fps=1.0, frame_size=48))
    frames = list(sampler.sample(clip))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 1.0, 2.0])
    assert [f.frame_index for f in frames] == [0, 1, 2]
    # The kept frames are the right ones: frame 10 (t = 1 s) has grey level 200, frame 20 has 144.
    assert [_grey(f) for f in frames] == pytest.approx([0, 200, 144], abs=6)
    assert sampler.duration_s == pytest.approx(3.0)


def test_higher_fps_keeps_more_frames(clip):
    frames = list(FrameSampler(VideoConfig(fps=2.0)).sample(clip))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_frames_per_video_spreads_frames_evenly(clip):
    frames = list(FrameSampler(VideoConfig(frames_per_video=3)).sample(clip))
    # Targets are the centres of three equal thirds: 0.5 s, 1.5 s, 2.5 s.
    assert [f.timestamp_s for f in frames] == pytest.approx([0.5, 1.5, 2.5])


def test_frames_are_resized_so_the_shorter_side_is_frame_size(clip):
    frames = list(FrameSampler(VideoConfig(frame_size=96)).sample(clip))
    assert {(f.width, f.height) for f in frames} == {(128, 96)}
    decoded = cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (96, 128, 3)


@pytest.mark.parametrize("size, expected", [((640, 480), (299, 224)), ((480, 640), (224, 299)), ((224, 224), (224, 224))])
def test_resized_shape_keeps_aspect(size, expected):
    assert resized_shape(*size, shorter_side=224) == expected


def test_unreadable_file_is_a_sample_failure(tmp_path):
    path = media.text(str(tmp_path / "notes.mp4"), "not a video")
    with pytest.raises(SampleFailure) as caught:
        list(FrameSampler(VideoConfig()).sample(path))
    assert (caught.value.stage, caught.value.kind) == ("video", ErrorKind.UNREADABLE)


def test_stream_cut_mid_way_keeps_its_frames_and_reports_truncation(tmp_path):
    """A 'faststart' mp4 (index first) cut at 40%: frames before the cut are kept, the cut is reported."""
    full = media.noisy_faststart_video(str(tmp_path / "full.mp4"))
    cut = media.truncated_copy(full, str(tmp_path / "cut.mp4"), keep=0.4)
    sampler = FrameSampler(VideoConfig(fps=1.0))
    kept = []
    with pytest.raises(SampleFailure) as caught:
        for frame in sampler.sample(cut):
            kept.append(frame)
    assert caught.value.kind == ErrorKind.TRUNCATED
    assert 1 <= len(kept) < 5
    assert "kept" in caught.value.message


def test_decoding_streams_without_holding_decoded_frames(tmp_path):
    """A 20 s 854x480 video (300 frames, 369 MB decoded) is sampled with far less memory than its frames take.

    Runs in a fresh process and compares peak RSS against the same process
    that only opened the video, so other tests' memory does not count.
    """
    path = str(tmp_path / "long.mp4")
    width, height, n = 854, 480, 300
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    frames = (np.clip(ramp + (k % 50) * 4, 0, 255).astype(np.uint8).repeat(height, 0).repeat(3, 2) for k in range(n))
    write_media(path, frames=frames, width=width, height=height, fps=15)
    printed, growth_mb = peak_rss_growth_mb(
        setup=f"""
            import cv2
            from schemas.config import VideoConfig
            from transforms.video import FrameSampler
            capture = cv2.VideoCapture({path!r}); capture.grab(); capture.release()
        """,
        work=f"print(len(list(FrameSampler(VideoConfig(fps=1.0)).sample({path!r}))))",
    )
    kept = int(printed)
    decoded_mb = width * height * 3 * n / 2**20
    assert kept == 20
    assert growth_mb < 100 < decoded_mb, f"peak RSS grew {growth_mb} MB while decoding {decoded_mb:.0f} MB of frames"
