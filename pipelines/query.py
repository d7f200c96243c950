"""A search query embedded the way a cache embedded its samples.

A query (a text, or a media file) becomes a one-row corpus that goes through
the extraction pipeline itself with the feature config, tokenizer and encoder
the cache's run recorded for the embedding set, into a scratch cache; its
vector is read back and its encoder fingerprint checked against the set's. So
a query is decoded, sampled, tokenised and embedded exactly as a sample of
the cache was, and an encoder that changed since (new weights at the same
path) is an error, not a silently incomparable vector.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Iterator, Optional

import numpy as np

from schemas.cache import CacheView, runs
from schemas.config import EncodeConfig, ExtractConfig
from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

QUERY_ID = "query"


def _encoder_records(cache: str) -> Iterator[dict[str, Any]]:
    """Every run's record of each encoder it ran (``name``, ``fingerprint``, ``dim``, ``table``, ``source``, ``modality``)
    with that run's feature ``config``, newest run first."""
    for run in reversed(runs(cache)):
        for modality, spec in run.summary.get("encoders", {}).items():
            yield {**spec, "modality": modality, "config": run.summary.get("config", {})}


def recorded_encoder(cache: str, table: str) -> dict[str, Any]:
    """The newest run's record of the encoder that wrote ``table`` (see ``_encoder_records``).

    Raises:
        ConfigError: no run of ``cache`` embedded into ``table``.
    """
    record = next((r for r in _encoder_records(cache) if r.get("table") == table), None)
    if record is None:
        raise ConfigError(f"{cache}: no run wrote {table}; mmfeat status lists the runs and their encoders")
    return record


def embed_query(cache: str, table: str, *, modality: str, text: Optional[str] = None, file: Optional[str] = None,
                encoder: Optional[str] = None, device: str = "cpu") -> np.ndarray:
    """The ``modality`` vector of a query, float32 ``(dim,)``, from the encoder recorded for ``table`` (a set of that
    modality) or, for a query of another modality than the set's, the newest run's encoder of ``modality``.

    Args:
        text: the query as text (``modality`` ``text``).
        file: a media or text file, extracted as a manifest row's ``modality`` column.
        encoder: an encoder value (a built-in name or a path) instead of the recorded one (caches written before
            runs recorded it need this).

    Raises:
        ConfigError: neither or both of ``text``/``file``, a missing file, an unknown encoder, a query the
            extraction could not decode (its error message says why), or an encoder whose fingerprint is not the
            recorded one.
    """
    if (text is None) == (file is None):
        raise ConfigError("give the query as text or as a file (one of them)")
    if file is not None and not os.path.isfile(file):
        raise ConfigError(f"--file {file}: no such file")
    record = recorded_encoder(cache, table) if _modality_of(table) == modality else _newest_encoder(cache, modality)
    source = encoder or record.get("source")
    if not source:
        raise ConfigError(f"{cache}: its runs predate recording encoder sources; name the {modality} encoder the cache used "
                          f"({record['name']}) with --query-encoder")
    from pipelines.extract import run_extract
    from pipelines.manifest import open_manifest
    from transforms.encoders.registry import FLAGS, resolve_encoder
    from transforms.text import resolve_tokenizer_path

    config = ExtractConfig.from_dict({**record["config"], "num_shards": 1})
    keeps_sequences = "sequence" in CacheView.open(cache).dataset(record["table"]).schema.names  # part of the fingerprint
    encode = EncodeConfig(**{_ENCODE_FIELD[m]: (source if m == modality else "none") for m in FLAGS}, device=device,
                          sequences=(modality,) if keeps_sequences else ())
    resolved = resolve_encoder(modality, source, encode=encode, extract=config)
    with tempfile.TemporaryDirectory(prefix="mmfeat-query-") as scratch:
        if text is not None:
            file = os.path.join(scratch, "query.txt")
            with open(file, "w", encoding="utf-8") as handle:
                handle.write(text)
        manifest = os.path.join(scratch, "query.jsonl")
        with open(manifest, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": QUERY_ID, modality: os.path.abspath(file)}) + "\n")
        output = os.path.join(scratch, "cache")
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        report = run_extract(open_manifest(manifest), output=output, config=config,
                             tokenizer_path=resolve_tokenizer_path(record["config"].get("tokenizer")), runner=FnApiRunner(),
                             encoders={modality: resolved}, encode=encode, device=device, spread_over=1)
        return _query_vector(output, report.summary, modality, record)


_ENCODE_FIELD = {"text": "text_encoder", "video": "image_encoder", "audio": "audio_encoder"}


def _modality_of(table: str) -> str:
    return table.split("/")[1] if table.startswith("embeddings/") else ""


def _newest_encoder(cache: str, modality: str) -> dict[str, Any]:
    """The newest run's record of a ``modality`` encoder whose set the cache still holds."""
    view = CacheView.open(cache)
    record = next((r for r in _encoder_records(cache) if r["modality"] == modality and view.has(r["table"])), None)
    if record is None:
        raise ConfigError(f"{cache} has no {modality} embeddings to encode a {modality} query with")
    return record


def _query_vector(output: str, summary: dict[str, Any], modality: str, record: dict[str, Any]) -> np.ndarray:
    view = CacheView.open(output)
    errors = view.read("errors", ["stage", "message"]).to_pylist()
    table = summary["encoders"][modality]["table"]
    rows = view.read(table, ["vector"]).column("vector").to_pylist() if view.has(table) else []
    if not rows:
        reasons = "; ".join(f"{e['stage']}: {e['message']}" for e in errors) or "no vector came out"
        raise ConfigError(f"the query could not be embedded ({reasons})")
    fingerprint = summary["encoders"][modality]["fingerprint"]
    if fingerprint != record["fingerprint"]:
        raise ConfigError(f"the {modality} encoder {record.get('source') or record['name']} is not the one the cache used "
                          f"(fingerprint {fingerprint}, the cache's {record['fingerprint']}): its weights or preprocessing changed")
    return np.asarray(rows[0], dtype=np.float32)
