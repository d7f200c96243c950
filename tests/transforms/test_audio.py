import librosa
import numpy as np
import pytest

from schemas.config import AudioConfig
from schemas.errors import ErrorKind, SampleFailure
from tests import media
from tests.memory import peak_rss_growth_mb
from tests.transforms.corrupt_media import audio_packets, corrupt_audio_packets
from transforms.audio_decode import MonoDecoder, decode_mono
from transforms.encoders.builtin import mfcc_stats, stats_from_moments
from transforms.media_writers import write_media
from transforms.mfcc import AudioEncoderInput, MfccMoments, MfccStream, mfcc_frames


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


def test_a_wav_whose_samples_follow_a_large_metadata_chunk_decodes_whole(tmp_path):
    """WAV files are opened with a short probe (their header states everything): a metadata chunk larger than the
    probe, before the samples, must not cost samples or the rate."""
    import soundfile

    plain = str(tmp_path / "plain.wav")
    soundfile.write(plain, media.tone(440.0, 1.0, sample_rate=22050), 22050, subtype="PCM_16")
    with open(plain, "rb") as handle:
        riff = handle.read()
    fmt_end = 12 + 8 + int.from_bytes(riff[16:20], "little")  # RIFF header, then the fmt chunk
    metadata = b"LIST" + (20000).to_bytes(4, "little") + b"INFO" + b"\0" * 19996
    tagged = riff[:fmt_end] + metadata + riff[fmt_end:]
    tagged = tagged[:4] + (len(tagged) - 8).to_bytes(4, "little") + tagged[8:]
    (tmp_path / "tagged.wav").write_bytes(tagged)
    np.testing.assert_array_equal(_decode(str(tmp_path / "tagged.wav")), _decode(plain))
    assert len(_decode(plain)) == pytest.approx(16000, abs=20)


@pytest.mark.parametrize("cut", [None, 0.5], ids=["whole", "truncated"])
def test_a_16_bit_mono_wav_at_the_target_rate_reads_as_pyav_decodes_it(tmp_path, monkeypatch, cut):
    """Such WAVs are read with soundfile (ten times cheaper than PyAV's demuxer, decoder and resampler): the samples
    must be PyAV's, bit for bit, also of a file cut short in its data."""
    import soundfile

    from transforms import audio_decode

    path = str(tmp_path / "plain.wav")
    samples = np.random.default_rng(0).integers(-32768, 32768, 3 * 16000 + 123).astype(np.int16)
    samples[:2] = (-32768, 32767)
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    if cut is not None:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: int(len(data) * cut) + 1])
    assert audio_decode._is_plain_wav(path, 16000) and not audio_decode._is_plain_wav(path, 22050)
    direct = _decode(path)
    monkeypatch.setattr(audio_decode, "_is_plain_wav", lambda path, rate: False)
    through_pyav = _decode(path)
    assert len(direct) == pytest.approx(len(samples) * (cut or 1.0), abs=30)  # the header is 44 bytes
    np.testing.assert_array_equal(direct, through_pyav)


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


@pytest.mark.parametrize("sample_rate, n_fft, n_mels", [(16000, 400, 64), (22050, 2048, 128), (8000, 256, 40)])
def test_mel_filters_are_librosas(sample_rate, n_fft, n_mels):
    from transforms.mfcc import _mel_basis

    np.testing.assert_allclose(_mel_basis(sample_rate, n_fft, n_mels), librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels),
                               rtol=1e-5, atol=1e-7)


def test_silence_and_a_loud_tone_agree_with_librosa_too():
    """The -100 dB floor of silent frames and a full-scale tone (no ``top_db`` clipping on either side)."""
    config = AudioConfig()
    signal = np.concatenate([np.zeros(4000, np.float32), media.tone(1000.0, 0.5) * 4.0])
    reference = librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(
        y=signal, sr=16000, n_fft=400, hop_length=160, n_mels=64, center=False), ref=1.0, amin=1e-10, top_db=None), n_mfcc=40).T
    np.testing.assert_allclose(mfcc_frames(signal, config=config), reference, rtol=1e-4, atol=2e-3)


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


@pytest.mark.parametrize("name, codec, rate", [("tone.m4a", "aac", 16000), ("tone.ac3", "ac3", 48000), ("clip.mp4", "aac", 16000)])
def test_a_corrupt_packet_is_skipped_and_counted_not_the_stream_lost(tmp_path, name, codec, rate):
    """As ffmpeg does: the bad packet is left out, everything else decodes (before: ``decode_error``, no audio)."""
    frames = media.solid_frames(40) if name.endswith(".mp4") else None
    good = str(tmp_path / name)
    write_media(good, frames=frames, width=64, height=48, audio=media.tone(440.0, 4.0, sample_rate=rate), sample_rate=rate, audio_codec=codec)
    bad = corrupt_audio_packets(good, str(tmp_path / f"bad_{name}"))
    decoder = MonoDecoder(bad, sample_rate=16000)
    samples = np.concatenate(list(decoder.chunks()))
    assert (decoder.n_skipped_packets, decoder.n_packets) == (1, len(audio_packets(good)))
    whole = len(_decode(good))
    packet_s = 1536 / rate if codec == "ac3" else 1024 / rate
    assert whole - len(samples) == pytest.approx(packet_s * 16000, abs=64)  # one packet's worth missing, no more
    assert _peak_hz(samples) == pytest.approx(440.0, abs=10)


