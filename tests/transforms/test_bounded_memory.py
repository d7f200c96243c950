"""Memory per sample does not grow with the sample's size (issue 10, part 5).

Each probe runs in a fresh interpreter (``tests.memory``): it first warms up as
a worker does (imports, tokenizer, librosa's JIT, the model) and extracts a
one-text sample, then
measures how much the peak resident memory grows while one big sample is
extracted, its rows consumed as a pipeline consumes them.
"""
import json
import textwrap

import numpy as np
import soundfile

from tests.memory import peak_rss_growth_mb

_SETUP = """
    import json
    import numpy as np
    from schemas.config import ExtractConfig
    from schemas.records import ManifestRecord
    from transforms.extract_sample import SampleExtractor
    from transforms.sample_state import EncodeRequest, RunContext
    from transforms.text import TextTokenizer, resolve_tokenizer_path

    def extractor(requests):
        context = RunContext(requests={m: EncodeRequest(m, frozenset(needs), m) for m, needs in requests.items()})
        return SampleExtractor(ExtractConfig(), TextTokenizer(resolve_tokenizer_path(None), max_tokens=256), context)

    def consume(extractor, **files):
        '''Rows of one sample, as a pipeline takes them: counted by table, the encoder items and samples row kept.'''
        counts, items, samples = {}, [], None
        for table, row in extractor.extract(ManifestRecord(sample_id="big", manifest_row=1, **files)):
            counts[table] = counts.get(table, 0) + 1
            if table.startswith("_encode/"):
                items.append(row)
            elif table == "samples":
                samples = row
        return counts, items, samples

    def warm_up(extractor, directory):
        '''What ExtractSampleFn.setup does (librosa's JIT warmed), then a one-text sample.'''
        from transforms.mfcc import mfcc_frames
        mfcc_frames(np.zeros(800, np.float32), config=ExtractConfig().audio)
        with open(f"{directory}/one.txt", "w", encoding="utf-8") as handle:
            handle.write("hello world")
        consume(extractor, text=f"{directory}/one.txt")
"""

def _setup(extra: str) -> str:
    """The shared helpers, then ``extra`` (both dedented)."""
    return textwrap.dedent(_SETUP) + "\n" + textwrap.dedent(extra)


DEFAULT_NEEDS = "{'text': {'text'}, 'audio': {'mfcc_moments'}}"  # minilm and builtin:mfcc-stats, the default encoders


def _sine_wav(path: str, seconds: int, *, rate: int = 16000) -> str:
    """A 440 Hz sine written one second at a time (cheap for hours of audio; 16-bit PCM)."""
    second = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for _ in range(seconds):
            handle.write(second)
    return path


def test_a_20_mb_text_adds_less_than_150_mb(tmp_path):
    """Before: the whole 20 MB was tokenised (4.2 M tokens) and stored; peak +3,313 MiB. Measured after: +12 MiB."""
    path = tmp_path / "big.txt"
    path.write_text(("The quick brown fox jumps over the lazy dog. " * 470_000)[:20_971_567], encoding="utf-8")
    printed, growth_mb = peak_rss_growth_mb(
        setup=_setup(f"ex = extractor({DEFAULT_NEEDS})\nwarm_up(ex, {str(tmp_path)!r})"),
        work=f"""
            counts, items, samples = consume(ex, text={str(path)!r})
            rows = [row for table, row in ex.extract(ManifestRecord(sample_id="big", manifest_row=1, text={str(path)!r}))]
            text_row = next(row for row in rows if "token_ids" in row)
            warning = next(row for row in rows if row.get("error_kind"))
            print(json.dumps(dict(counts=counts, status=samples["status"], n_errors=samples["n_errors"],
                                  stored=len(text_row["text"].encode()), n_ids=len(text_row["token_ids"]),
                                  n_full=text_row["n_tokens_full"], truncated=text_row["truncated"], kind=warning["error_kind"],
                                  payload=len(items[0]["payload"]["text"]))))
        """,
    )
    result = json.loads(printed)
    assert growth_mb < 150, f"peak RSS grew {growth_mb} MiB for a 20 MB text"
    assert result["stored"] <= 1 << 20 and result["truncated"] and result["kind"] == "text_too_long"
    assert (result["status"], result["n_errors"]) == ("ok", 0)  # a warning, not a failure
    assert result["n_ids"] == 256 and 200_000 < result["n_full"] < 300_000  # tokens of the 1 MiB kept, not of 20 MB
    assert result["payload"] < 2_000  # the text encoder gets the text of the 256 kept tokens


