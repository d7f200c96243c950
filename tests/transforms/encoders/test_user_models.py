"""User checkpoints (HF folders, TorchScript files) load through the same path as the CLI's, offline."""
import os

import numpy as np
import pytest
import torch

from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError
from tests import tiny_models
from transforms.encoders.registry import resolve_encoder

CPU = torch.device("cpu")


def _resolve(modality, value, **encode):
    return resolve_encoder(modality, value, encode=EncodeConfig(**encode), extract=ExtractConfig())


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_path):
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": tiny_models.bert_folder(str(root / "bert"), tokenizer_path),
        "vit": tiny_models.vit_folder(str(root / "vit")),
        "wav2vec2": tiny_models.wav2vec2_folder(str(root / "wav2vec2")),
        "image_ts": tiny_models.torchscript_image_file(str(root / "image.pt")),
        "mfcc_ts": tiny_models.torchscript_mfcc_file(str(root / "mfcc.pt")),
    }


@pytest.mark.parametrize(
    "modality, key, dim",
    [("text", "bert", 32), ("video", "vit", 24), ("audio", "wav2vec2", 16), ("video", "image_ts", 12), ("audio", "mfcc_ts", 10)],
)
def test_user_checkpoints_load_and_embed_with_their_dimension(models, modality, key, dim):
    encoder = _resolve(modality, models[key])
    assert encoder.dim == dim
    assert len(encoder.fingerprint()) == 64


def test_fingerprint_follows_the_weights(models, tmp_path):
    first = _resolve("video", models["vit"]).fingerprint()
    retrained = tiny_models.vit_folder(str(tmp_path / "vit"))
    with torch.no_grad():
        from transformers import ViTModel

        model = ViTModel.from_pretrained(retrained)
        model.embeddings.cls_token.add_(1.0)
        model.save_pretrained(retrained)
    assert _resolve("video", retrained).fingerprint() != first
    assert _resolve("video", models["vit"]).fingerprint() == first


def test_wav2vec2_batches_of_unequal_lengths_equal_single_items(models):
    encoder = _resolve("audio", models["wav2vec2"])
    model = encoder.load(CPU)
    rng = np.random.default_rng(0)
    payloads = [{"waveform": rng.standard_normal(n).astype(np.float32)} for n in (16000, 5000, 41000)]
    with torch.inference_mode():
        batched = encoder.embed(model, payloads, device=CPU, precision="fp32")
        single = np.concatenate([encoder.embed(model, [p], device=CPU, precision="fp32") for p in payloads])
    np.testing.assert_allclose(batched, single, atol=1e-4)  # padding is masked, not averaged in


def test_bert_batches_equal_single_items(models):
    encoder = _resolve("text", models["bert"])
    model = encoder.load(CPU)
    texts = [{"text": "one"}, {"text": "two words and then several more words"}]
    with torch.inference_mode():
        batched = encoder.embed(model, texts, device=CPU, precision="fp32")
        single = np.concatenate([encoder.embed(model, [t], device=CPU, precision="fp32") for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize(
    "modality, make, message",
    [
        ("video", lambda tmp: str(tmp / "missing"), "neither a built-in encoder"),
        ("audio", lambda tmp: str(tmp), "not a Hugging Face model folder"),
        ("video", lambda tmp: (tmp / "bad.pt").write_bytes(b"not torchscript") and str(tmp / "bad.pt"), "could not be loaded"),
        ("text", lambda tmp: (tmp / "f.bin").write_bytes(b"x") and str(tmp / "f.bin"), "is a file"),
    ],
)
def test_bad_encoder_values_fail_before_the_job(tmp_path, modality, make, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(modality, make(tmp_path))


def test_remote_code_needs_the_flag(models, tmp_path):
    import json
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(models["vit"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        _resolve("video", str(folder))


def test_no_encoder_unpickles_torch_files_itself(models):
    """Every torch file this project loads itself goes through weights_only=True or TorchScript."""
    import transforms.encoders as package

    sources = [open(os.path.join(os.path.dirname(package.__file__), f), encoding="utf-8").read() for f in os.listdir(os.path.dirname(package.__file__)) if f.endswith(".py")]
    assert not any("torch.load(" in source for source in sources)
