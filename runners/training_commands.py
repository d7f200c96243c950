"""The trainer's subcommands: ``train``, ``evaluate``, ``predict``, ``generate``, ``compare``, ``pretrain`` and ``retrieval-eval``
(caption heads' parts in ``runners.generation_commands``).

The trainer (and torch) is imported inside each command function, so importing this module or building the
parsers (``mmfeat --help``) imports neither; choices come from ``trainer.names``, which imports nothing heavy.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Optional

from runners.generation_commands import (GENERATE, add_evaluate_generation_options, add_generate_command, add_generation_options,
                                         check_train_generate, evaluate_generate, generate, train_generate)
from schemas.errors import ConfigError
from schemas.config import MODALITIES
from trainer.machine import usable_cores
from trainer.names import ALIGNED_SEQUENCES, FUSIONS, READERS, SEQUENCE_ENCODERS

EXIT_OK = 0


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="a cache written by mmfeat extract")
    parser.add_argument("--as-of", metavar="RUN_ID", help="read the cache as run RUN_ID left it (default: the latest run; mmfeat status lists runs)")


def _add_jobs_option(parser: argparse.ArgumentParser) -> None:
    cores = usable_cores()
    parser.add_argument("--jobs", type=int, metavar="N", help="fits trained at once, each in its own process on one torch thread "
                        f"(default: the usable cores, {cores} here; 1: one after another in this process; results do not depend on it)")


def _add_train(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("train", parents=[common], help="fit a fusion head (or, --task generate, a caption head) on a cache, "
                                   "with cross-validation")
    _add_cache_options(parser)
    parser.add_argument("--label", action="append", help="label column of the samples table (repeat for multi-task); required "
                        "unless --task generate")
    parser.add_argument("--fusion", default="attention", choices=FUSIONS, help="fusion head (default attention)")
    parser.add_argument("--modalities", help="comma-separated subset of video,audio,text (default: every embedded modality)")
    parser.add_argument("--encoder", action="append", default=[], help="MODALITY=SET to pick an embedding set (default: the latest run's)")
    parser.add_argument("--folds", type=int, default=5,
                        help="k-fold cross-validation before the final fit (default 5; 0: none, only the final fit, scored on its training data)")
    _add_jobs_option(parser)
    parser.add_argument("--task-type", default="auto", choices=["auto", "classification", "regression"])
    parser.add_argument("--output", required=True, help="folder for metrics.json and the checkpoint")
    parser.add_argument("--init", help="a mmfeat pretrain folder: start the modality projections from it")
    _add_sequence_options(parser)
    _add_reader_options(parser)
    add_generation_options(parser)
    hyper = parser.add_argument_group("training")
    for name, kind, default, meaning in _HYPER_PARAMETERS:
        hyper.add_argument(f"--{name}", type=kind, default=default, help=f"{meaning} (default {default})")


_HYPER_PARAMETERS = [
    ("hidden", int, 32, "projection size"),
    ("epochs", int, 300, "most epochs per fit; early stopping usually ends sooner"),
    ("batch-size", int, 32, "rows per optimiser step"),
    ("learning-rate", float, 1e-3, "AdamW learning rate"),
    ("weight-decay", float, 1e-2, "AdamW weight decay"),
    ("patience", int, 30, "epochs without a better validation loss before stopping"),
    ("modality-dropout", float, 0.0, "chance of hiding a present modality from a training row"),
    ("seed", int, 0, "seeds splits, initialisation, batches and dropout"),
]


def _add_reader_options(parser: argparse.ArgumentParser) -> None:
    reading = parser.add_argument_group("reading the cache")
    reading.add_argument("--reader", default="auto", choices=READERS,
                         help="memory, disk (memory-mapped, chunked: caches larger than memory) or auto (disk above an eighth of RAM)")
    reading.add_argument("--chunk-rows", type=int, help="rows in memory at once when reading from disk (default 4096)")
    reading.add_argument("--labels-file", help="CSV, JSONL or Parquet with sample_id (or id) and the label columns, instead of the samples table's")
    reading.add_argument("--scratch", help="folder for the memory-mapped features (default: --output, or the system temp folder)")


def _add_pretrain(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("pretrain", parents=[common], help="contrastive alignment of modality projections (no labels)")
    _add_cache_options(parser)
    parser.add_argument("--output", required=True, help="folder for pretrain.pt and pretrain.json")
    parser.add_argument("--modalities", help="comma-separated subset of video,audio,text")
    for name, kind, default in [("hidden", int, 32), ("epochs", int, 200), ("temperature", float, 0.1), ("seed", int, 0)]:
        parser.add_argument(f"--{name}", type=kind, default=default)


def _add_retrieval(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("retrieval-eval", parents=[common], help="cross-modal retrieval recall@1/5/10")
    _add_cache_options(parser)
    parser.add_argument("--query", default="text", choices=["video", "audio", "text"])
    parser.add_argument("--target", default="video", choices=["video", "audio", "text"])
    parser.add_argument("--model", help="a mmfeat pretrain folder (default: random projections, the baseline)")
    parser.add_argument("--seed", type=int, default=0)


def _pretrain(args: argparse.Namespace) -> int:
    from trainer import pretrain as contrastive
    from trainer.data import load_features

    data = load_features(args.cache, labels=[], as_of=args.as_of, modalities=list(_modality_list(args.modalities)) or None)
    config = contrastive.PretrainConfig(hidden=args.hidden, epochs=args.epochs, temperature=args.temperature, seed=args.seed)
    model, standardiser, history = contrastive.pretrain(data, config)
    contrastive.save(model, standardiser, config, args.output)
    print(f"mmfeat pretrain: {', '.join(data.modalities)} on {len(data.sample_ids)} samples, loss {history[0]:.3f} -> {history[-1]:.3f}; {args.output}")
    return EXIT_OK


def _retrieval(args: argparse.Namespace) -> int:
    from trainer import pretrain as contrastive
    from trainer.data import load_features

    data = load_features(args.cache, labels=[], as_of=args.as_of, modalities=[args.query, args.target])
    if args.model:
        model, standardiser, _ = contrastive.load(args.model)
    else:
        model, standardiser = contrastive.random_projections(data, contrastive.PretrainConfig(seed=args.seed))
    result = contrastive.retrieval_recall(model, standardiser, data, query=args.query, target=args.target)
    print(json.dumps({"query": args.query, "target": args.target, "model": args.model or "random projections", **result}, indent=2))
    return EXIT_OK


def _add_sequence_options(parser: argparse.ArgumentParser) -> None:
    sequences = parser.add_argument_group("sequence inputs")
    sequences.add_argument("--sequence", default="", help="comma-separated modalities read as sequences: audio (MFCC frames), "
                           "video/text (per-frame/per-token embeddings from mmfeat extract --sequences); or aligned: every "
                           "modality from an aligned set (mmfeat align), with step masks")
    sequences.add_argument("--aligned-set", metavar="NAME", help="with --sequence aligned: the aligned/<on>-<fingerprint> set, or the "
                           "start of its name, e.g. words (default: the newest mmfeat align's)")
    sequences.add_argument("--sequence-encoder", default="gru", choices=SEQUENCE_ENCODERS, help="(default gru)")
    sequences.add_argument("--max-steps", type=int, default=64, help="longest sequence; longer ones are averaged into this many steps (default 64)")
    sequences.add_argument("--audio-step-s", type=float, default=0.1, help="seconds of MFCC frames per audio step (default 0.1)")


def _sequence_list(value: Optional[str]) -> tuple[str, ...]:
    """``--sequence``: modalities, or ``aligned`` alone."""
    return (ALIGNED_SEQUENCES,) if value == ALIGNED_SEQUENCES else _modality_list(value)


def _add_compare(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("compare", parents=[common], help="fusion heads against single-modality baselines, cross-validated")
    _add_cache_options(parser)
    parser.add_argument("--label", required=True)
    parser.add_argument("--fusions", default=None, help="comma-separated fusion heads (default attention,concat,weighted); "
                        "mult is added when every modality is a sequence (e.g. --sequence aligned)")
    parser.add_argument("--folds", type=int, default=5, help="k-fold cross-validation of every model (default 5)")
    parser.add_argument("--epochs", type=int, default=300, help="most epochs per fit (default 300; early stopping usually ends sooner)")
    parser.add_argument("--seed", type=int, default=0, help="seeds splits, initialisation, batches and dropout (default 0)")
    _add_jobs_option(parser)
    parser.add_argument("--labels-file", help="CSV, JSONL or Parquet with sample_id (or id) and the label column")
    _add_sequence_options(parser)


def _compare(args: argparse.Namespace) -> int:
    from trainer.compare import compare, format_table
    from trainer.threads import single_threaded_process
    from trainer.train import TrainConfig

    for option, value, minimum in (("folds", args.folds, 2), ("epochs", args.epochs, 1), ("jobs", args.jobs, 1)):
        _check_at_least(option, value, minimum)
    single_threaded_process()
    config = TrainConfig(seed=args.seed, epochs=args.epochs, sequences=_sequence_list(args.sequence), aligned_set=args.aligned_set,
                         sequence_encoder=args.sequence_encoder, max_steps=args.max_steps, audio_step_s=args.audio_step_s)
    fusions = tuple(args.fusions.split(",")) if args.fusions else None
    rows = compare(args.cache, label=args.label, fusions=fusions, folds=args.folds, config=config, labels_file=args.labels_file,
                   as_of=args.as_of, jobs=args.jobs)
    print(format_table(rows))
    return EXIT_OK


def _add_evaluate(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("evaluate", parents=[common], help="score a trained model on a cache")
    parser.add_argument("--model", required=True, help="the --output folder of mmfeat train")
    _add_cache_options(parser)
    parser.add_argument("--encoder", action="append", default=[],
                        help="MODALITY=SET to pick an embedding set (default: the one the model was trained on, when the cache has it)")
    _add_reader_options(parser)
    add_evaluate_generation_options(parser)


def _encoder_choices(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        modality, sep, name = value.partition("=")
        if not sep or modality not in ("video", "audio", "text"):
            raise ConfigError(f"--encoder must look like text=all-minilm-l6-v2 (got {value!r})")
        pairs[modality] = name
    return pairs


def _modality_list(value: Optional[str]) -> tuple[str, ...]:
    """``video,audio`` -> ``("video", "audio")``; unknown names fail before any work."""
    names = tuple(name for name in (value or "").split(",") if name)
    unknown = [name for name in names if name not in MODALITIES]
    if unknown:
        raise ConfigError(f"{unknown}: modalities are {', '.join(MODALITIES)}")
    return names


def _check_at_least(option: str, value: Optional[int], minimum: int) -> None:
    """Fail before any work when ``--option`` is given below ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"--{option} must be >= {minimum} (got {value})")


