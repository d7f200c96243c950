"""The default encoders are the real pretrained models, and behave like them."""
import cv2
import numpy as np
import pytest
import torch

from schemas.config import EncodeConfig, ExtractConfig
from transforms.encoders.registry import resolve_encoder

CPU = torch.device("cpu")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm():
    encoder = resolve_encoder("text", "minilm", encode=EncodeConfig(), extract=ExtractConfig())
    return encoder, encoder.load(CPU)


@pytest.fixture(scope="module")
def efficientnet():
    encoder = resolve_encoder("video", "efficientnet-lite0", encode=EncodeConfig(), extract=ExtractConfig())
    return encoder, encoder.load(CPU)


def _embed(encoder_and_model, payloads):
    encoder, model = encoder_and_model
    with torch.inference_mode():
        return encoder.embed(model, payloads, device=CPU, precision="fp32")


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences(minilm):
    sentences = [
        "A man is playing a guitar on the stage.",
        "On stage, a guy plays the guitar.",
        "The central bank raised interest rates again.",
        "Interest rates were increased by the central bank once more.",
        "My cat sleeps all afternoon in the sun.",
    ]
    vectors = _embed(minilm, [{"text": s} for s in sentences])
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # sentence-transformers normalises
    paraphrases = [_cosine(vectors[0], vectors[1]), _cosine(vectors[2], vectors[3])]
    unrelated = [_cosine(vectors[0], vectors[2]), _cosine(vectors[1], vectors[4]), _cosine(vectors[3], vectors[4])]
    assert min(paraphrases) > max(unrelated) + 0.4, (paraphrases, unrelated)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buffer.tobytes()


def test_efficientnet_is_the_real_imagenet_model(efficientnet):
    from skimage import data

    encoder, model = efficientnet
    for image, classes in [(data.coffee(), {967, 968, 504}), (data.chelsea(), {281, 282, 283, 284, 285, 287})]:
        pixels = torch.from_numpy(encoder.pixels([_jpeg(image)]))
        with torch.inference_mode():
            predicted = int(model(pixels).argmax())
        assert predicted in classes, predicted  # espresso/cup/coffee mug; tabby/tiger/Persian/Siamese/Egyptian cat/lynx


def test_efficientnet_embeddings_of_two_crops_are_closer_than_different_images(efficientnet):
    from skimage import data

    cat, coffee = data.chelsea(), data.coffee()
    height, width = cat.shape[:2]
    left, right = cat[:, : int(width * 0.8)], cat[:, int(width * 0.2) :]
    vectors = _embed(efficientnet, [{"frames": [_jpeg(left)]}, {"frames": [_jpeg(right)]}, {"frames": [_jpeg(coffee)]}])
    assert vectors.shape == (3, 1280)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2


def test_text_batches_equal_single_items(minilm):
    texts = ["short", "a somewhat longer sentence with more tokens in it", "medium length text here"]
    batched = _embed(minilm, [{"text": t} for t in texts])
    single = np.concatenate([_embed(minilm, [{"text": t}]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_image_batches_equal_single_items(efficientnet):
    rng = np.random.default_rng(0)
    payloads = [{"frames": [_jpeg(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)) for _ in range(n)]} for n in (1, 3, 2)]
    batched = _embed(efficientnet, payloads)
    single = np.concatenate([_embed(efficientnet, [p]) for p in payloads])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_resemblyzer_is_the_real_speaker_encoder():
    encoder = resolve_encoder("audio", "resemblyzer", encode=EncodeConfig(), extract=ExtractConfig())
    model = encoder.load(CPU)
    rng = np.random.default_rng(0)
    low = (0.3 * np.sin(2 * np.pi * 140 * np.arange(32000) / 16000) + 0.01 * rng.standard_normal(32000)).astype(np.float32)
    high = (0.3 * np.sin(2 * np.pi * 700 * np.arange(32000) / 16000) + 0.01 * rng.standard_normal(32000)).astype(np.float32)
    vectors = encoder.embed(model, [{"waveform": low}, {"waveform": low[:24000]}, {"waveform": high}], device=CPU, precision="fp32")
    assert vectors.shape == (3, 256)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])
