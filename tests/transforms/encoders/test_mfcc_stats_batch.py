"""``builtin:mfcc-stats`` over a whole batch at once gives, bit for bit, what each stream gives alone, through
the encoder, through the model handler and inline, one stream at a time, as the extraction computes it
(batch-vs-single consistency)."""
import numpy as np
import pytest

from transforms.embed import EncoderModelHandler
from transforms.embedding_rows import InlineEmbedder
from transforms.encoders.builtin import MfccStatsEncoder, stats_from_moments, stats_from_moments_batch

N_MFCC = 5


def _moments(rng, count):
    return {"count": np.array([float(count), float(max(count - 1, 0))]), "mean": rng.standard_normal((2, N_MFCC)),
            "m2": rng.random((2, N_MFCC)) * 50}


def _one_stream_by_hand(moments):
    """The statistics of one stream, written out with no batching: mean, std, delta mean, delta std."""
    count, mean, m2 = (np.asarray(moments[key], np.float64) for key in ("count", "mean", "m2"))
    std = np.sqrt(m2 / np.maximum(count, 1.0)[:, None])
    return np.concatenate([mean[0], std[0], mean[1], std[1]]).astype(np.float32)


def test_a_batch_equals_each_stream_alone_bit_for_bit():
    rng = np.random.default_rng(0)
    moments = [_moments(rng, count) for count in (0, 1, 2, 300, 17, 1, 4096)]  # no frames, no differences, ...
    batch = stats_from_moments_batch(moments)
    assert batch.dtype == np.float32 and batch.shape == (len(moments), 4 * N_MFCC)
    np.testing.assert_array_equal(batch, np.stack([_one_stream_by_hand(m) for m in moments]))
    for row, m in zip(batch, moments):
        np.testing.assert_array_equal(stats_from_moments(m), row)
    encoder = MfccStatsEncoder(N_MFCC)
    np.testing.assert_array_equal(encoder.embed(None, [{"mfcc_moments": m} for m in moments], device=None, precision="fp32"), batch)


@pytest.mark.parametrize("bad", [
    {"count": np.ones(2), "mean": np.zeros((2, N_MFCC + 1)), "m2": np.zeros((2, N_MFCC + 1))},  # another n_mfcc
    {"count": np.ones(3), "mean": np.zeros((2, N_MFCC)), "m2": np.zeros((2, N_MFCC))},
    {"count": np.ones(2), "mean": np.zeros((2, N_MFCC)), "m2": np.zeros((1, N_MFCC))},
])
def test_mismatched_moments_are_an_error_naming_them(bad):
    good = _moments(np.random.default_rng(1), 10)
    with pytest.raises(ValueError, match="mfcc_moments"):
        stats_from_moments_batch([good, bad])
    with pytest.raises(ValueError, match="no mfcc_moments"):
        stats_from_moments_batch([])


def test_the_handler_and_the_inline_path_give_the_same_rows_batched_as_one_item_at_a_time():
    rng = np.random.default_rng(2)
    encoder = MfccStatsEncoder(N_MFCC)
    encoder.probe()
    handler = EncoderModelHandler(encoder, table="embeddings/audio/m", device="cpu", precision="fp32",
                                  min_batch_size=1, max_batch_size=32, budget=60)
    items = [{"sample_id": f"s{i}", "manifest_row": i, "payload": {"mfcc_moments": _moments(rng, 5 + i)}} for i in range(9)]
    items[4]["payload"]["mfcc_moments"]["mean"][0, 0] = np.nan  # fails alone; the others keep their rows
    model = handler.load_model()
    batched = handler.run_inference(items, model)
    single = [row for item in items for row in handler.run_inference([item], model)]
    inline = [row for item in items for row in InlineEmbedder(encoder, table="embeddings/audio/m").rows(item)]  # the extraction's
    assert [table for table, _ in batched] == ["embeddings/audio/m"] * 4 + ["errors"] + ["embeddings/audio/m"] * 4
    assert len(batched) == len(single) == len(inline)
    for (table, row), (single_table, single_row), (inline_table, inline_row) in zip(batched, single, inline):
        assert table == single_table == inline_table and row.keys() == single_row.keys() == inline_row.keys()
        for key, value in row.items():
            if key == "vector":
                assert value.dtype == inline_row[key].dtype == np.float32 and value.shape == (4 * N_MFCC,)
                np.testing.assert_array_equal(value, single_row[key])
                np.testing.assert_array_equal(value, inline_row[key])
            else:
                assert value == single_row[key] == inline_row[key]
    (_, first), = handler.run_inference(items[:1], model)
    assert list(first) == ["sample_id", "manifest_row", "modality", "encoder", "encoder_fingerprint", "vector"]
    assert (first["modality"], first["encoder"], first["encoder_fingerprint"]) == ("audio", encoder.name, encoder.fingerprint())
    np.testing.assert_array_equal(first["vector"], _one_stream_by_hand(items[0]["payload"]["mfcc_moments"]))