def test_a_stream_whose_every_packet_is_corrupt_is_a_decode_error(tmp_path):
    good = str(tmp_path / "tone.m4a")
    write_media(good, audio=media.tone(440.0, 1.0), sample_rate=16000, audio_codec="aac")
    bad = corrupt_audio_packets(good, str(tmp_path / "bad.m4a"), indices=range(len(audio_packets(good))))
    with pytest.raises(SampleFailure) as caught:
        _decode(bad)
    assert caught.value.kind == ErrorKind.DECODE_ERROR and "none of the" in caught.value.message


def test_window_samples_tile_the_stream():
    """Kept window samples do not overlap and, joined, are the stream (its last < n_fft samples aside)."""
    config = AudioConfig(window_s=0.5)
    signal = np.random.default_rng(3).standard_normal(16000 * 2 + 7000).astype(np.float32)
    windows = list(MfccStream(config, keep_samples=True).windows(signal[i : i + 999] for i in range(0, len(signal), 999)))
    joined = np.concatenate([w.samples for w in windows])
    np.testing.assert_array_equal(joined, signal[: len(joined)])
    assert len(signal) - len(joined) < config.n_fft
    assert all(w.samples.base is None for w in windows)  # copies: a view would keep the decoder's buffer alive
    assert [len(w.samples) for w in windows[:-1]] == [8000] * (len(windows) - 1)


def test_mfcc_frames_hold_only_their_own_coefficients():
    """librosa's MFCCs are a view of the DCT of every mel band (64 for 40 kept): a window must not keep the 64."""
    mfcc = mfcc_frames(np.random.default_rng(4).standard_normal(16000).astype(np.float32), config=AudioConfig())
    assert mfcc.flags["C_CONTIGUOUS"] and mfcc.base is None and mfcc.nbytes == mfcc.shape[0] * 40 * 4


@pytest.mark.parametrize("window_s", [0.3, 1.0, 30.0])
def test_moments_gathered_window_by_window_give_the_whole_stream_statistics(window_s):
    """builtin:mfcc-stats from running moments equals mean/std of the whole MFCC sequence and of its deltas."""
    config = AudioConfig(window_s=window_s)
    signal = (media.tone(300.0, 3.0) + 0.1 * np.random.default_rng(5).standard_normal(48000)).astype(np.float32)
    moments = MfccMoments(config.n_mfcc)
    windows = list(MfccStream(config).windows([signal]))
    for window in windows:
        moments.add(window.mfcc)
    whole = np.concatenate([w.mfcc for w in windows])
    np.testing.assert_allclose(stats_from_moments(moments.payload()), mfcc_stats(whole), rtol=1e-4, atol=1e-3)


def test_one_frame_has_zero_delta_statistics():
    moments = MfccMoments(2)
    moments.add(np.array([[1.0, 2.0]], np.float32))
    np.testing.assert_array_equal(stats_from_moments(moments.payload()), [1, 2, 0, 0, 0, 0, 0, 0])


def _encoder_windows(seconds: float, needs: set[str], window_s: float = 1.0) -> list:
    config = AudioConfig(window_s=window_s)
    signal = np.random.default_rng(6).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1
    inputs = AudioEncoderInput(frozenset(needs), window_s=window_s, n_mfcc=config.n_mfcc)
    for window in MfccStream(config, keep_samples=inputs.keeps_samples).windows([signal]):
        inputs.add(window)
    return inputs.items()


def test_encoder_items_are_one_per_window_and_a_short_tail_joins_the_last():
    items = _encoder_windows(3.4, {"waveform", "mfcc"})  # windows of 1, 1, 1.4 s (the 0.4 s tail joined)
    assert [len(payload["waveform"]) for payload, _ in items] == [16000, 16000, 22400]
    assert [len(payload["mfcc"]) for payload, _ in items] == [100, 100, 138]
    assert [window["index"] for _, window in items] == [0, 1, 2] and {window["count"] for _, window in items} == {3}
    assert [window["weight_s"] for _, window in items] == pytest.approx([1.0, 1.0, 1.4], abs=0.01)  # the last: to its last frame's end
    long_tail = _encoder_windows(2.6, {"waveform"})  # a 0.6 s tail is a window of its own
    assert [len(payload["waveform"]) for payload, _ in long_tail] == [16000, 16000, 9600]
    assert set(long_tail[0][0]) == {"waveform"}


def test_a_stream_summary_is_one_item():
    (payload, window), = _encoder_windows(3.4, {"mfcc_moments"})
    assert window is None and payload["mfcc_moments"]["count"][0] == 1 + (54400 - 400) // 160
