import pytest

from schemas.config import AudioConfig, ExtractConfig, TextConfig, VideoConfig
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    "build, names_option",
    [
        (lambda: VideoConfig(fps=0), "--fps"),
        (lambda: VideoConfig(frames_per_video=0), "--frames-per-video"),
        (lambda: VideoConfig(frame_size=2), "--frame-size"),
        (lambda: VideoConfig(jpeg_quality=101), "--jpeg-quality"),
        (lambda: AudioConfig(sample_rate=100), "--sample-rate"),
        (lambda: AudioConfig(n_mfcc=80, n_mels=64), "--n-mfcc"),
        (lambda: AudioConfig(hop_length=500, n_fft=400), "hop_length"),
        (lambda: AudioConfig(window_s=0.001), "--audio-window-s"),
        (lambda: TextConfig(max_tokens=1), "--max-tokens"),
        (lambda: ExtractConfig(max_failure_ratio=1.5), "--max-failure-ratio"),
        (lambda: ExtractConfig(num_shards=-1), "--num-shards"),
    ],
)
def test_bad_values_fail_naming_the_option(build, names_option):
    with pytest.raises(ConfigError, match=names_option):
        build()


def test_defaults_are_valid_and_serialisable():
    config = ExtractConfig()
    as_dict = config.to_dict()
    assert as_dict["audio"]["n_mfcc"] == 40
    assert as_dict["video"]["fps"] == 1.0
    assert as_dict["text"]["max_tokens"] == 256
    assert config.audio.frames_per_window == 3000  # 30 s at a 10 ms hop
