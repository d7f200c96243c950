"""Scoring a transcript against a reference: word error rate and word-time agreement.

Used by the speech tests and ``bench/asr.py``. Words are compared normalised
(lower case, only letters, digits and apostrophes); the alignment is the
Levenshtein one over words, so WER = (substitutions + deletions + insertions)
/ reference words, as jiwer computes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

_NOT_WORD = re.compile(r"[^a-z0-9']+")


def normalise(words: Sequence[str]) -> list[str]:
    """Lower-cased words stripped of punctuation (a word that was only punctuation is dropped)."""
    out = []
    for word in words:
        for part in _NOT_WORD.split(word.lower()):
            if part.strip("'"):
                out.append(part.strip("'"))
    return out


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, list[tuple[int, int]]]:
    """The word edit distance between two normalised word lists and the ``(reference index, hypothesis index)``
    pairs the alignment matches exactly."""
    n, m = len(reference), len(hypothesis)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1, cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            if reference[i - 1] == hypothesis[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return cost[n][m], pairs[::-1]


@dataclass(frozen=True)
class Score:
    """A transcript's agreement with its reference.

    Attributes:
        errors: word edits (substitutions + deletions + insertions); reference_words: words in the reference.
        timed: reference words with a reference time that the transcript matched; on_time: those whose start
            is within the tolerance of the reference's.
    """

    errors: int
    reference_words: int
    timed: int
    on_time: int

    @property
    def wer(self) -> float:
        """Word error rate, 0 (perfect) and up."""
        return self.errors / max(1, self.reference_words)

    @property
    def on_time_share(self) -> float:
        """Share of the reference's timed words matched and on time (unmatched timed words count as late)."""
        return self.on_time / max(1, self.timed)

    def __add__(self, other: "Score") -> "Score":
        return Score(self.errors + other.errors, self.reference_words + other.reference_words, self.timed + other.timed,
                     self.on_time + other.on_time)


def score(reference: Sequence[str], reference_starts_s: Sequence[Optional[float]], hypothesis: Sequence[str],
          hypothesis_starts_s: Sequence[float], *, tolerance_s: float = 0.3) -> Score:
    """Score one transcript (its words and their start times, seconds) against the reference words and their
    start times (``None`` where the reference has none). ``timed`` counts every reference word with a time, so
    a deleted word counts against the time agreement too."""
    ref_pairs = [(word, start) for raw, start in zip(reference, reference_starts_s) for word in normalise([raw])]
    hyp_pairs = [(word, start) for raw, start in zip(hypothesis, hypothesis_starts_s) for word in normalise([raw])]
    distance, matches = align([w for w, _ in ref_pairs], [w for w, _ in hyp_pairs])
    timed = sum(1 for _, start in ref_pairs if start is not None)
    on_time = sum(1 for i, j in matches if ref_pairs[i][1] is not None and abs(ref_pairs[i][1] - hyp_pairs[j][1]) <= tolerance_s)
    return Score(distance, len(ref_pairs), timed, on_time)
