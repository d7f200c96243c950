"""``mmfeat train --task generate``, ``mmfeat generate`` and ``mmfeat evaluate`` of a caption head, as library functions.

Training reads the chosen modality inputs (pooled vectors or sequences, as fusion heads do) and a target: a text column
of ``samples`` or the text modality's ``tokens`` (``trainer.captions``), as ids of the cache's own tokenizer.
``folds`` >= 2 cross-validates: each fold's model captions its held-out rows, greedily and with beam search, and those
captions are scored (BLEU, chrF, ROUGE-L) and written to ``cv_predictions.jsonl``; then one model is fitted on every
row and saved.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
from sklearn.model_selection import KFold

from schemas.cache import CacheView
from schemas.errors import ConfigError
from trainer.captions import TOKENS, TargetTokenizer, cache_tokenizer_path, read_targets
from trainer.data import load_features, open_view, sets_as_trained
from trainer.decoding import Generated, generate, generate_with_greedy
from trainer.feature_set import FeatureSet
from trainer.generation import FittedGenerator, GenerateConfig, check_inputs, fit_generator
from trainer.generation_checkpoint import load_generator, save_generator
from trainer.text_metrics import generation_metrics

logger = logging.getLogger(__name__)

CV_PREDICTIONS = "cv_predictions.jsonl"
EVALUATION_PREDICTIONS = "evaluation_predictions.jsonl"
ALIGNED = "aligned"


def read_generation_data(view: CacheView, target: str, tokenizer: TargetTokenizer, *, modalities: Optional[list[str]] = None,
                         encoders: Optional[dict[str, str]] = None, sequences: tuple[str, ...] = (), max_steps: int = 64,
                         audio_step_s: float = 0.1) -> tuple[FeatureSet, list[list[int]], list[str]]:
    """The features of the samples that have a non-empty ``target``, with their target ids and reference texts.

    Raises:
        ConfigError: no sample has the target, or what ``load_features`` raises.
    """
    labels = [] if target == TOKENS else [target]
    data = load_features(view, labels=labels, modalities=modalities, encoders=encoders, sequences=sequences, max_steps=max_steps,
                         audio_step_s=audio_step_s)
    ids, references, has = read_targets(view, target, data.sample_ids, tokenizer, labels=data.labels)
    if not has.any():
        raise ConfigError(f"--target {target}: no sample of {view.cache} has a non-empty {target}")
    keep = np.flatnonzero(has)
    if len(keep) < len(has):
        logger.info("%d of %d samples have no %s and are left out", len(has) - len(keep), len(has), target)
        data = data.subset(keep)
    return data, [ids[i] for i in keep], [references[i] for i in keep]


def score_captions(fitted: FittedGenerator, data: FeatureSet, references: list[str], tokenizer: TargetTokenizer,
                   index: Optional[np.ndarray] = None, *, beams: int, max_length: Optional[int] = None,
                   no_repeat_ngram: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of greedy and beam-search captions of rows ``index`` (default: all) against ``references`` (one per row
    of ``data``), and one prediction record per row (``sample_id``, ``text``, ``score``, ``greedy``, ``reference``)."""
    index = np.arange(len(data)) if index is None else np.asarray(index)
    options = dict(max_length=max_length, no_repeat_ngram=no_repeat_ngram)
    greedy, beam = (_texts(captions, tokenizer) for captions in generate_with_greedy(fitted, data, index, beams=beams, **options))
    truth = [references[i] for i in index]
    metrics = {"greedy": generation_metrics([text for text, _ in greedy], truth)}
    if beams > 1:
        metrics[f"beam{beams}"] = generation_metrics([text for text, _ in beam], truth)
    records = [{"sample_id": data.sample_ids[i], "text": text, "score": score, "greedy": greedy_text, "reference": reference}
               for i, (text, score), (greedy_text, _), reference in zip(index, beam, greedy, truth)]
    return metrics, records


