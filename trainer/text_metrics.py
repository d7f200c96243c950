"""Metrics of generated text against one reference per sample: corpus BLEU and chrF (sacrebleu) and ROUGE-L.

sacrebleu and rouge_score take seconds to import, so they are imported when metrics are computed.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Scores of ``predictions[i]`` against ``references[i]``.

    Returns:
        ``bleu``: corpus BLEU (sacrebleu defaults: 13a tokenisation, 4-grams), 0-100.
        ``chrf``: corpus chrF (sacrebleu), 0-100.
        ``rouge_l``: mean ROUGE-L F-measure over samples (``rouge_score``, no stemming), 0-1.
        ``n``: the samples scored.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references: give one prediction per reference")
    if not predictions:
        raise ValueError("no predictions to score")
    import sacrebleu
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer." at INFO per scorer

    predictions, references = [str(p) for p in predictions], [str(r) for r in references]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)]
    return {
        "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
        "rouge_l": float(sum(rouge) / len(rouge)),
        "n": len(predictions),
    }
