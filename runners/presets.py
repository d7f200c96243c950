"""Runner presets: how ``mmfeat extract --runner NAME`` builds a Beam runner and its options.

Presets are registered by name; the CLI's ``--runner`` choices come from this registry.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Union

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineRunner

from schemas.errors import ConfigError


@dataclass(frozen=True)
class RunnerChoice:
    """A runner (instance or Beam name) and the pipeline options to run it with."""

    runner: Union[str, PipelineRunner]
    options: PipelineOptions


def _direct(args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """Beam's in-process ``FnApiRunner``, named explicitly.

    Beam 2.77.0's ``DirectRunner`` first tries to download the Prism binary
    and silently changes engines when it can; naming ``FnApiRunner`` pins the
    engine. ``--workers N`` (N > 1) runs N worker processes.
    """
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    extra = []
    if args.workers > 1:
        extra = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    return RunnerChoice(FnApiRunner(), PipelineOptions(beam_args + extra))


RUNNER_PRESETS: dict[str, Callable[[argparse.Namespace, list[str]], RunnerChoice]] = {
    "direct": _direct,
}


def build_runner(name: str, args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """The ``RunnerChoice`` of preset ``name``. Raises ``ConfigError`` for an unknown name."""
    if name not in RUNNER_PRESETS:
        raise ConfigError(f"--runner must be one of {sorted(RUNNER_PRESETS)} (got {name!r})")
    return RUNNER_PRESETS[name](args, beam_args)
