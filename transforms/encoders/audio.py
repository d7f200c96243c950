"""Audio encoders over the resampled waveform (or MFCCs), run window by window and pooled to one vector per sample.

Every encoder here is *windowed* (see ``transforms.encoders.base``): an item
is one stored audio window (``--audio-window-s``, 30 s by default), so what a
model sees at once is bounded whatever the track's length; the windows'
vectors are averaged, weighted by their seconds of audio, into the sample's
vector, and are its sequence when ``--sequences audio`` keeps them.

* ``resemblyzer``: the pretrained speaker encoder shipped by the ``resemblyzer``
  package (256-d). Volume is normalised as resemblyzer does; its voice-activity
  trimming is not applied, since cached audio need not be speech. The pooled
  vector is L2-normalised again, like each window's.
* a Hugging Face folder (wav2vec2, HuBERT, WavLM, ...): a window (cut again in
  pieces of at most ``window_s`` seconds if longer) is normalised to zero mean
  and unit variance, padded per batch with an attention mask; hidden states are
  mean-pooled over real frames.
* a TorchScript file over MFCCs ``(1, n_frames, n_mfcc)``, run one window at a
  time (a scripted module takes no mask), output pooled over time to ``(d,)``.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from schemas.errors import ConfigError
from transforms.encoders.base import Encoder, autocast, file_fingerprint, masked_mean, to_device
from transforms.encoders.hf import folder_fingerprint_parts, quiet_transformers, read_config

if TYPE_CHECKING:  # torch is imported where a model is loaded or run
    import torch

SAMPLE_RATE = 16000
DEFAULT_WINDOW_S = 30.0


class ResemblyzerEncoder(Encoder):
    modality = "audio"
    name = "resemblyzer"
    needs = frozenset({"waveform"})
    padded = False
    windowed = True
    sequence_unit = "window"

    def __init__(self, *, window_s: float = DEFAULT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s

    def known_dim(self) -> int:
        return 256  # resemblyzer's speaker embedding

    def load(self, device: "torch.device") -> Any:
        from resemblyzer import VoiceEncoder

        return VoiceEncoder(device=str(device), verbose=False)

    def cost(self, payload: dict[str, Any]) -> float:
        return len(payload["waveform"]) / SAMPLE_RATE

    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        from resemblyzer.audio import normalize_volume

        vectors = []
        for payload in payloads:
            wav = normalize_volume(np.asarray(payload["waveform"], np.float32), -30, increase_only=True)
            vectors.append(model.embed_utterance(wav))
        return np.stack(vectors).astype(np.float32)

    def pool_windows(self, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The weighted mean of the windows' (unit) vectors, L2-normalised as each of them is."""
        mean = super().pool_windows(vectors, weights)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def dummy_payload(self) -> dict[str, Any]:
        return {"waveform": np.random.default_rng(0).standard_normal(SAMPLE_RATE * 2).astype(np.float32) * 0.1}

    def fingerprint_parts(self) -> Iterable[str]:
        spec = importlib.util.find_spec("resemblyzer")  # located, not imported (importing it imports torch)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("--audio-encoder resemblyzer: the resemblyzer package is not installed")
        weights = os.path.join(list(spec.submodule_search_locations)[0], "pretrained.pt")
        return [file_fingerprint(weights), "normalize_volume(-30 dBFS, increase_only) no-vad"]


