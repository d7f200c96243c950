"""Word-, segment- and fixed-step alignment of timed features: arrays in, arrays out (no cache, no Beam).

An *alignment* is a list of intervals ``[start_s, end_s)`` on one time axis (seconds from the start of
the stream the words were transcribed from). Each modality is a set of timed points: MFCC frames at
their frame centres, sampled video frames at their presentation times, words (their token vectors) at
their midpoints. A step's value for a modality is the mean of exactly the points whose time lies inside
the step's interval; a step no point falls in is *masked* (its mask is false and its values are zeros,
which readers must ignore), never filled with a value passed off as data.

Intervals are half-open, so a point on the boundary of two adjacent words counts once (for the later
word); an interval of zero length (``end_s == start_s``, which Whisper sometimes emits) holds the points
exactly at its start.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from schemas.errors import ConfigError

ON_WORDS = "words"
ON_SEGMENTS = "segments"
FIXED_PREFIX = "fixed:"
ON_CHOICES = (ON_WORDS, ON_SEGMENTS, f"{FIXED_PREFIX}SECONDS")


@dataclass(frozen=True)
class AlignOn:
    """What the steps are.

    Attributes:
        kind: ``words``, ``segments`` or ``fixed``.
        step_s: the step length in seconds (``fixed`` only, else ``None``).
    """

    kind: str
    step_s: Optional[float] = None

    @property
    def label(self) -> str:
        """The value of ``--on`` that names this alignment (``words``, ``segments``, ``fixed:0.5``)."""
        return f"{FIXED_PREFIX}{self.step_s:g}" if self.kind == "fixed" else self.kind

    @property
    def slug(self) -> str:
        """The alignment as a table-name part (``words``, ``segments``, ``fixed-0.5s``)."""
        return f"fixed-{self.step_s:g}s" if self.kind == "fixed" else self.kind


def parse_on(value: str) -> AlignOn:
    """Parse ``--on``: ``words``, ``segments`` or ``fixed:SECONDS`` (a positive step, e.g. ``fixed:0.5``).

    Raises:
        ConfigError: any other value.
    """
    text = value.strip().lower()
    if text in (ON_WORDS, ON_SEGMENTS):
        return AlignOn(text)
    if text.startswith(FIXED_PREFIX):
        try:
            step = float(text[len(FIXED_PREFIX):])
        except ValueError:
            step = float("nan")
        if math.isfinite(step) and step > 0:
            return AlignOn("fixed", step)
        raise ConfigError(f"--on {value}: the fixed step must be a positive number of seconds, e.g. fixed:0.5")
    raise ConfigError(f"--on {value}: choose words, segments or fixed:SECONDS (e.g. fixed:0.5)")


def fixed_intervals(duration_s: float, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps ``[k*step_s, (k+1)*step_s)`` covering ``[0, duration_s]``: starts and ends, each ``(steps,)`` float64 seconds.

    The last step may end after ``duration_s``; a zero or negative duration gives no steps.
    """
    if step_s <= 0:
        raise ConfigError(f"fixed step {step_s} s: must be positive")
    n = int(math.ceil(duration_s / step_s - 1e-9)) if duration_s > 0 else 0
    starts = np.arange(n, dtype=np.float64) * step_s
    return starts, starts + step_s