def _train(args: argparse.Namespace) -> int:
    from trainer.run import train
    from trainer.threads import single_threaded_process
    from trainer.train import TrainConfig

    _check_at_least("epochs", args.epochs, 1)
    _check_at_least("jobs", args.jobs, 1)
    check_train_generate(args)
    single_threaded_process()
    modalities = list(_modality_list(args.modalities)) or None
    if args.task == GENERATE:
        return train_generate(args, modalities, _encoder_choices(args.encoder), _sequence_list(args.sequence))

    config = TrainConfig(fusion=args.fusion, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, weight_decay=args.weight_decay, patience=args.patience,
                         modality_dropout=args.modality_dropout, seed=args.seed, sequences=_sequence_list(args.sequence),
                         aligned_set=args.aligned_set, sequence_encoder=args.sequence_encoder, max_steps=args.max_steps,
                         audio_step_s=args.audio_step_s, chunk_rows=args.chunk_rows)
    report = train(args.cache, labels=args.label, config=config, output=args.output, as_of=args.as_of, folds=args.folds,
                   modalities=modalities, encoders=_encoder_choices(args.encoder), task_type=args.task_type, init=args.init,
                   reader=args.reader, scratch=args.scratch, labels_file=args.labels_file, jobs=args.jobs)
    print(f"mmfeat train: {args.fusion} on {', '.join(report['modalities'])} ({report['n_samples']} samples) -> {args.output}")
    print(f"  cache as run {report['cache']['run_id']} left it (samples version {report['cache']['samples_version']})")
    _print_metrics(report)
    weights = report["final_model"].get("modality_weights")
    if weights:
        print("  modality weights         " + ", ".join(f"{m} {w:.2f}" for m, w in weights.items()))
    return EXIT_OK


