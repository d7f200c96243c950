import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.testing.util import assert_that, equal_to

from schemas.config import AudioConfig, EncodeConfig, ExtractConfig
from schemas.errors import ConfigError
from tests.beam_helpers import in_process_pipeline
from transforms.embed import EmbedItems, EncoderModelHandler, form_batches, pool_window_rows
from transforms.encoders.base import Encoder, resolve_device
from transforms.encoders.builtin import MfccStatsEncoder, mfcc_stats
from transforms.encoders.registry import resolve_encoder


class _LengthEncoder(Encoder):
    """A fake whose output can be computed by hand: [len(text), number of 'x'], failing on 'boom'."""

    modality = "text"
    name = "fake-length"
    needs = frozenset({"text"})

    def load(self, device):
        return "model"

    def cost(self, payload):
        return float(len(payload["text"]))

    def embed(self, model, payloads, *, device, precision):
        if any(p["text"] == "boom" for p in payloads):
            raise RuntimeError("cannot embed boom")
        return np.array([[len(p["text"]), p["text"].count("x")] for p in payloads], dtype=np.float32)

    def dummy_payload(self):
        return {"text": "ok"}

    def fingerprint_parts(self):
        return ["v1"]


def _items(texts):
    return [{"sample_id": f"s{i}", "manifest_row": i, "payload": {"text": t}} for i, t in enumerate(texts)]


def _handler(encoder, **kwargs):
    encoder.probe()
    options = dict(table="embeddings/text/fake", device="cpu", precision="fp32", min_batch_size=1, max_batch_size=4, budget=100)
    options.update(kwargs)
    return EncoderModelHandler(encoder, **options)


def test_batches_respect_item_count_and_padded_budget():
    encoder = _LengthEncoder()
    items = _items(["x" * n for n in (5, 30, 6, 7, 8, 9, 40, 1)])
    batches = list(form_batches(items, encoder=encoder, max_batch_size=4, budget=60))
    sizes = [[len(i["payload"]["text"]) for i in batch] for batch in batches]
    assert sizes == [[1, 5, 6, 7], [8, 9], [30], [40]]  # sorted; each batch: len <= 4 and len * longest <= 60
    assert sorted(i["sample_id"] for b in batches for i in b) == sorted(i["sample_id"] for i in items)


def test_a_single_item_over_budget_gets_its_own_batch():
    batches = list(form_batches(_items(["x" * 500, "x"]), encoder=_LengthEncoder(), max_batch_size=8, budget=10))
    assert [len(b) for b in batches] == [1, 1]


def test_handler_isolates_the_failing_item_and_keeps_the_batch():
    handler = _handler(_LengthEncoder())
    rows = handler.run_inference(_items(["ab", "boom", "xxx"]), handler.load_model())
    assert [(table, row["sample_id"]) for table, row in rows] == [("embeddings/text/fake", "s0"), ("errors", "s1"), ("embeddings/text/fake", "s2")]
    assert rows[1][1]["stage"] == "embed" and "cannot embed boom" in rows[1][1]["message"]
    assert rows[2][1]["vector"].tolist() == [3.0, 3.0]
    assert rows[0][1]["encoder_fingerprint"] == _LengthEncoder().fingerprint()


def test_handler_batching_kwargs_are_configurable():
    kwargs = _handler(_LengthEncoder(), min_batch_size=2, max_batch_size=16).batch_elements_kwargs()
    assert (kwargs["min_batch_size"], kwargs["max_batch_size"], kwargs["max_batch_weight"]) == (2, 16, 100)


def test_embed_items_through_run_inference_loses_nothing():
    texts = ["x" * (i % 7 + 1) for i in range(23)] + ["boom"]
    with in_process_pipeline() as pipeline:
        rows = pipeline | beam.Create(_items(texts)) | EmbedItems(_handler(_LengthEncoder(), max_batch_size=5), num_buckets=3)
        assert_that(
            rows | beam.Map(lambda pair: (pair[1]["sample_id"], pair[0], pair[1]["vector"].tolist() if "vector" in pair[1] else None)),
            equal_to([(f"s{i}", "embeddings/text/fake", [len(t), t.count("x")]) for i, t in enumerate(texts[:-1])] + [("s23", "errors", None)]),
        )


