"""``--sequence aligned``: every modality as a step sequence from an aligned set (``mmfeat align``), with step masks.

An aligned set (table ``aligned/<on>-<fingerprint>``, schema ``schemas.tables.ALIGNED``) holds, per sample, ``n_steps``
steps on one time axis (words, segments or fixed spans) and per modality ``(steps, dim)`` values with a
``<modality>_mask`` ``(steps,)``: a step may have audio but no text, so validity is a mask, not a length. Read here as,
per modality, float32 ``(n, max_steps, dim)`` and a bool step mask ``(n, max_steps)`` (``FeatureSet.lengths`` holds
the mask); masked steps hold zeros and are left out of standardisation, of the sequence encoders (``compact``) and
of ``--fusion mult``'s attention and means. A set longer than ``max_steps`` is averaged over ``max_steps`` equal
segments of steps, counting valid steps only (a segment with none stays masked).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyarrow as pa

from schemas.cache import CacheView, runs
from schemas.errors import ConfigError
from schemas.tables import ALIGNED_DIR, ALIGNED_MODALITIES
from trainer.cache_reader import description, read_partitions, row_count
from trainer.sequences import allocate

logger = logging.getLogger(__name__)


def aligned_sets(view: CacheView) -> list[str]:
    """The aligned tables of ``view`` that hold rows (``aligned/<on>-<fingerprint>``), sorted."""
    return sorted(t for t in view.tables() if t.startswith(f"{ALIGNED_DIR}/") and row_count(view, t))


def choose_aligned_set(view: CacheView, wanted: Optional[str] = None) -> str:
    """The aligned table ``wanted`` names (a table name, or the start of its last part, e.g. ``words``), else the one the
    newest ``mmfeat align`` run up to ``view``'s state wrote.

    Raises:
        ConfigError: no aligned set, or ``wanted`` matches none or several.
    """
    sets = aligned_sets(view)
    if not sets:
        raise ConfigError(f"{view.cache} has no aligned set: run mmfeat align {view.cache} --on words (after extract --transcribe)")
    if wanted:
        name = wanted.rsplit("/", 1)[-1]
        matches = [t for t in sets if t.rsplit("/", 1)[-1].startswith(name)]
        if len(matches) != 1:
            raise ConfigError(f"--aligned-set {wanted}: matches {matches or 'nothing'} among {sets}")
        return matches[0]
    for run in reversed(runs(view.cache)):
        if view.run is not None and run.version > view.run.version:
            continue
        table = run.summary.get("aligned_table")
        if table in sets:
            return table
    return sets[-1]


def aligned_modalities(view: CacheView, table: str, wanted: Optional[list[str]] = None) -> list[str]:
    """The modalities of ``table`` that hold data (its ``dims`` are recorded), in ``ALIGNED_MODALITIES`` order, or ``wanted``.

    Raises:
        ConfigError: a ``wanted`` modality the set holds no data of.
    """
    dims = description(view, table, "dims")
    held = [m for m in ALIGNED_MODALITIES if dims.get(m)]
    if wanted is None:
        return held
    missing = [m for m in wanted if m not in held]
    if missing:
        raise ConfigError(f"{table} holds no {missing} steps (it has {held}); rerun mmfeat extract --sequences and mmfeat align")
    return list(wanted)


def pool_masked(values: np.ndarray, mask: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(t, d)`` values and ``(t,)`` mask -> at most ``max_steps`` steps: unchanged when short enough, else the mean of
    the valid steps in each of ``max_steps`` equal segments (masked where a segment has none)."""
    if len(values) <= max_steps:
        return values, mask
    bounds = np.linspace(0, len(values), max_steps + 1).astype(np.int64)
    weights = mask.astype(np.float64)
    sums = np.add.reduceat(values.astype(np.float64) * weights[:, None], bounds[:-1], axis=0)
    counts = np.add.reduceat(weights, bounds[:-1])
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32), counts > 0


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list column as flat values, per-row offsets ``(rows + 1,)`` and validity ``(rows,)``."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    valid = ~np.asarray(lists.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return lists.flatten(), offsets - offsets[0], valid


def aligned_sequences(view: CacheView, table: str, index: dict[str, int], modalities: list[str], *, max_steps: int,
                      storage: Optional[str], blocksize: Optional[str] = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per modality of ``table``: float32 ``(n, max_steps, dim)`` steps and bool ``(n, max_steps)`` masks, rows as ``index``.

    Samples the set lacks (no transcript) keep zeros and all-false masks.

    Raises:
        ConfigError: a row whose values or mask disagree with its ``n_steps`` (a damaged table).
    """
    dims = description(view, table, "dims")
    logger.info("reading %s of the aligned set %s (at most %d steps a sample)", ", ".join(modalities), table, max_steps)
    features = {m: allocate(storage, f"aligned-{m}", (len(index), max_steps, int(dims[m]))) for m in modalities}
    masks = {m: allocate(storage, f"aligned-{m}-mask", (len(index), max_steps), np.bool_) for m in modalities}
    wanted = ["sample_id", "n_steps", *[c for m in modalities for c in (m, f"{m}_mask")]]
    for part in read_partitions(view, table, wanted, blocksize=blocksize):
        ids, n_steps = part.column("sample_id").to_pylist(), part.column("n_steps").to_numpy()
        positions = [index.get(sample_id) for sample_id in ids]
        for m in modalities:
            dim = int(dims[m])
            steps_values, offsets, valid = _flat(part.column(m))
            flat_steps = steps_values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
            mask_values, mask_offsets, _ = _flat(part.column(f"{m}_mask"))
            flat_mask = np.asarray(mask_values.to_numpy(zero_copy_only=False), dtype=bool)
            for row, position in enumerate(positions):
                if position is None or not valid[row]:
                    continue
                values = flat_steps[offsets[row] : offsets[row + 1]]
                mask = flat_mask[mask_offsets[row] : mask_offsets[row + 1]]
                if len(values) != n_steps[row] or len(mask) != n_steps[row]:
                    raise ConfigError(f"{view.cache}: {table} row {ids[row]} has {len(values)} {m} steps and {len(mask)} mask values "
                                      f"for {n_steps[row]} steps; the table is damaged, rerun mmfeat align")
                values, mask = pool_masked(values, mask, max_steps)
                features[m][position, : len(values)] = values * mask[:, None]
                masks[m][position, : len(mask)] = mask
    return features, masks