def _texts(generated: list[Generated], tokenizer: TargetTokenizer) -> list[tuple[str, float]]:
    return [(tokenizer.decode(g.ids), float(g.score)) for g in generated]


def train_generator(cache: str, *, target: str, config: GenerateConfig, output: str, as_of: Optional[str] = None, folds: int = 5,
                    modalities: Optional[list[str]] = None, encoders: Optional[dict[str, str]] = None, sequences: tuple[str, ...] = (),
                    max_steps: int = 64, audio_step_s: float = 0.1, tokenizer: Optional[str] = None, beams: int = 4,
                    no_repeat_ngram: int = 0) -> dict[str, Any]:
    """Cross-validate (``folds`` >= 2) and fit a caption head of ``target`` on ``cache``; writes ``metrics.json``,
    ``cv_predictions.jsonl`` and the checkpoint into ``output``; returns the report.

    Raises:
        ConfigError: ``folds`` of 1 or more than the samples, ``beams`` < 1, or what reading the data raises.
    """
    if ALIGNED in sequences:
        raise ConfigError("--task generate reads pooled vectors or per-modality sequences; --sequence aligned is for fusion heads")
    if folds == 1 or folds < 0:
        raise ConfigError(f"--folds must be 0 (no cross-validation) or >= 2 (got {folds})")
    if beams < 1:
        raise ConfigError(f"--beams must be >= 1 (got {beams})")
    view = open_view(cache, as_of)
    target_tokenizer = TargetTokenizer(cache_tokenizer_path(view, tokenizer))
    data, ids, references = read_generation_data(view, target, target_tokenizer, modalities=modalities, encoders=encoders,
                                                 sequences=sequences, max_steps=max_steps, audio_step_s=audio_step_s)
    if folds > len(data):
        raise ConfigError(f"--folds {folds}: only {len(data)} samples have a {target}")
    os.makedirs(output, exist_ok=True)
    options = dict(beams=beams, no_repeat_ngram=no_repeat_ngram)
    report: dict[str, Any] = {"task": "generate", "target": target, "modalities": data.modalities, "sequences": list(data.lengths),
                              "n_samples": len(data), "cache": data.source, "config": asdict(config), "tokenizer": target_tokenizer.path}
    if folds >= 2:
        per_fold, predictions = [], []
        splits = KFold(n_splits=folds, shuffle=True, random_state=config.seed).split(np.zeros(len(data)))
        for number, (train_rows, test_rows) in enumerate(splits, start=1):
            logger.info("fold %d/%d: %d training rows, %d held out", number, folds, len(train_rows), len(test_rows))
            fitted = fit_generator(data, ids, config, train_rows)
            metrics, records = score_captions(fitted, data, references, target_tokenizer, test_rows, **options)
            per_fold.append(metrics)
            predictions += [record | {"fold": number} for record in records]
        report |= _mean_and_std(per_fold)
        _write_jsonl(os.path.join(output, CV_PREDICTIONS), predictions)
    fitted = fit_generator(data, ids, config)
    reading = {"sequences": list(sequences), "max_steps": max_steps, "audio_step_s": audio_step_s}
    save_generator(fitted, output, target=target, tokenizer=target_tokenizer.path, source=data.source | {"reading": reading})
    report["final_model"] = {"history": fitted.history}
    with open(os.path.join(output, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return report


def checkpoint_data(model_dir: str, cache: str, *, as_of: Optional[str] = None, encoders: Optional[dict[str, str]] = None,
                    with_targets: bool = False, tokenizer: Optional[str] = None
                    ) -> tuple[FittedGenerator, FeatureSet, TargetTokenizer, Optional[list[str]]]:
    """A saved caption head, the features of ``cache`` it takes, the tokenizer it writes with and, ``with_targets``, the
    reference texts (then only samples with a target are read; else every usable sample).

    Each modality is read from the embedding set the model was trained on when the cache has it (``encoders`` overrides),
    as sequences or vectors as in training.

    Raises:
        ConfigError: features of other modalities or sizes than the model's inputs, or what reading the data raises.
    """
    fitted = load_generator(model_dir)
    source = fitted.metadata.get("cache", {})
    view = open_view(cache, as_of)
    encoders = sets_as_trained(view, source.get("tables", {}), encoders)
    reading = source.get("reading", {})
    options = dict(modalities=fitted.model.modalities, encoders=encoders, sequences=tuple(reading.get("sequences", ())),
                   max_steps=reading.get("max_steps", 64), audio_step_s=reading.get("audio_step_s", 0.1))
    target_tokenizer = TargetTokenizer(tokenizer or fitted.metadata["tokenizer"])
    references = None
    if with_targets:
        data, _, references = read_generation_data(view, fitted.metadata["target"], target_tokenizer, **options)
    else:
        data = load_features(view, labels=[], **options)
    check_inputs(fitted.model, fitted.standardiser, data)
    return fitted, data, target_tokenizer, references


def caption_records(fitted: FittedGenerator, data: FeatureSet, tokenizer: TargetTokenizer, *, beams: int = 4,
                    max_length: Optional[int] = None, no_repeat_ngram: int = 0) -> list[dict[str, Any]]:
    """``{sample_id, text, score}`` for every row of ``data`` (``score``: mean log-probability per token)."""
    generated = generate(fitted, data, beams=beams, max_length=max_length, no_repeat_ngram=no_repeat_ngram)
    return [{"sample_id": sample_id, "text": text, "score": score} for sample_id, (text, score) in zip(data.sample_ids, _texts(generated, tokenizer))]


def generate_captions(model_dir: str, cache: str, output: str, *, as_of: Optional[str] = None, encoders: Optional[dict[str, str]] = None,
                      beams: int = 4, max_length: Optional[int] = None, no_repeat_ngram: int = 0) -> int:
    """``mmfeat generate``: write ``output`` (JSON lines ``{sample_id, text, score}``) for every usable sample; returns the rows."""
    fitted, data, tokenizer, _ = checkpoint_data(model_dir, cache, as_of=as_of, encoders=encoders)
    records = caption_records(fitted, data, tokenizer, beams=beams, max_length=max_length, no_repeat_ngram=no_repeat_ngram)
    _write_jsonl(output, records)
    return len(records)


def evaluate_generator(model_dir: str, cache: str, *, predictions: Optional[str] = None, as_of: Optional[str] = None,
                       encoders: Optional[dict[str, str]] = None, beams: int = 4, max_length: Optional[int] = None,
                       no_repeat_ngram: int = 0) -> dict[str, Any]:
    """``mmfeat evaluate`` of a caption head: BLEU, chrF and ROUGE-L of greedy and beam-search captions against the samples'
    targets; the per-sample captions go to ``predictions`` (default ``<model_dir>/evaluation_predictions.jsonl``)."""
    fitted, data, tokenizer, references = checkpoint_data(model_dir, cache, as_of=as_of, encoders=encoders, with_targets=True)
    metrics, records = score_captions(fitted, data, references or [], tokenizer, beams=beams, max_length=max_length,
                                      no_repeat_ngram=no_repeat_ngram)
    path = predictions or os.path.join(model_dir, EVALUATION_PREDICTIONS)
    _write_jsonl(path, records)
    return {"target": fitted.metadata["target"], "n_samples": len(data), "cache": data.source, "metrics": metrics, "predictions": path}


def _mean_and_std(per_fold: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    keys = [(decoding, name) for decoding, values in per_fold[0].items() for name in values if name != "n"]
    flat = [{f"{decoding}/{name}": fold[decoding][name] for decoding, name in keys} for fold in per_fold]
    return {"folds": per_fold, "mean": {k: float(np.mean([f[k] for f in flat])) for k in flat[0]},
            "std": {k: float(np.std([f[k] for f in flat])) for k in flat[0]}}


def _write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
