"""``mmfeat align``: an aligned embedding set from a committed cache (words, segments or fixed steps).

A batch step over what ``mmfeat extract --transcribe`` committed, not part of extraction: it needs the
committed ``words``/``segments`` and embedding sets, runs without Beam, media or models (plain pyarrow + numpy)
and can be run again on another ``--on`` without extracting anything again.

For each sample with words, one time axis is chosen: the clock of the stream its words were transcribed from
(``source``: the audio file's when it has words, else the video's sound track); a sample's audio file and video
are taken to start together (as in MOSI-like corpora), so frame times are read on that clock. On it, each step
holds (``transforms.align``):

- ``audio``: the mean of the MFCC frames of that same source (``audio`` table) whose centre lies in the step;
- ``video``: the mean of the per-frame vectors of a ``--sequences video`` embedding set, each at its frame's
  ``timestamp_s`` (``frames`` table);
- ``text``: the mean of the per-token vectors of a ``--sequences text`` embedding set over the tokens of the
  step's word(s). The cache has no per-word text vectors and no token times, but it has the text the encoder read
  (``text.text``; the encoder read the prefix of it that its kept tokens hold) and the encoder's per-token hidden
  states of it: the encoder's tokenizer is run again over that text (offsets only, milliseconds), each word is
  found in the text in order, and the tokens overlapping it are its tokens. These are contextual vectors of
  exactly the words spoken, which is what MMSA's aligned text holds (one vector per word). Static token embeddings
  are not in the cache, and masking text outright would throw away the one per-token signal it holds. A word not
  found in the text (a text file that is not the transcript) or whose tokens were cut by the encoder's truncation
  is masked. Fixed and segment steps take the words whose midpoint lies in them. Without a text sequence set,
  text is masked (null) for every sample.

Memory is bounded: each table is read once, and a cache larger than a budget is first spilled into buckets of
samples (``pipelines.align_buckets``), aligned one bucket at a time.
The set is committed as one run (kind ``align``) through ``schemas.cache.commit_run``; a new run of the same
alignment from the same sets replaces the set's every earlier file in the same commit.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.cache import (
    CacheView, DataFile, RunCommit, RunInfo, commit_run, discard_attempt, file_rows, new_attempt, write_data_file,
)
from pipelines.align_buckets import DEFAULT_BUDGET_BYTES, Reader, bucket_readers
from schemas.errors import ConfigError
from schemas.tables import ALIGNED, ALIGNED_DIR, ALIGNED_MODALITIES
from transforms.align import AlignOn, align_sample, fixed_intervals, locate_words, parse_on, word_token_vectors

logger = logging.getLogger(__name__)

SOURCE_ORDER = ("audio", "video")
"""Which transcribed stream gives a sample its time axis when both have words."""


@dataclass(frozen=True)
class AlignSources:
    """The sets an alignment reads: the video and text sequence sets (``None``: that modality is masked) and the tokenizer."""

    video_set: Optional[str]
    text_set: Optional[str]
    tokenizer: Optional[str]

    def fingerprint(self, on: AlignOn) -> str:
        """Hash of what the aligned set is made from (names the table): the steps, the sets (their names hold their
        encoders' fingerprints) and the tokenizer's content (not its path, which differs between machines)."""
        tokenizer = None
        if self.tokenizer:
            with open(self.tokenizer, "rb") as handle:
                tokenizer = hashlib.sha256(handle.read()).hexdigest()
        key = json.dumps({"on": on.label, "video": self.video_set, "text": self.text_set, "tokenizer": tokenizer}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()


def aligned_table_name(on: AlignOn, sources: AlignSources) -> str:
    """``aligned/<on>-<fingerprint>``, e.g. ``aligned/words-1a2b3c4d5e6f``."""
    return f"{ALIGNED_DIR}/{on.slug}-{sources.fingerprint(on)[:12]}"


def _sequence_set(view: CacheView, modality: str, chosen: Optional[str]) -> Optional[str]:
    """The ``--sequences`` embedding set of ``modality`` to align (``chosen``, or the only one), ``None`` if there is none."""
    with_sequences = [t for t in view.embedding_tables(modality) if "sequence" in view.table(t).schema().to_arrow().names]
    if chosen:
        name = chosen if "/" in chosen else f"embeddings/{modality}/{chosen}"
        if name not in with_sequences:
            raise ConfigError(f"--{modality}-set {chosen}: not a {modality} embedding set with sequences in {view.cache} "
                              f"(those: {', '.join(with_sequences) or 'none: extract with --sequences ' + modality})")
        return name
    if len(with_sequences) > 1:
        raise ConfigError(f"{view.cache} has several {modality} sets with sequences ({', '.join(with_sequences)}); "
                          f"name one with --{modality}-set")
    if not with_sequences:
        logger.warning("%s has no %s embedding set with sequences (extract --sequences %s): %s is masked in every step",
                       view.cache, modality, modality, modality)
        return None
    return with_sequences[0]


def _tokenizer_for(view: CacheView, text_set: Optional[str], tokenizer: Optional[str]) -> Optional[str]:
    """The ``tokenizer.json`` of the text set's encoder: ``tokenizer``, the encoder's folder's, or MiniLM's for the default encoder."""
    if text_set is None:
        return None
    if tokenizer:
        path = os.path.join(tokenizer, "tokenizer.json") if os.path.isdir(tokenizer) else tokenizer
        if not os.path.isfile(path):
            raise ConfigError(f"--tokenizer: no tokenizer.json at {tokenizer}")
        return path
    encoder = view.description(text_set).get("encoder", "")
    if os.path.isfile(os.path.join(encoder, "tokenizer.json")):
        return os.path.join(encoder, "tokenizer.json")
    if encoder == "all-MiniLM-L6-v2":
        from transforms.text import default_tokenizer_path

        return default_tokenizer_path()
    raise ConfigError(f"{text_set}: cannot tell the tokenizer of encoder {encoder!r}; pass --tokenizer (its tokenizer.json)")


def _by_id(table: Optional[pa.Table]) -> dict[str, pa.Table]:
    """Rows of ``table`` grouped by ``sample_id``."""
    if table is None or table.num_rows == 0:
        return {}
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    groups: dict[str, list[int]] = {}
    for row, sample_id in enumerate(ids):
        groups.setdefault(sample_id, []).append(row)
    return {sample_id: table.take(pa.array(rows)) for sample_id, rows in groups.items()}


def table_columns(sources: AlignSources, on: AlignOn) -> dict[str, list[str]]:
    """The columns alignment reads, by table (``sample_id`` first in each)."""
    needs = {"words": ["sample_id", "source", "word_index", "word", "start_s", "end_s"],
             "audio": ["sample_id", "source", "window_index", "frame_times_s", "mfcc"],
             "samples": ["sample_id", "audio_duration_s", "video_duration_s"]}
    if on.kind == "segments":
        needs["segments"] = ["sample_id", "source", "segment_index", "start_s", "end_s", "text"]
    if sources.video_set:
        needs |= {"frames": ["sample_id", "frame_index", "timestamp_s"], sources.video_set: ["sample_id", "sequence"]}
    if sources.text_set:
        needs |= {"text": ["sample_id", "text"], sources.text_set: ["sample_id", "sequence"]}
    return needs


class _Group:
    """The rows of one bucket of samples in every table the alignment uses, by sample id."""

    def __init__(self, read: Reader, needs: dict[str, list[str]], sources: AlignSources) -> None:
        rows = {table: _by_id(read(table, columns)) for table, columns in needs.items()}
        self.ids = sorted(rows["words"])
        self.words, self.audio = rows["words"], rows["audio"]
        self.segments = rows.get("segments", {})
        self.frames, self.video = rows.get("frames", {}), rows.get(sources.video_set, {}) if sources.video_set else {}
        self.text, self.text_seq = rows.get("text", {}), rows.get(sources.text_set, {}) if sources.text_set else {}
        self.durations = {sample_id: _duration(sample.slice(0, 1).to_pylist()[0]) for sample_id, sample in rows["samples"].items()}


def _duration(sample: dict[str, Any]) -> float:
    """The longer of a ``samples`` row's audio and video durations, seconds (0 when neither is known)."""
    return max((sample[c] for c in ("audio_duration_s", "video_duration_s") if sample[c] is not None), default=0.0)


def _of_source(rows: Optional[pa.Table], source: str, order: str) -> Optional[pa.Table]:
    if rows is None:
        return None
    kept = rows.filter(pc.equal(rows.column("source"), source))
    return kept.sort_by(order) if kept.num_rows else None


def _steps(on: AlignOn, words: pa.Table, segments: Optional[pa.Table], duration_s: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Step starts, ends ``(steps,)`` seconds and labels of one sample."""
    if on.kind == "words":
        return (np.asarray(words.column("start_s").to_pylist(), dtype=np.float64),
                np.asarray(words.column("end_s").to_pylist(), dtype=np.float64), words.column("word").to_pylist())
    if on.kind == "segments":
        if segments is None:
            return np.zeros(0), np.zeros(0), []
        return (np.asarray(segments.column("start_s").to_pylist(), dtype=np.float64),
                np.asarray(segments.column("end_s").to_pylist(), dtype=np.float64), segments.column("text").to_pylist())
    starts, ends = fixed_intervals(duration_s, on.step_s)
    return starts, ends, [""] * len(starts)


def _mfcc_points(audio: Optional[pa.Table]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Frame times ``(n,)`` s and MFCCs ``(n, n_mfcc)`` of one source's windows, or ``None``."""
    if audio is None:
        return None
    times = audio.column("frame_times_s").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    values = audio.column("mfcc").combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return (times, values.reshape(len(times), -1)) if len(times) else None


def _video_points(frames: Optional[pa.Table], video: Optional[pa.Table], sample_id: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Frame times ``(n,)`` s and per-frame vectors ``(n, dim)``, or ``None``."""
    if frames is None or video is None:
        return None
    sequence = np.asarray(video.column("sequence")[0].as_py(), dtype=np.float32)
    times = np.asarray(frames.sort_by("frame_index").column("timestamp_s").to_pylist(), dtype=np.float64)
    if sequence.ndim != 2 or len(sequence) == 0:
        return None
    if len(sequence) != len(times):
        logger.warning("%s: %d frames but %d per-frame vectors; aligning the first %d", sample_id, len(times), len(sequence),
                       min(len(times), len(sequence)))
    n = min(len(times), len(sequence))
    return (times[:n], sequence[:n]) if n else None


class _TextAligner:
    """Each word's vector from the text encoder's per-token vectors (see module docstring)."""

    def __init__(self, tokenizer_path: Optional[str]) -> None:
        self.tokenizer = None
        if tokenizer_path:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(tokenizer_path)
            self.tokenizer.no_padding()
            self.tokenizer.no_truncation()

    def words(self, text: Optional[pa.Table], sequence: Optional[pa.Table], words: list[str]) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Word vectors ``(n_words, dim)`` and mask ``(n_words,)``, or ``None`` without text or sequence."""
        if self.tokenizer is None or text is None or sequence is None:
            return None
        body = text.column("text")[0].as_py()
        steps = np.asarray(sequence.column("sequence")[0].as_py(), dtype=np.float32)
        if steps.ndim != 2 or not len(steps):
            return None
        encoding = self.tokenizer.encode(body)
        return word_token_vectors(locate_words(body, words), encoding.offsets, encoding.special_tokens_mask, steps)


def _column(values: Optional[np.ndarray], mask: np.ndarray) -> tuple[Optional[list[list[float]]], list[bool]]:
    """A modality's ``(steps, dim)`` values and ``(steps,)`` mask as stored: values null when no step has data."""
    if values is None or not mask.any():
        return None, [False] * len(mask)
    return values.tolist(), mask.tolist()


def _align_group(group: _Group, ids: list[str], on: AlignOn, text: _TextAligner) -> list[dict[str, Any]]:
    rows = []
    for sample_id in ids:
        all_words = group.words.get(sample_id)
        if all_words is None:
            continue
        source = next((s for s in SOURCE_ORDER if pc.any(pc.equal(all_words.column("source"), s)).as_py()), None)
        if source is None:
            logger.warning("%s: words of an unknown source %s; not aligned", sample_id, set(all_words.column("source").to_pylist()))
            continue
        words = _of_source(all_words, source, "word_index")
        mfcc = _mfcc_points(_of_source(group.audio.get(sample_id), source, "window_index"))
        duration = max([group.durations.get(sample_id, 0.0), float(pc.max(words.column("end_s")).as_py())]
                       + ([float(mfcc[0].max())] if mfcc is not None and len(mfcc[0]) else []))
        starts, ends, labels = _steps(on, words, _of_source(group.segments.get(sample_id), source, "segment_index"), duration)
        if not len(starts):
            continue
        word_times = (np.asarray(words.column("start_s").to_pylist(), dtype=np.float64),
                      np.asarray(words.column("end_s").to_pylist(), dtype=np.float64))
        aligned = align_sample(on, starts, ends, mfcc=mfcc,
                               video=_video_points(group.frames.get(sample_id), group.video.get(sample_id), sample_id),
                               word_times=word_times,
                               word_vectors=text.words(group.text.get(sample_id), group.text_seq.get(sample_id),
                                                       words.column("word").to_pylist()))
        columns: dict[str, Any] = {}
        for modality, (values, mask) in aligned.items():
            columns[modality], columns[f"{modality}_mask"] = _column(values, mask)
        rows.append({"sample_id": sample_id, "source": source, "aligned_on": on.label, "n_steps": len(starts),
                     "start_s": starts.tolist(), "end_s": ends.tolist(), "label": labels, **columns})
    return rows


def _widths(rows: list[dict[str, Any]], widths: dict[str, Optional[int]]) -> None:
    for row in rows:
        for modality in ALIGNED_MODALITIES:
            if row[modality] is not None and widths.get(modality) is None:
                widths[modality] = len(row[modality][0])


def align_cache(cache: str, on: str, *, video_set: Optional[str] = None, text_set: Optional[str] = None,
                tokenizer: Optional[str] = None, group_size: int = 256, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                run_id: Optional[str] = None) -> tuple[str, RunInfo]:
    """Write the aligned set of ``cache`` on ``on`` (``words``, ``segments``, ``fixed:SECONDS``); returns its table and the run.

    The tables are read in buckets of about ``budget_bytes`` stored bytes (``pipelines.align_buckets``); each
    data file written holds at most ``group_size`` samples.

    Raises:
        ConfigError: a bad ``on``, a cache without ``words`` (or ``segments`` for ``on`` segments), an unknown or
            ambiguous set, no sample with steps.
    """
    parsed = parse_on(on)
    if group_size < 1:
        raise ConfigError(f"group size {group_size}: must be at least 1")
    view = CacheView.open(cache)
    if view.run is None:
        raise ConfigError(f"{cache}: no run committed; run mmfeat extract --transcribe first")
    for needed in ("words", *(["segments"] if parsed.kind == "segments" else [])):
        if not view.has(needed):
            raise ConfigError(f"{cache} has no {needed} table: run mmfeat extract --transcribe on it first "
                              "(alignment needs the word times of a transcript)")
    video = _sequence_set(view, "video", video_set)
    text_name = _sequence_set(view, "text", text_set)
    sources = AlignSources(video, text_name, _tokenizer_for(view, text_name, tokenizer))
    table = aligned_table_name(parsed, sources)
    run_id = run_id or f"align-{parsed.slug}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    attempt = new_attempt(run_id)
    started = time.monotonic()
    text = _TextAligner(sources.tokenizer)
    files: list[DataFile] = []
    widths: dict[str, Optional[int]] = {m: None for m in ALIGNED_MODALITIES}
    counts = {"samples": 0, "steps": 0, **{f"{m}_steps": 0 for m in ALIGNED_MODALITIES}}
    needs = table_columns(sources, parsed)
    n_transcribed = len(pc.unique(view.read("words", columns=["sample_id"]).column("sample_id")))
    try:
        for bucket, read in enumerate(bucket_readers(view, needs, budget_bytes=budget_bytes, max_buckets=n_transcribed)):
            group = _Group(read, needs, sources)
            for first in range(0, len(group.ids), group_size):
                chunk = group.ids[first:first + group_size]
                rows = _align_group(group, chunk, parsed, text)
                if not rows:
                    continue
                _widths(rows, widths)
                counts["samples"] += len(rows)
                counts["steps"] += sum(r["n_steps"] for r in rows)
                for modality in ALIGNED_MODALITIES:
                    counts[f"{modality}_steps"] += sum(sum(r[f"{modality}_mask"]) for r in rows)
                name = f"{attempt}-part-{bucket:05d}-{first // group_size:05d}.parquet"
                files.append(write_data_file(cache, table, name, pa.Table.from_pylist(rows, schema=ALIGNED)))
    except BaseException:
        logger.error("align %s failed: nothing was committed (%d files of it removed)", run_id, discard_attempt(cache, attempt, [table]))
        raise
    if not files:
        raise ConfigError(f"{cache}: no sample has {parsed.label} steps to align (words in {n_transcribed} samples)")
    description = {"aligned_on": parsed.label, "sources": {"audio": "audio", "video": video, "text": text_name, "times": "words"},
                   "tokenizer": sources.tokenizer, "dims": widths, "fingerprint": table.rsplit("-", 1)[1]}
    earlier = {row["path"] for row in file_rows(view.table(table))} if view.has(table) else set()
    summary = {"aligned_table": table, **description, "counts": counts, "align_s": round(time.monotonic() - started, 3)}
    info = commit_run(cache, RunCommit(run_id=run_id, attempt=attempt, kind="align", files=files, schemas={table: ALIGNED},
                                       descriptions={table: description}, dropped_files={table: earlier} if earlier else {},
                                       summary=summary))
    logger.info("aligned %d samples (%d steps) of %s on %s into %s", counts["samples"], counts["steps"], cache, parsed.label, table)
    return table, info
