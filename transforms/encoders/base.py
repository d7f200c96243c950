"""The ``Encoder`` interface: loading, batched preprocessing with per-batch padding and masks, pooling.

An encoder turns a list of *payloads* (one per sample) into a ``(n, dim)``
float32 array. Payload fields, filled by the extraction step:

* ``text``: the text the extraction's kept tokens cover (str; never more than
  ``--max-text-bytes``);
* ``frames``: the sampled frames of a video, JPEG bytes, in time order;
* ``mfcc``: float32 ``(n_frames, n_mfcc)`` of one audio window;
* ``waveform``: mono float32 samples at ``sample_rate`` Hz of one audio window;
* ``mfcc_moments``: running moments of a whole stream's MFCC frames and of
  their first differences (``transforms.mfcc.MfccMoments.payload``).

Audio encoders that need ``mfcc`` or ``waveform`` are *windowed*: the
extraction hands them one item per stored audio window (``--audio-window-s``),
so one item never holds more than a window and a half of audio however long
the track; the per-window vectors are pooled into the sample's vector
(``pool_windows``) after inference, and kept as its sequence when sequences
are kept.

Variable-length inputs are padded to the longest item of their batch only,
with a mask; ``cost`` tells the batcher how big an item is (tokens, frames
or seconds) so that a batch stays under a size budget.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import numpy as np

from schemas.errors import ConfigError
from transforms.media_io import sha256_of

if TYPE_CHECKING:  # torch is imported where a model is built or run, never at import time (a run without encoders never imports it)
    import torch

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error, never a silent fallback.

    ``cpu`` is returned without importing torch; ``auto`` and ``cuda`` import it to ask for a GPU.
    """
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return device


def autocast(device: "torch.device", precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA for ``fp16``/``bf16``; a no-op for ``fp32``."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def to_device(array: "np.ndarray | torch.Tensor", device: "torch.device") -> "torch.Tensor":
    """A host array (or CPU tensor, kept with its strides, e.g. channels-last) as a tensor on ``device``: no copy on
    CPU (a non-contiguous array is made contiguous once); pinned memory and a non-blocking copy on CUDA."""
    import torch

    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def masked_mean(values: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean of ``values`` ``(n, t, d)`` over the positions where ``mask`` ``(n, t)`` is 1; ``(n, d)``."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def per_sample_means(per_step: np.ndarray, counts: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split ``(sum(counts), dim)`` step vectors by sample: their means ``(len(counts), dim)`` and the pieces."""
    bounds = np.cumsum([0, *counts])
    pieces = [per_step[a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.stack([piece.mean(axis=0) for piece in pieces]).astype(np.float32), pieces


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Encoder(abc.ABC):
    """One embedding model for one modality.

    Subclasses set ``modality``, ``name`` and ``needs`` and implement
    ``load``, ``cost``, ``embed``, ``dummy_payload`` and ``fingerprint_parts``.
    Instances hold only configuration (they are pickled to workers); the
    loaded model is what ``load`` returns.
    """

    modality: str = ""
    name: str = ""
    needs: frozenset[str] = frozenset()
    padded: bool = True  # whether a batch costs n * max(cost) (padding) rather than sum(cost)
    sequence_unit: Optional[str] = None  # "frame" or "token" when ``embed_with_sequences`` is implemented, "window" when windowed
    windowed: bool = False  # one item per audio window; the sample's vector pools them (``pool_windows``)
    inline: bool = False  # no model, microseconds an item: computed by the extraction itself (``transforms.embedding_rows``)
    source: str = ""  # what it was resolved from (a built-in name or a path; ``registry.resolve_encoder``): recorded per run

    def __init__(self) -> None:
        self.dim: Optional[int] = None
        self.keep_sequences = False  # also store the per-frame/per-token/per-window vectors (a different embedding set)
        self.window_s: Optional[float] = None  # windowed encoders: the windows' length in seconds (in the fingerprint)
        self._fingerprint: Optional[str] = None

    @abc.abstractmethod
    def load(self, device: "torch.device") -> Any:
        """Load the model onto ``device`` (once per worker process)."""

    @abc.abstractmethod
    def cost(self, payload: dict[str, Any]) -> float:
        """Size of one item for batching (tokens, frames or seconds)."""

    @abc.abstractmethod
    def embed(self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        """Embeddings of a batch: float32 ``(len(payloads), dim)``."""

    def embed_with_sequences(
        self, model: Any, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The pooled ``(len(payloads), dim)`` embeddings and, per payload, the vectors they pool: ``(steps, dim)``."""
        raise NotImplementedError(f"{self.name} has no per-{self.sequence_unit or 'step'} vectors")

    def pool_windows(self, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A windowed encoder's sample vector ``(dim,)`` from its windows' vectors ``(n_windows, dim)``, weighted by
        ``weights`` ``(n_windows,)`` (seconds of audio in each window): their weighted mean."""
        return np.average(np.asarray(vectors, np.float64), axis=0, weights=weights).astype(np.float32)

    @abc.abstractmethod
    def dummy_payload(self) -> dict[str, Any]:
        """A small valid payload, used to check the model loads and to learn ``dim`` before a job starts."""

    def known_dim(self) -> Optional[int]:
        """The output width when the encoder knows it from its files (config, a fixed architecture) without building
        the model; ``None`` when only running the model tells (``probe`` then loads it)."""
        return None

    @abc.abstractmethod
    def fingerprint_parts(self) -> Iterable[str]:
        """Strings that identify the weights, config and preprocessing (file hashes, parameters)."""

    def fingerprint(self) -> str:
        """SHA-256 over ``fingerprint_parts`` (computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            windows = [f"windows of {self.window_s}s pooled"] if self.windowed else []
            for part in [type(self).__name__, self.name, *self.fingerprint_parts(), *windows, *(["sequences"] if self.keep_sequences else [])]:
                digest.update(part.encode("utf-8") + b"\0")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def probe(self, *, run_model: bool = False) -> int:
        """Check the encoder on the launcher and set ``dim``; returns it.

        With ``run_model=False`` (the default) an encoder that knows its width from files (``known_dim``) is not
        built here: its files are fingerprinted (read and hashed, so a missing file fails now) and the model is
        loaded once per worker by the model handler. Otherwise (or with ``run_model=True``) it is loaded on CPU and
        ``dummy_payload`` is embedded, which also proves it runs.

        Raises:
            ConfigError: the files are missing, or the model cannot be loaded or run, saying which encoder and why.
        """
        dim = None if run_model else self.known_dim()
        if dim is not None:
            try:
                self.fingerprint()
            except OSError as error:
                raise ConfigError(f"{self.modality} encoder {self.name!r}: cannot read its files: {error}") from error
            self.dim = int(dim)
            return self.dim
        import torch

        try:
            model = self.load(torch.device("cpu"))
            with torch.inference_mode():
                output = self.embed(model, [self.dummy_payload()], device=torch.device("cpu"), precision="fp32")
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(f"{self.modality} encoder {self.name!r} could not be loaded and run: {type(error).__name__}: {error}") from error
        if output.ndim != 2 or output.shape[0] != 1:
            raise ConfigError(f"{self.modality} encoder {self.name!r} returned shape {tuple(output.shape)}, expected (1, dim)")
        self.dim = int(output.shape[1])
        logger.info("%s encoder %s built on the launcher to learn its width (%d)", self.modality, self.name, self.dim)
        return self.dim


def file_fingerprint(path: str) -> str:
    """``name:sha256`` of a file, for ``fingerprint_parts``."""
    return f"{path.rsplit('/', 1)[-1]}:{sha256_of(path)}"
