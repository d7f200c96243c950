"""Vectors through the model handler (folded, channels-last, batched, sorted) equal a bare ``model(batch)`` over
the package's own model, loaded the plain way, within float tolerance; and the launcher's widths are the real ones."""
import contextlib
import io
import os

import cv2
import numpy as np
import pytest
import torch

from schemas.config import EncodeConfig, ExtractConfig
from transforms.embed import EncoderModelHandler
from transforms.encoders.registry import resolve_encoder


def _handler(encoder, table):
    return EncoderModelHandler(encoder, table=table, device="cpu", precision="fp32", min_batch_size=1, max_batch_size=8, budget=10_000)


def _through_handler(handler, payloads):
    items = [{"sample_id": f"s{i}", "manifest_row": i, "payload": p} for i, p in enumerate(payloads)]
    rows = handler.run_inference(items, handler.load_model())
    assert all(table == handler.table for table, _ in rows)
    return np.stack([row["vector"] for _, row in rows])


def test_image_handler_equals_the_bare_package_model():
    from efficientnet_lite_pytorch import EfficientNet

    encoder = resolve_encoder("video", "efficientnet-lite0", encode=EncodeConfig(), extract=ExtractConfig())
    rng = np.random.default_rng(0)
    images = [cv2.GaussianBlur(rng.integers(0, 255, (120 + 20 * i, 160, 3), dtype=np.uint8), (0, 0), 2) for i in range(5)]
    jpegs = [cv2.imencode(".jpg", image)[1].tobytes() for image in images]
    payloads = [{"frames": jpegs[:2]}, {"frames": jpegs[2:3]}, {"frames": jpegs[3:]}]
    vectors = _through_handler(_handler(encoder, "embeddings/video/e"), payloads)

    with contextlib.redirect_stdout(io.StringIO()):
        bare = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=encoder.weights_path()).eval()
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    crops = []
    for image in (cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in jpegs):  # shorter side to 224 (area), centre crop, RGB, ImageNet mean/std: written out by hand
        height, width = image.shape[:2]
        scale = 224 / min(height, width)
        resized = cv2.resize(image, (max(224, round(width * scale)), max(224, round(height * scale))), interpolation=cv2.INTER_AREA)
        top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        crops.append((cv2.cvtColor(resized[top:top + 224, left:left + 224], cv2.COLOR_BGR2RGB) / 255.0 - mean) / std)
    with torch.inference_mode():
        per_frame = bare.extract_features(torch.from_numpy(np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2).copy()))
    per_frame = per_frame.mean(dim=(2, 3)).numpy()
    expected = np.stack([per_frame[:2].mean(0), per_frame[2], per_frame[3:].mean(0)])
    assert vectors.shape == (3, encoder.dim) == (3, 1280)
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-4)


def test_text_handler_equals_the_bare_transformers_model():
    from tokenizers import Tokenizer
    from transformers import AutoModel

    encoder = resolve_encoder("text", "minilm", encode=EncodeConfig(), extract=ExtractConfig())
    texts = ["a cat on a mat", "stock prices fell sharply today after the announcement", "ok"]
    vectors = _through_handler(_handler(encoder, "embeddings/text/m"), [{"text": t} for t in texts])

    tokenizer = Tokenizer.from_file(os.path.join(encoder.folder, "tokenizer.json"))
    tokenizer.no_padding()  # the file asks for padding to 128; one text at a time needs none
    model = AutoModel.from_pretrained(encoder.folder).eval()
    expected = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding at all
            ids = torch.tensor([tokenizer.encode(text).ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            expected.append(torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy())
    assert vectors.shape == (3, encoder.dim) == (3, 384)
    np.testing.assert_allclose(vectors, np.stack(expected), atol=1e-5)


@pytest.mark.parametrize("modality, value", [("text", "minilm"), ("video", "efficientnet-lite0"), ("audio", "resemblyzer")])
def test_widths_known_from_files_are_what_the_models_output(modality, value):
    encoder = resolve_encoder(modality, value, encode=EncodeConfig(), extract=ExtractConfig())
    known = encoder.dim
    assert encoder.probe(run_model=True) == known