def pool_in_intervals(times_s: np.ndarray, values: np.ndarray, starts_s: np.ndarray,
                      ends_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of the points inside each interval.

    Args:
        times_s: ``(n_points,)`` point times in seconds (any order).
        values: ``(n_points, dim)`` the points' vectors.
        starts_s, ends_s: ``(steps,)`` interval bounds in seconds; point ``t`` is inside when
            ``start <= t < end`` (or ``t == start`` for an interval with ``end <= start``).

    Returns:
        ``means`` ``(steps, dim)`` float32 (zeros where masked), ``mask`` ``(steps,)`` bool (true where at
        least one point is inside), ``counts`` ``(steps,)`` int64 (points inside).
    """
    times_s = np.asarray(times_s, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != times_s.shape[0]:
        raise ConfigError(f"pool_in_intervals: values of shape {values.shape} for {times_s.shape[0]} times; want (n_points, dim)")
    starts_s = np.asarray(starts_s, dtype=np.float64).reshape(-1)
    ends_s = np.asarray(ends_s, dtype=np.float64).reshape(-1)
    order = np.argsort(times_s, kind="stable")
    times_s, values = times_s[order], values[order]
    lo = np.searchsorted(times_s, starts_s, side="left")
    hi = np.where(ends_s > starts_s, np.searchsorted(times_s, ends_s, side="left"), np.searchsorted(times_s, starts_s, side="right"))
    counts = (hi - lo).astype(np.int64)
    cumulative = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    sums = cumulative[hi] - cumulative[lo]
    mask = counts > 0
    means = np.zeros((starts_s.shape[0], values.shape[1]), dtype=np.float32)
    means[mask] = (sums[mask] / counts[mask, None]).astype(np.float32)
    return means, mask, counts


_WORD_CHARS = re.compile(r"\w", re.UNICODE)


def locate_words(text: str, words: Sequence[str]) -> list[Optional[tuple[int, int]]]:
    """The character span ``(begin, end)`` of each word in ``text``, searched in order (case-insensitive), or ``None``.

    A word is searched from where the previous found word ended; a word not found (or with no letter or
    digit) is ``None`` and does not move the search on. Leading/trailing punctuation of a word that is not
    in the text is dropped before a second search.
    """
    haystack = text.lower()
    cursor = 0
    spans: list[Optional[tuple[int, int]]] = []
    for word in words:
        needle = word.strip().lower()
        if not _WORD_CHARS.search(needle):
            spans.append(None)
            continue
        at = haystack.find(needle, cursor)
        if at < 0:
            needle = needle.strip(".,;:!?\"'()[]{}-")
            at = haystack.find(needle, cursor) if needle else -1
        if at < 0:
            spans.append(None)
            continue
        spans.append((at, at + len(needle)))
        cursor = at + len(needle)
    return spans


def word_token_vectors(spans: Sequence[Optional[tuple[int, int]]], token_offsets: Sequence[tuple[int, int]],
                       special: Sequence[int], sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each word's text vector: the mean of the per-token vectors of the tokens whose characters overlap the word.

    Args:
        spans: ``(n_words,)`` character spans from ``locate_words`` (``None``: word not in the text).
        token_offsets: ``(n_tokens,)`` ``(begin, end)`` character offsets of the tokenizer's tokens of the text.
        special: ``(n_tokens,)`` 1 for special tokens (``[CLS]``, ``[SEP]``), which never belong to a word.
        sequence: ``(steps, dim)`` the text encoder's per-token vectors of the same tokens. When the text has more
            tokens than ``steps``, the encoder cut it and its last step is its end token: only tokens before
            ``steps - 1`` have a vector.

    Returns:
        ``vectors`` ``(n_words, dim)`` float32 (zeros where masked) and ``mask`` ``(n_words,)`` bool.
    """
    sequence = np.asarray(sequence, dtype=np.float32)
    n_steps = sequence.shape[0]
    vectors = np.zeros((len(spans), sequence.shape[1] if sequence.ndim == 2 else 0), dtype=np.float32)
    mask = np.zeros(len(spans), dtype=bool)
    limit = n_steps if len(token_offsets) <= n_steps else n_steps - 1
    usable = [(i, b, e) for i, ((b, e), s) in enumerate(zip(token_offsets, special)) if not s and e > b and i < limit]
    for w, span in enumerate(spans):
        if span is None:
            continue
        tokens = [i for i, b, e in usable if b < span[1] and e > span[0]]
        if tokens:
            vectors[w] = sequence[tokens].mean(axis=0)
            mask[w] = True
    return vectors, mask


def align_sample(on: AlignOn, starts_s: np.ndarray, ends_s: np.ndarray, *, mfcc: Optional[tuple[np.ndarray, np.ndarray]],
                 video: Optional[tuple[np.ndarray, np.ndarray]], word_times: Optional[tuple[np.ndarray, np.ndarray]],
                 word_vectors: Optional[tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[Optional[np.ndarray], np.ndarray]]:
    """One sample's steps: ``{"audio"|"video"|"text": (values (steps, dim) float32 or None, mask (steps,) bool)}``.

    Args:
        on: what the steps are; with ``words`` the steps are the words themselves (step ``i`` takes word ``i``'s
            text vector), otherwise each word counts at its midpoint.
        starts_s, ends_s: ``(steps,)`` step bounds, seconds.
        mfcc, video: point times ``(n,)`` seconds and vectors ``(n, dim)`` (``None``: the sample has none).
        word_times: the words' starts and ends, each ``(n_words,)`` seconds.
        word_vectors: the words' text vectors ``(n_words, dim)`` and their mask ``(n_words,)`` (``word_token_vectors``).
    """
    no_data = np.zeros(len(starts_s), dtype=bool)
    aligned: dict[str, tuple[Optional[np.ndarray], np.ndarray]] = {}
    for modality, points in (("audio", mfcc), ("video", video)):
        aligned[modality] = pool_in_intervals(*points, starts_s, ends_s)[:2] if points else (None, no_data)
    aligned["text"] = (None, no_data)
    if word_vectors is not None and word_times is not None:
        vectors, found = word_vectors
        if on.kind == ON_WORDS:
            aligned["text"] = (vectors, found)
        elif found.any():
            middle = (word_times[0][found] + word_times[1][found]) / 2
            aligned["text"] = pool_in_intervals(middle, vectors[found], starts_s, ends_s)[:2]
    return aligned
