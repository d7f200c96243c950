"""``mmfeat status CACHE``: the runs that committed to a cache (from the Delta history of ``samples``), oldest first."""
from __future__ import annotations

import datetime

from schemas.cache import RunInfo, check_format, runs
from schemas.errors import ConfigError


def _describe(run: RunInfo) -> list[str]:
    summary = run.summary
    when = datetime.datetime.fromtimestamp(run.timestamp_ms / 1000, datetime.timezone.utc).isoformat(timespec="seconds")
    line = f"{run.run_id:<24} {run.kind:<8} {when}  samples v{run.version}"
    if "wall_time_s" in summary:
        line += f"  wall {summary['wall_time_s']:.1f} s"
    lines = [line]
    if summary.get("samples"):
        s = summary["samples"]
        lines.append(f"    samples ok {s['ok']}, partial {s['partial']}, failed {s['failed']}, unchanged {s['unchanged']}")
        kinds = summary.get("failures", {}).get("by_kind", {})
        lines.append("    failures " + (", ".join(f"{kind} {n}" for kind, n in kinds.items()) or "none"))
    if summary.get("encoders"):
        lines.append("    encoders " + ", ".join(f"{m} {e['name']} ({e['dim']}-d)" for m, e in sorted(summary["encoders"].items())))
    if summary.get("damaged_files"):
        lines.append(f"    removed damaged files {summary['damaged_files']}; {summary['samples_to_recompute']} samples to recompute")
    return lines


def format_status(output: str) -> str:
    """A few lines per run: id, kind (extract, repair, compact), commit time, counts, failures by kind, encoders.

    Raises:
        ConfigError: no cache at ``output``, or one of another schema version.
    """
    check_format(output)
    history = runs(output)
    if not history:
        raise ConfigError(f"status: no cache at {output} (no run has committed there)")
    lines = [f"{output}: {len(history)} runs"]
    return "\n".join(lines + [line for run in history for line in _describe(run)])