def test_rows_keep_their_values_when_the_encoder_reuses_its_output_buffer():
    class _Reusing(_LengthEncoder):
        buffer = np.zeros((4, 2), np.float32)

        def embed(self, model, payloads, *, device, precision):
            self.buffer[: len(payloads)] = super().embed(model, payloads, device=device, precision=precision)
            return self.buffer[: len(payloads)]

    handler = _handler(_Reusing())
    model = handler.load_model()
    first = handler.run_inference(_items(["ab", "xxx"]), model)
    handler.run_inference(_items(["xxxxxx", "q"]), model)
    assert [row["vector"].tolist() for _, row in first] == [[2.0, 0.0], [3.0, 3.0]]
    assert all(row["vector"].dtype == np.float32 for _, row in first)


def test_mfcc_stats_known_answer():
    mfcc = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]], np.float32)
    # mean, std, mean of first differences, std of first differences
    np.testing.assert_allclose(mfcc_stats(mfcc), [3, 12, np.std([1, 3, 5]), np.std([10, 10, 16]), 2, 3, 0, 3], rtol=1e-6)
    assert MfccStatsEncoder(2).probe() == 8


def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="runs on CUDA only"):
        EncodeConfig(device="cpu", precision="fp16")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
class TestDefaultEncodersOnDevice:
    """The same checks on CPU and, where one exists, on CUDA (with mixed precision there)."""

    def test_text_embeddings_match_the_cpu_reference(self, device):
        encoder = resolve_encoder("text", "minilm", encode=EncodeConfig(), extract=ExtractConfig())
        texts = [{"text": "a cat on a mat"}, {"text": "stock prices fell sharply today"}]
        with torch.inference_mode():
            reference = encoder.embed(encoder.load(torch.device("cpu")), texts, device=torch.device("cpu"), precision="fp32")
            handler = _handler(encoder, device=device, precision="fp32" if device == "cpu" else "fp16")
            rows = handler.run_inference(_items([t["text"] for t in texts]), handler.load_model())
        vectors = np.stack([row["vector"] for _, row in rows])
        np.testing.assert_allclose(vectors, reference, atol=1e-5 if device == "cpu" else 2e-2)

    def test_image_embeddings_have_1280_dims(self, device):
        import cv2

        encoder = resolve_encoder("video", "efficientnet-lite0", encode=EncodeConfig(), extract=ExtractConfig())
        ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
        handler = _handler(encoder, device=device)
        items = [{"sample_id": "a", "manifest_row": 0, "payload": {"frames": [jpeg.tobytes()] * 3}}]
        rows = handler.run_inference(items, handler.load_model())
        assert rows[0][0] == "embeddings/text/fake" and rows[0][1]["vector"].shape == (1280,)


class _WindowEncoder(Encoder):
    """A windowed fake: a window's vector is [its first sample, 1]; fails on a window starting with -1."""

    modality = "audio"
    name = "fake-windows"
    needs = frozenset({"waveform"})
    padded = False
    windowed = True
    sequence_unit = "window"

    def load(self, device):
        return None

    def cost(self, payload):
        return float(len(payload["waveform"]))

    def embed(self, model, payloads, *, device, precision):
        if any(p["waveform"][0] == -1 for p in payloads):
            raise RuntimeError("bad window")
        return np.array([[p["waveform"][0], 1.0] for p in payloads], np.float32)

    def dummy_payload(self):
        return {"waveform": np.zeros(3, np.float32)}

    def fingerprint_parts(self):
        return ["v1"]


def _window_items(sample_id, row, firsts, lengths):
    return [
        {"sample_id": sample_id, "manifest_row": row, "payload": {"waveform": np.full(n, first, np.float32)},
         "window": {"index": i, "count": len(firsts), "weight_s": float(n)}}
        for i, (first, n) in enumerate(zip(firsts, lengths))
    ]


def _window_handler(keep_sequences=False):
    encoder = _WindowEncoder()
    encoder.window_s = 30.0
    encoder.keep_sequences = keep_sequences
    return _handler(encoder, table="embeddings/audio/fake", budget=8)


