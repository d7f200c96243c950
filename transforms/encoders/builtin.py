"""Deterministic built-in descriptors: fast CPU baselines that run through the same handler framework.

* ``builtin:color-hog`` (video, 108-d): per frame, a 72-bin HSV colour
  histogram (8 hue x 3 saturation x 3 value, L1-normalised) and a 36-d
  gradient-orientation histogram (Sobel gradients of the grey image at
  64x64, 9 unsigned orientation bins in each cell of a 2x2 grid, weighted by
  magnitude, each cell L2-normalised); averaged over the sample's frames.
* ``builtin:mfcc-stats`` (audio, 4 x n_mfcc): mean and standard deviation of
  every MFCC coefficient over time, then of its first difference (deltas),
  over the whole stream. Its input is the stream's running moments
  (``mfcc_moments``), gathered window by window during the extraction, so it
  holds ``O(n_mfcc)`` numbers whatever the audio's length. It is ``inline``:
  the extraction computes it as it finishes the stream, without ``RunInference``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import cv2
import numpy as np

from transforms.encoders.base import Encoder, per_sample_means
from transforms.encoders.image import FrameEncoder

if TYPE_CHECKING:  # nothing here runs torch; the names are only in the Encoder signatures
    import torch

_HSV_BINS = (8, 3, 3)
_ORIENTATION_BINS = 9
_GRID = 2


def color_hog(bgr: np.ndarray) -> np.ndarray:
    """The 108-d descriptor of one BGR ``uint8`` frame."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, list(_HSV_BINS), [0, 180, 0, 256, 0, 256]).reshape(-1)
    histogram /= max(float(histogram.sum()), 1e-9)
    grey = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    bins = ((angle % 180.0) / (180.0 / _ORIENTATION_BINS)).astype(np.int32) % _ORIENTATION_BINS
    cells = []
    step = 64 // _GRID
    for row in range(_GRID):
        for col in range(_GRID):
            window = (slice(row * step, (row + 1) * step), slice(col * step, (col + 1) * step))
            cell = np.bincount(bins[window].ravel(), weights=magnitude[window].ravel(), minlength=_ORIENTATION_BINS)
            cells.append(cell / max(float(np.linalg.norm(cell)), 1e-9))
    return np.concatenate([histogram, *cells]).astype(np.float32)


class ColorHogEncoder(FrameEncoder):
    name = "builtin:color-hog"

    def known_dim(self) -> int:
        return 72 + _ORIENTATION_BINS * _GRID * _GRID

    def load(self, device: "torch.device") -> None:
        return None

    def embed_with_sequences(
        self, model: None, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        per_frame = []
        for payload in payloads:
            frames = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in payload["frames"]]
            if not frames or any(f is None for f in frames):
                raise ValueError("a sample has no decodable frames")
            per_frame.extend(color_hog(f) for f in frames)
        return per_sample_means(np.stack(per_frame), [len(p["frames"]) for p in payloads])

    def fingerprint_parts(self) -> Iterable[str]:
        return [f"v1 hsv={_HSV_BINS} orientations={_ORIENTATION_BINS} grid={_GRID}"]


def mfcc_stats(mfcc: np.ndarray) -> np.ndarray:
    """``[mean, std, mean(delta), std(delta)]`` over time of an ``(n_frames, n_mfcc)`` array; ``(4 * n_mfcc,)``."""
    deltas = np.diff(mfcc, axis=0) if len(mfcc) > 1 else np.zeros_like(mfcc)
    return np.concatenate([mfcc.mean(0), mfcc.std(0), deltas.mean(0), deltas.std(0)]).astype(np.float32)


def stats_from_moments(moments: dict[str, np.ndarray]) -> np.ndarray:
    """``mfcc_stats`` of a stream from its ``mfcc_moments`` payload (``count`` ``(2,)``, ``mean`` and ``m2``
    ``(2, n_mfcc)``: frames, then differences); ``(4 * n_mfcc,)``. No differences (one frame): zeros."""
    return stats_from_moments_batch([moments])[0]


def stats_from_moments_batch(moments: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """``stats_from_moments`` of many streams at once: float32 ``(len(moments), 4 * n_mfcc)``.

    Each of ``moments`` holds ``count`` ``(2,)`` and ``mean``, ``m2`` ``(2, n_mfcc)`` (frames, then differences;
    any float dtype). Their arrays are stacked (float64) and the statistics computed once over the stack, so a
    batch costs a few numpy calls rather than a few per stream; each row is bit-for-bit what its stream alone gives.

    Raises:
        ValueError: no payloads, a payload's arrays do not have these shapes, or two differ in ``n_mfcc``.
    """
    if not moments:
        raise ValueError("no mfcc_moments to summarise")
    try:
        count = np.array([m["count"] for m in moments], np.float64)  # (n, 2)
        mean = np.array([m["mean"] for m in moments], np.float64)  # (n, 2, n_mfcc)
        m2 = np.array([m["m2"] for m in moments], np.float64)  # (n, 2, n_mfcc)
    except ValueError as error:  # ragged: shapes differ between payloads
        raise ValueError(f"mfcc_moments of different shapes in one batch: {error}") from error
    if count.ndim != 2 or count.shape[1] != 2 or mean.ndim != 3 or mean.shape[:2] != (len(moments), 2) or m2.shape != mean.shape:
        raise ValueError(f"mfcc_moments must hold count (2,), mean and m2 (2, n_mfcc); got count {count.shape[1:]}, "
                         f"mean {mean.shape[1:]}, m2 {m2.shape[1:]}")
    std = np.sqrt(m2 / np.maximum(count, 1.0)[:, :, None])
    return np.concatenate([mean[:, 0], std[:, 0], mean[:, 1], std[:, 1]], axis=1).astype(np.float32)


class MfccStatsEncoder(Encoder):
    modality = "audio"
    name = "builtin:mfcc-stats"
    needs = frozenset({"mfcc_moments"})
    padded = False
    inline = True

    def __init__(self, n_mfcc: int) -> None:
        super().__init__()
        self.n_mfcc = n_mfcc

    def known_dim(self) -> int:
        return 4 * self.n_mfcc

    def load(self, device: "torch.device") -> None:
        return None

    def cost(self, payload: dict[str, Any]) -> float:
        return 1.0  # a few numbers per sample, whatever its length

    def embed(self, model: None, payloads: list[dict[str, Any]], *, device: "torch.device", precision: str) -> np.ndarray:
        """``stats_from_moments_batch`` of the payloads' ``mfcc_moments``: float32 ``(len(payloads), 4 * n_mfcc)``."""
        return stats_from_moments_batch([p["mfcc_moments"] for p in payloads])

    def dummy_payload(self) -> dict[str, Any]:
        zeros = np.zeros((2, self.n_mfcc), np.float64)
        return {"mfcc_moments": {"count": np.array([3.0, 2.0]), "mean": zeros, "m2": zeros}}

    def fingerprint_parts(self) -> Iterable[str]:
        return [f"v1 n_mfcc={self.n_mfcc} mean,std,delta-mean,delta-std"]
