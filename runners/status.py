"""The cache's own subcommands: ``status`` (the runs in the Delta history of ``samples``), ``repair``, ``vacuum``, ``compact``.

``schemas.cache`` (pyarrow, deltalake) is imported inside each command, so ``mmfeat --help`` does not load it.
"""
from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Callable

from schemas.errors import ConfigError

if TYPE_CHECKING:
    from schemas.cache import RunInfo


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
    if summary.get("aligned_table"):
        counts = summary.get("counts", {})
        lines.append(f"    aligned {counts.get('samples', 0)} samples, {counts.get('steps', 0)} steps on {summary.get('aligned_on')} "
                     f"into {summary['aligned_table']}")
    if summary.get("damaged_files"):
        lines.append(f"    removed damaged files {summary['damaged_files']}; {summary['samples_to_recompute']} samples to recompute")
    return lines


def format_status(output: str) -> str:
    """A few lines per run: id, kind (extract, repair, compact, align), commit time, counts, failures by kind, encoders.

    Raises:
        ConfigError: no cache at ``output``, or one of another schema version.
    """
    from schemas.cache import check_format, runs

    check_format(output)
    history = runs(output)
    if not history:
        raise ConfigError(f"status: no cache at {output} (no run has committed there)")
    lines = [f"{output}: {len(history)} runs"]
    return "\n".join(lines + [line for run in history for line in _describe(run)])


def _repair(args: argparse.Namespace) -> str:
    from schemas.cache import check_format, repair

    check_format(args.output)
    run = repair(args.output, deep=args.deep)
    if run is None:
        return f"mmfeat repair: {args.output}: every data file is intact"
    damaged = run.summary["damaged_files"]
    return (f"mmfeat repair: removed {sum(map(len, damaged.values()))} damaged files ({', '.join(sorted(damaged))}); "
            f"{run.summary['samples_to_recompute']} samples will be recomputed by the next mmfeat extract")


def _vacuum(args: argparse.Namespace) -> str:
    from schemas.cache import check_format, vacuum

    check_format(args.output)
    removed = vacuum(args.output, retention_hours=args.retention_hours, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    return "\n".join([f"mmfeat vacuum: {verb} {len(removed)} files"] + [f"  {path}" for path in removed])


def _compact(args: argparse.Namespace) -> str:
    from schemas.cache import check_format, compact

    check_format(args.output)
    before = {table: len(files) for table, files in _file_counts(args.output).items()}
    compact(args.output)
    after = _file_counts(args.output)
    return "\n".join(["mmfeat compact: data files per table"] + [f"  {t}: {before.get(t, 0)} -> {len(f)}" for t, f in sorted(after.items())])


def _file_counts(output: str) -> dict[str, list[str]]:
    from schemas.cache import CacheView

    view = CacheView.open(output)
    return {table: view.files(table) for table in view.tables()}


MAINTENANCE_COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "status": lambda args: format_status(args.output), "repair": _repair, "vacuum": _vacuum, "compact": _compact,
}