def test_windows_are_pooled_by_duration_and_kept_as_the_sequence():
    handler = _window_handler(keep_sequences=True)
    rows = handler.run_inference(_window_items("a", 0, [2.0, 5.0, 8.0], [3, 3, 6]), handler.load_model())
    (table, row), = pool_window_rows(rows, encoder=handler.encoder)
    assert table == "embeddings/audio/fake" and "window" not in row
    np.testing.assert_allclose(row["vector"], [(2 * 3 + 5 * 3 + 8 * 6) / 12, 1.0])
    np.testing.assert_array_equal(row["sequence"], [[2, 1], [5, 1], [8, 1]])
    (_, plain), = pool_window_rows(rows, encoder=_window_handler().encoder)
    assert "sequence" not in plain


def test_a_failed_window_fails_its_sample_once_and_only_it():
    handler = _window_handler()
    items = _window_items("a", 0, [2.0, -1.0, -1.0], [3, 3, 3]) + _window_items("b", 1, [4.0], [2])
    rows = handler.run_inference(items, handler.load_model())
    (table, row), = pool_window_rows([r for r in rows if r[1]["sample_id"] == "a"], encoder=handler.encoder)
    assert (table, row["stage"], row["error_kind"]) == ("errors", "embed", "encoder_failed") and "window" not in row
    assert row["message"].startswith("2 of 3 audio windows failed; window 1:") and "bad window" in row["message"]
    (table, row), = pool_window_rows([r for r in rows if r[1]["sample_id"] == "b"], encoder=handler.encoder)
    assert table == "embeddings/audio/fake" and row["vector"].tolist() == [4.0, 1.0]


def test_a_missing_window_is_an_error_not_a_partial_vector():
    handler = _window_handler()
    rows = handler.run_inference(_window_items("a", 0, [2.0, 5.0], [3, 3])[:1], handler.load_model())
    (table, row), = pool_window_rows(rows, encoder=handler.encoder)
    assert table == "errors" and "got windows [0] of 2" in row["message"]


def test_embed_items_pools_windows_into_one_row_per_sample():
    items = _window_items("a", 0, [1.0, 3.0], [4, 4]) + _window_items("b", 1, [-1.0, 2.0, 2.0], [2, 2, 2]) + _window_items("c", 2, [6.0], [5])
    with in_process_pipeline() as pipeline:
        rows = pipeline | beam.Create(items) | EmbedItems(_window_handler(), num_buckets=2)
        assert_that(
            rows | beam.Map(lambda pair: (pair[1]["sample_id"], pair[0], pair[1]["vector"].tolist() if "vector" in pair[1] else None)),
            equal_to([("a", "embeddings/audio/fake", [2.0, 1.0]), ("b", "errors", None), ("c", "embeddings/audio/fake", [6.0, 1.0])]),
        )


def test_mfcc_stats_from_extracted_moments(tmp_path, tokenizer):
    """The default audio encoder, fed by the extraction, gives mean/std of the sample's MFCCs and their deltas."""
    from schemas.records import ManifestRecord
    from tests import media
    from transforms.extract_sample import SampleExtractor
    from transforms.sample_state import EncodeRequest, RunContext

    encoder = MfccStatsEncoder(40)
    record = ManifestRecord(sample_id="m", manifest_row=0, audio=media.wav(str(tmp_path / "a.wav"), seconds=70.0))
    context = RunContext(requests={"audio": EncodeRequest("audio", encoder.needs, encoder.fingerprint())})
    rows = list(SampleExtractor(ExtractConfig(), tokenizer, context).extract(record))
    (item,) = [row for table, row in rows if table == "_encode/audio"]
    mfcc = np.concatenate([row["mfcc"] for table, row in rows if table == "audio"])
    np.testing.assert_allclose(encoder.embed(None, [item["payload"]], device=None, precision="fp32")[0], mfcc_stats(mfcc), rtol=1e-4, atol=1e-3)


class _FailingMfccStats(MfccStatsEncoder):
    def embed(self, model, payloads, *, device, precision):
        raise RuntimeError("no statistics today")