def test_a_2_hour_audio_adds_less_than_150_mb(tmp_path):
    """Before: every window's MFCCs were kept for the encoder, and concatenated (+323 MiB). Measured after: +22 MiB."""
    path = _sine_wav(str(tmp_path / "two_hours.wav"), 2 * 3600)
    printed, growth_mb = peak_rss_growth_mb(
        setup=_setup(f"ex = extractor({DEFAULT_NEEDS})\nwarm_up(ex, {str(tmp_path)!r})"),
        work=f"""
            counts, items, samples = consume(ex, audio={path!r})
            moments = items[0]["payload"]["mfcc_moments"]
            print(json.dumps(dict(counts=counts, duration=samples["audio_duration_s"], frames=float(moments["count"][0]))))
        """,
    )
    result = json.loads(printed)
    assert growth_mb < 150, f"peak RSS grew {growth_mb} MiB for 2 hours of audio"
    assert result["counts"]["audio"] == 240 and result["counts"]["_encode/audio"] == 1
    assert result["duration"] == 7200.0 and result["frames"] == 1 + (7200 * 16000 - 400) // 160


def test_a_30_minute_track_through_a_hugging_face_audio_encoder_stays_under_1_gb(tmp_path):
    """Extraction, batching, inference and pooling of a 30 min track with a 2-layer wav2vec2.

    Before: the whole track was one item, its 90 windows of 20 s one forward pass (+1,424 MiB with this model; a
    180 s track with the 512-channel convolution drove a run to 18.9 GB). Measured after: +120 MiB (60 items of
    one window, two a batch; +562 MiB with the old 600 s batch budget), most of it the 115 MB of samples themselves.
    """
    from tests import tiny_models

    folder = tiny_models.wav2vec2_two_layer_folder(str(tmp_path / "wav2vec2"))
    path = _sine_wav(str(tmp_path / "half_hour.wav"), 30 * 60)
    printed, growth_mb = peak_rss_growth_mb(
        setup=_setup(f"""
            import torch
            from schemas.config import EncodeConfig
            from transforms.embed import EncoderModelHandler, form_batches, pool_window_rows
            from transforms.encoders.registry import resolve_encoder
            torch.set_num_threads(2)
            encoder = resolve_encoder("audio", {folder!r}, encode=EncodeConfig(), extract=ExtractConfig())
            budget = EncodeConfig().max_batch_audio_s
            handler = EncoderModelHandler(encoder, table="embeddings/audio/w2v", device="cpu", precision="fp32",
                                          min_batch_size=1, max_batch_size=32, budget=budget)
            model = handler.load_model()
            ex = extractor({{"audio": encoder.needs}})
            warm_up(ex, {str(tmp_path)!r})
            handler.run_inference([{{"sample_id": "w", "manifest_row": 0, "payload": encoder.dummy_payload()}}], model)
        """),
        work=f"""
            counts, items, samples = consume(ex, audio={path!r})
            longest = max(len(item["payload"]["waveform"]) for item in items)
            rows = [row for batch in form_batches(items, encoder=encoder, max_batch_size=32, budget=budget)
                    for row in handler.run_inference(batch, model)]
            del items
            (table, pooled), = pool_window_rows(rows, encoder=encoder)
            print(json.dumps(dict(n_items=len(rows), longest=longest, table=table, dim=len(pooled["vector"]),
                                  window=sorted(pooled).count("window"))))
        """,
    )
    result = json.loads(printed)
    assert growth_mb < 1024, f"peak RSS grew {growth_mb} MiB for 30 minutes through wav2vec2"
    assert result["n_items"] == 60 and result["longest"] == 30 * 16000  # one item per 30 s window
    assert (result["table"], result["dim"], result["window"]) == ("embeddings/audio/w2v", 32, 0)
