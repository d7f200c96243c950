"""Hand-made runs committed straight through ``schemas.cache`` (no Beam): small tables whose content a test can state."""
from __future__ import annotations

from typing import Optional

import pyarrow as pa

from schemas.cache import DataFile, RunCommit, commit_run, new_attempt, write_data_file
from schemas.cache.view import RunInfo
from schemas.tables import table_schemas

SCHEMAS = table_schemas([pa.field("label", pa.int64())])
FEATURES = {"samples", "frames", "audio", "text", "errors"}


def samples_rows(ids: list[str], *, run_id: str, label: int = 0, n_frames: int = 2) -> pa.Table:
    """``samples`` rows of valid samples with ``n_frames`` frames each and no other features."""
    n = len(ids)
    return pa.Table.from_pylist([
        {"sample_id": sample_id, "manifest_row": i, "status": "ok", "n_frames": n_frames, "n_audio_windows": 0, "n_tokens": 0,
         "n_errors": 0, "n_skipped_packets": 0, "manifest_ok": True, "features_fingerprint": "f", "manifest_hash": "m", "run_id": run_id, "label": label}
        for i, sample_id in enumerate(ids)], schema=SCHEMAS["samples"]) if n else SCHEMAS["samples"].empty_table()


def frames_rows(ids: list[str], *, n_frames: int = 2, width: int = 8) -> pa.Table:
    """``n_frames`` frame rows per sample; ``width`` tells runs apart."""
    return pa.Table.from_pylist([
        {"sample_id": sample_id, "frame_index": k, "timestamp_s": float(k), "image": b"jpeg", "width": width, "height": 8}
        for sample_id in ids for k in range(n_frames)], schema=SCHEMAS["frames"])


def run(cache: str, run_id: str, ids: list[str], *, label: int = 0, width: int = 8, files_per_table: int = 1,
        superseded: Optional[list[str]] = None, **kwargs) -> RunInfo:
    """Commit a run that (re)computed ``ids``: their samples and frames rows, split over ``files_per_table`` files."""
    attempt = new_attempt(run_id)
    files: list[DataFile] = []
    for part in range(files_per_table):
        chunk = ids[part::files_per_table]
        if chunk:
            files.append(write_data_file(cache, "samples", f"{attempt}-part-{part}.parquet", samples_rows(chunk, run_id=run_id, label=label)))
            files.append(write_data_file(cache, "frames", f"{attempt}-part-{part}.parquet", frames_rows(chunk, width=width)))
    schemas = {name: schema for name, schema in SCHEMAS.items() if name in FEATURES}
    return commit_run(cache, RunCommit(run_id=run_id, attempt=attempt, files=files, schemas=schemas,
                                       superseded=frozenset(ids if superseded is None else superseded), **kwargs))