@pytest.mark.parametrize("encoder_class", [MfccStatsEncoder, _FailingMfccStats])
def test_an_inline_encoder_s_row_leaves_the_extraction_before_the_samples_row_that_counts_its_failure(tmp_path, tokenizer, encoder_class):
    """builtin:mfcc-stats is computed by the extraction itself: its embedding row (the MFCCs' statistics) comes out
    with the sample's rows and no ``_encode/audio`` item goes to RunInference; when the encoder fails, the sample
    gets an ``errors`` row of stage ``embed`` and is ``partial``, its MFCC rows kept."""
    from schemas.records import ManifestRecord
    from tests import media
    from transforms.embedding_rows import InlineEmbedder
    from transforms.extract_sample import SampleExtractor
    from transforms.sample_state import EncodeRequest, RunContext

    encoder = encoder_class(40)
    encoder.probe()
    inline = InlineEmbedder(encoder, "embeddings/audio/m")
    record = ManifestRecord(sample_id="m", manifest_row=0, audio=media.wav(str(tmp_path / "a.wav"), seconds=12.0))
    context = RunContext(requests={"audio": EncodeRequest("audio", encoder.needs, encoder.fingerprint(), inline=inline)})
    rows = list(SampleExtractor(ExtractConfig(), tokenizer, context).extract(record))
    tables = [table for table, _ in rows]
    assert "_encode/audio" not in tables and tables[-1] == "samples" and "audio" in tables
    (samples,) = [row for table, row in rows if table == "samples"]
    if encoder_class is MfccStatsEncoder:
        (embedded,) = [row for table, row in rows if table == "embeddings/audio/m"]
        mfcc = np.concatenate([row["mfcc"] for table, row in rows if table == "audio"])
        np.testing.assert_allclose(embedded["vector"], mfcc_stats(mfcc), rtol=1e-4, atol=1e-3)
        assert (embedded["sample_id"], embedded["encoder_fingerprint"], samples["status"]) == ("m", encoder.fingerprint(), "ok")
    else:
        (error,) = [row for table, row in rows if table == "errors"]
        assert (error["stage"], error["error_kind"]) == ("embed", "encoder_failed") and "no statistics today" in error["message"]
        assert (samples["status"], samples["n_errors"]) == ("partial", 1)
        assert "embeddings/audio/m" not in tables


def test_only_a_model_free_encoder_is_computed_inline():
    with pytest.raises(ValueError, match="cannot be computed inline"):
        from transforms.embedding_rows import InlineEmbedder

        InlineEmbedder(_LengthEncoder(), "embeddings/text/fake")


def test_audio_sequences_need_a_windowed_encoder(tmp_path):
    from tests import tiny_models

    with pytest.raises(ConfigError, match="per-window vectors"):
        resolve_encoder("audio", "builtin:mfcc-stats", encode=EncodeConfig(sequences=("audio",)), extract=ExtractConfig())
    folder = tiny_models.wav2vec2_folder(str(tmp_path / "w2v"))
    encoder = resolve_encoder("audio", folder, encode=EncodeConfig(sequences=("audio",)), extract=ExtractConfig())
    assert encoder.keep_sequences and encoder.windowed
    other_window = resolve_encoder("audio", folder, encode=EncodeConfig(), extract=ExtractConfig(audio=AudioConfig(window_s=10.0)))
    assert other_window.window_s == 10.0 and other_window.fingerprint() != resolve_encoder(
        "audio", folder, encode=EncodeConfig(), extract=ExtractConfig()).fingerprint()


def test_a_hugging_face_audio_encoder_over_windows_equals_it_over_the_whole_track(tmp_path):
    """Pooling per-window items (the extraction's) gives what cutting the whole waveform inside ``embed`` gives."""
    from tests import tiny_models

    folder = tiny_models.wav2vec2_folder(str(tmp_path / "w2v"))
    encoder = resolve_encoder("audio", folder, encode=EncodeConfig(), extract=ExtractConfig(audio=AudioConfig(window_s=1.0)))
    waveform = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    handler = _handler(encoder, table="embeddings/audio/w2v", budget=2.0)
    items = [{"sample_id": "a", "manifest_row": 0, "payload": {"waveform": waveform[i * 16000:(i + 1) * 16000]},
              "window": {"index": i, "count": 3, "weight_s": 1.0}} for i in range(3)]
    model = handler.load_model()
    rows = [row for batch in form_batches(items, encoder=encoder, max_batch_size=4, budget=2.0) for row in handler.run_inference(batch, model)]
    (_, pooled), = pool_window_rows(rows, encoder=encoder)
    with torch.inference_mode():
        whole = encoder.embed(model.model, [{"waveform": waveform}], device=torch.device("cpu"), precision="fp32")[0]
    np.testing.assert_allclose(pooled["vector"], whole, atol=1e-5)