def _print_metrics(report: dict[str, Any]) -> None:
    """Mean ± std over the folds; without cross-validation (``--folds 0``), the final model's metrics on its training data."""
    if "mean" in report:
        print(f"  {'metric':<24} mean ± std over {len(report['folds'])} folds")
        for name, mean in report["mean"].items():
            print(f"  {name:<24} {mean:.3f} ± {report['std'][name]:.3f}")
        return
    from trainer.evaluation import flatten_metrics

    on_training = report["final_model"]["metrics_on_training_cache"]
    print(f"  {'metric':<24} on the training data (no cross-validation: --folds 0; optimistic)")
    for name, value in flatten_metrics(on_training, len(on_training)).items():
        print(f"  {name:<24} {value:.3f}")


def _evaluate(args: argparse.Namespace) -> int:
    from trainer.predict import checkpoint_kind
    from trainer.run import evaluate_checkpoint

    if checkpoint_kind(args.model) == GENERATE:
        return evaluate_generate(args, _encoder_choices(args.encoder))

    result = evaluate_checkpoint(args.model, args.cache, as_of=args.as_of, encoders=_encoder_choices(args.encoder), reader=args.reader,
                                 scratch=args.scratch, labels_file=args.labels_file)
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _add_predict(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("predict", parents=[common], help="write a trained model's predictions on a cache (labels not needed)")
    parser.add_argument("--model", required=True, help="the --output folder of mmfeat train")
    _add_cache_options(parser)
    parser.add_argument("--output", required=True, metavar="FILE.parquet",
                        help="Parquet file for the predictions: sample_id, modalities_present and per label the prediction "
                             "(for classification also <label>_probability and <label>_probabilities); a path or a gs:// or s3:// URI")
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    parser.add_argument("--encoder", action="append", default=[],
                        help="MODALITY=SET to pick an embedding set (default: the one the model was trained on, when the cache has it)")
    reading = parser.add_argument_group("reading the cache")
    reading.add_argument("--reader", default="auto", choices=READERS,
                         help="memory, disk (memory-mapped, chunked: caches larger than memory) or auto (disk above an eighth of RAM)")
    reading.add_argument("--scratch", help="folder for the memory-mapped features (default: the system temp folder)")


def _check_predict_output(output: str, overwrite: bool) -> None:
    """Fail before any work on an ``--output`` that is not a ``.parquet`` file name, or that exists without ``--overwrite``."""
    if not output.lower().endswith(".parquet"):
        raise ConfigError(f"--output {output}: name a Parquet file ending in .parquet, e.g. predictions.parquet")
    from pyarrow import fs as pafs

    from schemas.cache.layout import filesystem

    system, path = filesystem(output)
    found = system.get_file_info(path).type
    if found == pafs.FileType.Directory:
        raise ConfigError(f"--output {output}: a folder; name a file in it, e.g. {output.rstrip('/')}/predictions.parquet")
    if found != pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"--output {output}: exists; add --overwrite to replace it, or choose another file")


