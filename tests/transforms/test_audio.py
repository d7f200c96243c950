import librosa
import numpy as np
import pytest

from schemas.config import AudioConfig
from schemas.errors import ErrorKind, SampleFailure
from tests import media
from tests.memory import peak_rss_growth_mb
from transforms.audio_decode import decode_mono
from transforms.media_writers import write_media
from transforms.mfcc import MfccStream, mfcc_frames


def _decode(path: str, **kwargs) -> np.ndarray:
    chunks = list(decode_mono(path, sample_rate=16000, **kwargs))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


FORMATS = [
    ("tone.wav", dict(audio_codec="pcm_s16le"), 44100),
    ("tone.flac", dict(audio_codec="flac"), 22050),
    ("tone.mp3", dict(audio_codec="libmp3lame"), 44100),
    ("tone.ogg", dict(audio_codec="libopus"), 48000),
    ("clip.webm", dict(video_codec="libvpx", audio_codec="libopus", video=True), 48000),
    ("clip.mov", dict(video=True), 44100),
    ("clip.mp4", dict(video=True), 32000),
]


@pytest.mark.parametrize("name, options, rate", FORMATS, ids=[f[0] for f in FORMATS])
def test_common_formats_decode_to_mono_at_the_target_rate(tmp_path, name, options, rate):
    options = dict(options)
    frames = media.solid_frames(20) if options.pop("video", False) else None
    write_media(str(tmp_path / name), frames=frames, width=64, height=48, audio=media.tone(440.0, 2.0, sample_rate=rate), sample_rate=rate, **options)
    samples = _decode(str(tmp_path / name))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / 16000 == pytest.approx(2.0, abs=0.1)
    assert _peak_hz(samples) == pytest.approx(440.0, abs=10)


def test_stereo_is_down_mixed_not_one_channel_picked(tmp_path):
    left = media.tone(440.0, 1.0)
    path = str(tmp_path / "stereo.flac")
    write_media(path, audio=np.stack([left, -left], axis=1), sample_rate=16000, audio_codec="flac")
    # Opposite channels cancel in a mix; picking either channel would keep the tone.
    assert np.abs(_decode(path)).max() < 0.01


def test_missing_audio_stream(tmp_path):
    path = media.video(str(tmp_path / "silent.mp4"), with_audio=False)
    assert len(_decode(path, require_stream=False)) == 0
    with pytest.raises(SampleFailure) as caught:
        _decode(path, require_stream=True)
    assert caught.value.kind == ErrorKind.NO_STREAM


def test_random_bytes_are_unreadable(tmp_path):
    with pytest.raises(SampleFailure) as caught:
        _decode(media.random_bytes(str(tmp_path / "noise.wav")))
    assert (caught.value.stage, caught.value.kind) == ("audio", ErrorKind.UNREADABLE)


def test_mfcc_shape_and_agreement_with_librosa():
    config = AudioConfig()
    signal = media.tone(300.0, 1.0) + 0.05 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    mfcc = mfcc_frames(signal, config=config)
    assert mfcc.shape == (1 + (16000 - 400) // 160, 40)
    reference = librosa.feature.mfcc(
        y=signal, sr=16000, n_mfcc=40, n_fft=400, hop_length=160, n_mels=64, center=False
    ).T  # same analysis; its 80 dB floor does not bite on this signal
    np.testing.assert_allclose(mfcc, reference, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("window_s, chunk", [(0.5, 1000), (1.0, 4096), (0.37, 333)])
def test_windowed_mfcc_equals_whole_signal_mfcc(window_s, chunk):
    """Cutting the stream into windows or chunks does not change the features."""
    config = AudioConfig(window_s=window_s)
    signal = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    stream = MfccStream(config)
    windows = list(stream.windows(signal[i : i + chunk] for i in range(0, len(signal), chunk)))
    whole = mfcc_frames(signal, config=config)
    np.testing.assert_allclose(np.concatenate([w.mfcc for w in windows]), whole, rtol=1e-4, atol=1e-3)
    times = np.concatenate([w.frame_times_s for w in windows])
    np.testing.assert_allclose(times, (np.arange(len(whole)) * 160 + 200) / 16000)
    assert [w.window_index for w in windows] == list(range(len(windows)))
    assert len(windows) == int(np.ceil(3.0 / (config.frames_per_window * 0.01)))
    assert stream.duration_s == pytest.approx(3.0)


def test_audio_shorter_than_one_window_is_too_short():
    with pytest.raises(SampleFailure) as caught:
        list(MfccStream(AudioConfig()).windows([np.zeros(399, np.float32)]))
    assert caught.value.kind == ErrorKind.TOO_SHORT
    assert "399 samples" in caught.value.message


def test_mfcc_is_bit_identical_whatever_the_blas_thread_count():
    """Workers of distributed runners run BLAS on one thread; features must not depend on it."""
    from threadpoolctl import threadpool_limits

    signal = np.random.default_rng(2).standard_normal(16000 * 5).astype(np.float32) * 0.1
    results = []
    for threads in (1, 2, 8):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(mfcc_frames(signal, config=AudioConfig()))
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_long_audio_is_processed_with_bounded_memory(tmp_path):
    """30 minutes of audio (110 MiB as float32 samples, far more as one spectrogram) stay under 60 MiB of growth."""
    path = str(tmp_path / "long.flac")
    minutes, rate = 30, 16000
    noise = np.random.default_rng(0).standard_normal(minutes * 60 * rate).astype(np.float32) * 0.1
    media.write_wav(path, noise, sample_rate=rate)
    del noise
    printed, growth_mb = peak_rss_growth_mb(
        setup="""
            import numpy as np
            from schemas.config import AudioConfig
            from transforms.audio_decode import decode_mono
            from transforms.mfcc import MfccStream, mfcc_frames
            mfcc_frames(np.zeros(16000, np.float32), config=AudioConfig())
        """,
        work=f"""
            stream = MfccStream(AudioConfig())
            frames = sum(len(w.mfcc) for w in stream.windows(decode_mono({path!r}, sample_rate=16000)))
            print(frames, stream.duration_s)
        """,
    )
    frames, duration = printed.split()
    assert int(frames) == 1 + (minutes * 60 * rate - 400) // 160
    assert float(duration) == pytest.approx(minutes * 60)
    samples_mb = minutes * 60 * rate * 4 / 2**20
    assert growth_mb < 60 < samples_mb, f"peak RSS grew {growth_mb} MiB for {samples_mb:.0f} MiB of samples"
