"""Caption decoding for a ``FittedGenerator``: greedy and beam search.

Scores are length-normalised: the mean log-probability (nats) per generated token, EOS included when it was
generated. A caption ends at EOS or after ``max_length`` tokens. PAD, BOS and UNK are never generated.

Beam search keeps the ``beams`` most likely unfinished hypotheses (by summed log-probability) at each step; a
hypothesis that ends moves to the finished ones, and the caption is the finished (or, at ``max_length``, unfinished)
hypothesis with the best mean log-probability. Pruning by summed log-probability can drop the greedy caption even
when its mean is the best, so the greedy caption is decoded too and kept as a candidate: beam search never returns a
caption scoring below greedy decoding's.

``no_repeat_ngram=n`` forbids a token that would make an n-gram of the caption appear twice (``n=1``: no token twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from schemas.errors import ConfigError
from trainer.feature_set import FeatureSet
from trainer.caption_model import BOS, EOS, PAD, UNK, CaptionModel
from trainer.generation import FittedGenerator, Rows, check_inputs
from trainer.threads import threads_for, torch_threads


@dataclass
class Generated:
    """One caption: tokenizer ``ids`` (no special tokens) and ``score``, its mean log-probability per generated token."""

    ids: list[int]
    score: float


def _banned_ngrams(history: list[int], n: int) -> set[int]:
    """Tokens that, appended to ``history``, would repeat one of its n-grams."""
    if n <= 0 or len(history) < n - 1:
        return set()
    prefix = tuple(history[len(history) - n + 1 :]) if n > 1 else ()
    return {history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i : i + n - 1]) == prefix}


def _step_log_probs(model: CaptionModel, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                    histories: list[list[int]], no_repeat_ngram: int) -> torch.Tensor:
    """Log-probabilities ``(rows, vocab)`` of the next token after ``tokens`` ``(rows, t)``, with the tokens that may not
    come next (specials, repeated n-grams) at ``-inf``."""
    logits = model.decode(tokens, memory, memory_mask)[:, -1]
    logits[:, [PAD, BOS, UNK]] = float("-inf")
    for row, history in enumerate(histories):
        banned = _banned_ngrams(history, no_repeat_ngram)
        if banned:
            logits[row, sorted(banned)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def _greedy(model: CaptionModel, memory: torch.Tensor, memory_mask: torch.Tensor, max_length: int,
            no_repeat_ngram: int) -> list[tuple[list[int], float]]:
    """Per row, the compact ids (EOS excluded) and mean log-probability of the greedy caption."""
    rows = memory.shape[0]
    tokens = torch.full((rows, 1), BOS, dtype=torch.int64)
    histories: list[list[int]] = [[] for _ in range(rows)]
    totals, counts = [0.0] * rows, [0] * rows
    alive = list(range(rows))
    for _ in range(max_length):
        if not alive:
            break
        keep = torch.tensor(alive)
        log_probs = _step_log_probs(model, tokens[keep], memory[keep], memory_mask[keep], [histories[r] for r in alive], no_repeat_ngram)
        best, chosen = log_probs.max(dim=-1)
        column = torch.full((rows, 1), PAD, dtype=torch.int64)
        column[keep, 0] = chosen
        tokens = torch.cat([tokens, column], dim=1)
        still = []
        for position, row in enumerate(alive):
            totals[row] += float(best[position])
            counts[row] += 1
            if int(chosen[position]) == EOS:
                continue
            histories[row].append(int(chosen[position]))
            still.append(row)
        alive = still
    return [(histories[r], totals[r] / max(counts[r], 1)) for r in range(rows)]


def _beam(model: CaptionModel, memory: torch.Tensor, memory_mask: torch.Tensor, beams: int, max_length: int,
          no_repeat_ngram: int) -> list[tuple[list[int], float]]:
    """Per row, the compact ids (EOS excluded) and mean log-probability of the beam-search caption."""
    rows, vocab = memory.shape[0], model.output.out_features
    # hypotheses: per row, up to ``beams`` (ids, summed log-probability); all rows' hypotheses decode as one batch
    alive: list[list[tuple[list[int], float]]] = [[([], 0.0)] for _ in range(rows)]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(rows)]
    for step in range(max_length):
        owners = [(row, h) for row in range(rows) for h in range(len(alive[row]))]
        if not owners:
            break
        flat = [alive[row][h] for row, h in owners]
        tokens = torch.tensor([[BOS] + ids for ids, _ in flat], dtype=torch.int64)
        select = torch.tensor([row for row, _ in owners])
        log_probs = _step_log_probs(model, tokens, memory[select], memory_mask[select], [ids for ids, _ in flat], no_repeat_ngram)
        totals = log_probs + torch.tensor([total for _, total in flat], dtype=log_probs.dtype)[:, None]
        start = 0
        for row in range(rows):
            count = len(alive[row])
            if not count:
                continue
            candidates = totals[start : start + count].flatten()
            best, where = candidates.topk(min(2 * beams, int(torch.isfinite(candidates).sum())))
            survivors = []
            for total, position in zip(best.tolist(), where.tolist()):
                ids, _ = flat[start + position // vocab]
                token = position % vocab
                if token == EOS:
                    finished[row].append((ids, total / (len(ids) + 1)))
                elif len(survivors) < beams:
                    survivors.append((ids + [token], total))
            alive[row] = survivors if step + 1 < max_length else []
            if step + 1 == max_length:  # cut at max_length: the unfinished hypotheses are candidates too
                finished[row].extend((ids, total / len(ids)) for ids, total in survivors)
            start += count
    return [max(finished[row], key=lambda hypothesis: hypothesis[1]) if finished[row] else ([], float("-inf")) for row in range(rows)]


def generate(fitted: FittedGenerator, data: FeatureSet, index: Optional[np.ndarray] = None, *, beams: int = 1,
             max_length: Optional[int] = None, no_repeat_ngram: int = 0, batch_rows: int = 256) -> list[Generated]:
    """Captions of the rows ``index`` of ``data`` (default: all), in that order (see ``generate_with_greedy``)."""
    return generate_with_greedy(fitted, data, index, beams=beams, max_length=max_length, no_repeat_ngram=no_repeat_ngram,
                                batch_rows=batch_rows)[1]


def generate_with_greedy(fitted: FittedGenerator, data: FeatureSet, index: Optional[np.ndarray] = None, *, beams: int = 1,
                         max_length: Optional[int] = None, no_repeat_ngram: int = 0,
                         batch_rows: int = 256) -> tuple[list[Generated], list[Generated]]:
    """Greedy captions of the rows ``index`` of ``data`` (default: all) and the captions ``beams`` gives, in that order:
    with ``beams`` > 1 the beam search's, or the greedy one where that is likelier (the greedy pass is decoded once for
    both). With ``beams`` 1 both lists are the greedy captions.

    Args:
        fitted: a trained caption head (``fit_generator`` or ``load_generator``).
        data: features with the modalities, input sizes and sequence kinds the head was trained on.
        beams: 1 for greedy decoding, more for beam search with that many hypotheses.
        max_length: most tokens per caption, EOS not counted (default and upper bound: the training ``max_length``).
        no_repeat_ngram: 0, or ``n``: no n-gram appears twice in a caption.
        batch_rows: rows decoded at once (bounds memory; the captions do not depend on it).
    """
    limit = fitted.model.max_length
    max_length = limit if max_length is None else max_length
    problems = []
    if not isinstance(beams, int) or beams < 1:
        problems.append(f"--beams must be an integer >= 1 (got {beams!r})")
    if not isinstance(max_length, int) or not 1 <= max_length <= limit:
        problems.append(f"--max-length must be an integer from 1 to {limit}, the model's training max_length (got {max_length!r})")
    if not isinstance(no_repeat_ngram, int) or no_repeat_ngram < 0:
        problems.append(f"--no-repeat-ngram must be 0 (off) or an n-gram size >= 1 (got {no_repeat_ngram!r})")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        problems.append(f"batch_rows must be an integer >= 1 (got {batch_rows!r})")
    if problems:
        raise ConfigError("; ".join(problems))
    check_inputs(fitted.model, fitted.standardiser, data)
    index = np.arange(len(data)) if index is None else np.asarray(index, dtype=np.int64)
    if len(index) == 0:
        return [], []
    model = fitted.model.eval()
    greedy: list[Generated] = []
    results: list[Generated] = []
    threads = threads_for(model, min(batch_rows, len(index)) * beams)
    with torch.no_grad(), torch_threads(threads):
        for start in range(0, len(index), batch_rows):
            rows = Rows.of(data.subset(index[start : start + batch_rows]), fitted.standardiser)
            memory, memory_mask = model.encode(rows.inputs, rows.present, rows.lengths)
            decoded = _greedy(model, memory, memory_mask, max_length, no_repeat_ngram)
            greedy.extend(Generated(fitted.vocab.decode(ids), float(score)) for ids, score in decoded)
            if beams > 1:
                searched = _beam(model, memory, memory_mask, beams, max_length, no_repeat_ngram)
                decoded = [b if b[1] >= g[1] else g for b, g in zip(searched, decoded)]
            results.extend(Generated(fitted.vocab.decode(ids), float(score)) for ids, score in decoded)
    return greedy, results