class HFAudioEncoder(Encoder):
    modality = "audio"
    needs = frozenset({"waveform"})
    windowed = True
    sequence_unit = "window"

    def __init__(self, folder: str, *, window_s: float = DEFAULT_WINDOW_S, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.window_s = window_s
        self.folder = folder
        self.name = os.path.basename(os.path.normpath(folder))
        self.trust_remote_code = trust_remote_code
        config = read_config(folder, flag="--audio-encoder", trust_remote_code=trust_remote_code)
        if config.get("model_type") == "whisper":
            raise ConfigError("--audio-encoder: Whisper folders are not supported yet (they need log-mel input); use a wav2vec2/HuBERT folder")
        self._width = config.get("hidden_size") if isinstance(config.get("hidden_size"), int) else None

    def known_dim(self) -> Optional[int]:
        """The last hidden state's width from ``config.json`` (what mean pooling keeps)."""
        return self._width

    def load(self, device: "torch.device") -> Any:
        from transformers import AutoModel

        quiet_transformers()
        return AutoModel.from_pretrained(self.folder, trust_remote_code=self.trust_remote_code).eval().to(device)

    def cost(self, payload: dict[str, Any]) -> float:
        """Seconds of audio (what a padded batch holds per item)."""
        return len(payload["waveform"]) / SAMPLE_RATE

    def _windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        """``waveform`` in pieces of at most ``window_s`` seconds, each normalised; pieces under 400 samples
        (the models' shortest input) are left out unless there is nothing else."""
        step = int(self.window_s * SAMPLE_RATE)
        windows = [waveform[start : start + step] for start in range(0, max(len(waveform), 1), step)]
        return [(w - w.mean()) / max(float(w.std()), 1e-7) for w in windows if len(w) >= 400] or [waveform]

    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        import torch

        windows, owner = [], []
        for index, payload in enumerate(payloads):
            for window in self._windows(np.asarray(payload["waveform"], np.float32)):
                windows.append(window)
                owner.append(index)
        longest = max(len(w) for w in windows)
        values = np.zeros((len(windows), longest), np.float32)
        mask = np.zeros((len(windows), longest), np.int64)
        for row, window in enumerate(windows):
            values[row, : len(window)] = window
            mask[row, : len(window)] = 1
        input_values, attention_mask = to_device(values, device), to_device(mask, device)
        with autocast(device, precision):
            hidden = model(input_values=input_values, attention_mask=attention_mask).last_hidden_state.float()
        frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
        frame_mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]).long()
        pooled = masked_mean(hidden, frame_mask).detach().cpu().numpy()
        lengths = np.array([len(w) for w in windows], np.float64)
        owner_array = np.array(owner)
        return np.stack(
            [np.average(pooled[owner_array == i], axis=0, weights=lengths[owner_array == i]) for i in range(len(payloads))]
        ).astype(np.float32)

    def dummy_payload(self) -> dict[str, Any]:
        return {"waveform": np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1}

    def fingerprint_parts(self) -> Iterable[str]:
        return [*folder_fingerprint_parts(self.folder, ("preprocessor_config.json",)), "zero-mean-unit-var mean-pool per window"]


class TorchScriptAudioEncoder(Encoder):
    modality = "audio"
    needs = frozenset({"mfcc"})
    padded = False
    windowed = True
    sequence_unit = "window"

    def __init__(self, path: str, *, n_mfcc: int, window_s: float = DEFAULT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self.path = path
        self.name = os.path.basename(path)
        self.n_mfcc = n_mfcc

    def load(self, device: "torch.device") -> Any:
        import torch

        return torch.jit.load(self.path, map_location=device).eval()

    def cost(self, payload: dict[str, Any]) -> float:
        return len(payload["mfcc"]) / 100.0

    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        vectors = []
        for payload in payloads:
            features = to_device(np.asarray(payload["mfcc"], np.float32)[None], device)
            with autocast(device, precision):
                output = model(features).float()
            if output.ndim == 3:
                output = output.mean(dim=1)
            vectors.append(output.reshape(1, -1)[0].detach().cpu().numpy())
        return np.stack(vectors).astype(np.float32)

    def dummy_payload(self) -> dict[str, Any]:
        return {"mfcc": np.zeros((100, self.n_mfcc), np.float32)}  # one second at a 10 ms hop

    def fingerprint_parts(self) -> Iterable[str]:
        return [file_fingerprint(self.path), f"mfcc input n_mfcc={self.n_mfcc}"]
