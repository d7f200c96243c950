"""``mmfeat status O``: the runs recorded in a cache, newest last."""
from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from pipelines.run_state import RunRecord, read_records
from schemas.errors import ConfigError


def _describe(record: RunRecord) -> list[str]:
    state = record.effective_state()
    line = f"{record.run_id:<22} {state:<10} started {record.started_at}"
    summary = record.summary or {}
    if "wall_time_s" in summary:
        line += f"  wall {summary['wall_time_s']:.1f} s"
    lines = [line]
    if summary.get("samples"):
        s = summary["samples"]
        lines.append(f"    samples ok {s['ok']}, partial {s['partial']}, failed {s['failed']}, unchanged {s['unchanged']}")
        kinds = summary.get("failures", {}).get("by_kind", {})
        lines.append("    failures " + (", ".join(f"{kind} {n}" for kind, n in kinds.items()) or "none"))
    if state == "running":
        lines.append(f"    in progress: pid {record.pid} on {record.host}")
    if state == "died":
        lines.append(f"    pid {record.pid} on {record.host} is gone; the next run discards its uncommitted files")
    if record.error:
        lines.append(f"    error: {record.error}")
    return lines


def format_status(output: str) -> str:
    """A few lines per run: id, state (committed, running, failed, died), counts, failures by kind."""
    if not FileSystems.exists(output):
        raise ConfigError(f"status: no cache at {output}")
    records = read_records(output)
    if not records:
        return f"{output}: no runs recorded"
    return "\n".join([f"{output}: {len(records)} runs"] + [line for record in records for line in _describe(record)])
