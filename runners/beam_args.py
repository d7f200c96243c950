"""Validation of the Beam pipeline options passed through ``mmfeat extract``.

Beam is imported only when there are options to check (importing it takes seconds).
"""
from __future__ import annotations

import difflib

from schemas.errors import ConfigError


def check_beam_args(beam_args: list[str], *, own_options: list[str]) -> None:
    """Fail on arguments that neither mmfeat nor any Beam ``PipelineOptions`` class defines.

    Beam itself only logs and drops unknown arguments; a typo would then be
    ignored silently. ``own_options`` (mmfeat's flags) feed the suggestions.

    Raises:
        ConfigError: naming each unknown argument and the closest known flag.
    """
    if not beam_args:
        return
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # the hook every PipelineOptions class implements
    _, unknown = parser.parse_known_args(beam_args)
    if not unknown:
        return
    known = own_options + [opt for action in parser._actions for opt in action.option_strings]
    problems = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        problems.append(f"{arg!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError("unknown option " + ", ".join(problems) + "; see 'mmfeat extract --help' and Beam's pipeline options")
