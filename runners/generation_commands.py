"""Caption heads on the command line: ``train --task generate``'s options and run, ``mmfeat generate``, and ``evaluate`` of a
caption head. Torch and the trainer are imported inside the functions that run, never by building the parsers."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from schemas.errors import ConfigError

TASKS = ("labels", "generate")
GENERATE = "generate"


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """``train``'s options of ``--task generate`` (``--hidden``, ``--epochs``, ``--folds``... are shared with fusion heads)."""
    parser.add_argument("--task", default="labels", choices=TASKS,
                        help="labels: fit a fusion head on --label columns (default); generate: a caption head writing --target")
    group = parser.add_argument_group("generation (--task generate)")
    group.add_argument("--target", help="what to write: a text column of the samples table (e.g. caption), or tokens (the text "
                       "modality's tokens); tokenised with the cache's tokenizer")
    _add_decoding_options(group)
    group.add_argument("--max-length", type=int, default=32, help="most tokens per caption (default 32)")
    group.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    group.add_argument("--heads", type=int, default=4, help="attention heads, dividing --hidden (default 4)")
    group.add_argument("--prior-only", action="store_true", help="mask every input: the baseline a caption head must beat")


def _add_decoding_options(parser: Any) -> None:
    parser.add_argument("--beams", type=int, default=4, help="beam search width; 1: greedy (default 4)")
    parser.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N", help="no N-gram appears twice in a caption (default 0: off)")


def add_generate_command(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("generate", parents=[common], help="write a caption head's text for every sample of a cache")
    parser.add_argument("--model", required=True, help="the --output folder of mmfeat train --task generate")
    parser.add_argument("--cache", required=True, help="a cache written by mmfeat extract")
    parser.add_argument("--as-of", metavar="RUN_ID", help="read the cache as run RUN_ID left it (default: the latest run)")
    parser.add_argument("--output", required=True, help="a JSON lines file: {sample_id, text, score} per sample")
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    parser.add_argument("--encoder", action="append", default=[], help="MODALITY=SET (default: the sets the model was trained on)")
    _add_decoding_options(parser)
    parser.add_argument("--max-length", type=int, help="most tokens per caption (default: the training --max-length)")


def add_evaluate_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("caption heads (mmfeat train --task generate)")
    _add_decoding_options(group)
    group.add_argument("--predictions", help="JSON lines file for the per-sample captions (default: the model folder's "
                       "evaluation_predictions.jsonl)")


def _check_decoding(args: argparse.Namespace) -> None:
    if args.beams < 1:
        raise ConfigError(f"--beams must be >= 1 (got {args.beams})")
    if args.no_repeat_ngram < 0:
        raise ConfigError(f"--no-repeat-ngram must be >= 0 (got {args.no_repeat_ngram})")
    if getattr(args, "max_length", None) is not None and args.max_length < 1:
        raise ConfigError(f"--max-length must be >= 1 (got {args.max_length})")


def check_train_generate(args: argparse.Namespace) -> None:
    """Fail before any work on options that do not go with ``--task``."""
    if args.task != GENERATE:
        if not args.label:
            raise ConfigError("--label is required (or --task generate --target COLUMN to train a caption head)")
        if args.target:
            raise ConfigError("--target goes with --task generate; a fusion head learns --label columns")
        return
    if not args.target:
        raise ConfigError("--task generate needs --target: a text column of the samples table (e.g. caption) or tokens")
    misplaced = [flag for flag, used in (("--label", args.label), ("--labels-file", args.labels_file), ("--modality-dropout", args.modality_dropout),
                                         ("--fusion", args.fusion != "attention"), ("--jobs", args.jobs is not None),
                                         ("--aligned-set", args.aligned_set), ("--chunk-rows", args.chunk_rows), ("--scratch", args.scratch),
                                         ("--sequence-encoder", args.sequence_encoder != "gru"), ("--task-type", args.task_type != "auto"),
                                         ("--reader", args.reader not in ("auto", "memory"))) if used]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)}: not options of --task generate (a caption head reads its --target, in memory)")
    _check_decoding(args)


def train_generate(args: argparse.Namespace, modalities: Any, encoders: dict[str, str], sequences: tuple[str, ...]) -> int:
    from trainer.generate_run import train_generator
    from trainer.generation import GenerateConfig

    config = GenerateConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, weight_decay=args.weight_decay, patience=args.patience,
                            max_length=args.max_length, seed=args.seed, mask_inputs=args.prior_only, init=args.init)
    report = train_generator(args.cache, target=args.target, config=config, output=args.output, as_of=args.as_of, folds=args.folds,
                             modalities=modalities, encoders=encoders, sequences=sequences, max_steps=args.max_steps,
                             audio_step_s=args.audio_step_s, beams=args.beams, no_repeat_ngram=args.no_repeat_ngram)
    inputs = "no input (--prior-only)" if args.prior_only else ", ".join(report["modalities"])
    print(f"mmfeat train: caption head writing {args.target} from {inputs} ({report['n_samples']} samples) -> {args.output}")
    if "mean" in report:
        print(f"  {'metric':<24} mean ± std over {len(report['folds'])} folds (captions of held-out samples: cv_predictions.jsonl)")
        for name, mean in report["mean"].items():
            print(f"  {name:<24} {mean:.3f} ± {report['std'][name]:.3f}")
    return 0


def generate(args: argparse.Namespace, encoders: dict[str, str]) -> int:
    _check_decoding(args)
    if os.path.exists(args.output) and not args.overwrite:
        raise ConfigError(f"--output {args.output}: exists; add --overwrite to replace it, or choose another file")
    from trainer.generate_run import generate_captions

    rows = generate_captions(args.model, args.cache, args.output, as_of=args.as_of, encoders=encoders, beams=args.beams,
                             max_length=args.max_length, no_repeat_ngram=args.no_repeat_ngram)
    print(f"mmfeat generate: {rows} captions -> {args.output}")
    return 0


def evaluate_generate(args: argparse.Namespace, encoders: dict[str, str]) -> int:
    _check_decoding(args)
    misplaced = [flag for flag, used in (("--labels-file", args.labels_file), ("--reader", args.reader not in ("auto", "memory")),
                                         ("--scratch", args.scratch)) if used]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)}: not options of a caption head's evaluation (it reads its target from the "
                          "samples table, in memory)")
    from trainer.generate_run import evaluate_generator

    result = evaluate_generator(args.model, args.cache, predictions=args.predictions, as_of=args.as_of, encoders=encoders,
                                beams=args.beams, no_repeat_ngram=args.no_repeat_ngram)
    print(json.dumps(result, indent=2))
    return 0