def _predict(args: argparse.Namespace) -> int:
    _check_predict_output(args.output, args.overwrite)
    encoders = _encoder_choices(args.encoder)
    from trainer.predict import class_counts, predict_checkpoint, write_predictions

    table = predict_checkpoint(args.model, args.cache, as_of=args.as_of, encoders=encoders, reader=args.reader, scratch=args.scratch)
    write_predictions(table, args.output)
    print(f"mmfeat predict: {table.num_rows} rows -> {args.output}")
    classes = json.loads((table.schema.metadata or {}).get(b"mmfeat.classes", b"{}"))
    for label in classes:
        print(f"  {label:<24} " + ", ".join(f"{c} {n}" for c, n in class_counts(table, label).items()))
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    return generate(args, _encoder_choices(args.encoder))


def add_training_commands(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the trainer's subcommands."""
    _add_train(subparsers, common)
    _add_evaluate(subparsers, common)
    _add_predict(subparsers, common)
    add_generate_command(subparsers, common)
    _add_compare(subparsers, common)
    _add_pretrain(subparsers, common)
    _add_retrieval(subparsers, common)


TRAINING_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train, "evaluate": _evaluate, "predict": _predict, "generate": _generate,
    "compare": _compare, "pretrain": _pretrain, "retrieval-eval": _retrieval,
}
