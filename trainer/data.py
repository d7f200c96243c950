"""Reading the cache for training: one embedding matrix per modality, a presence mask, and label columns.

The trainer reads Parquet with pyarrow only (it never imports Beam). Samples
whose status is ``failed``, whose manifest row was invalid, or whose label is
missing are left out. A sample without a modality keeps a zero row for it and
``present`` False: missing modalities are masked, not dropped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow.dataset as ds

from schemas.errors import ConfigError
from schemas.tables import EMBEDDINGS_DIR, MODALITIES, STATUS_FAILED


@dataclass
class FeatureSet:
    """Aligned training data.

    Attributes:
        sample_ids: ``(n,)``.
        modalities: modality names, the column order of ``present``.
        features: per modality, float32 ``(n, dim)`` (zeros where absent).
        present: bool ``(n, n_modalities)``.
        labels: per label column, ``(n,)`` values (str, int or float).
    """

    sample_ids: list[str]
    modalities: list[str]
    features: dict[str, np.ndarray]
    present: np.ndarray
    labels: dict[str, np.ndarray]

    def subset(self, index: np.ndarray) -> "FeatureSet":
        return FeatureSet(
            sample_ids=[self.sample_ids[i] for i in index],
            modalities=self.modalities,
            features={m: f[index] for m, f in self.features.items()},
            present=self.present[index],
            labels={k: v[index] for k, v in self.labels.items()},
        )


def embedding_sets(cache: str, modality: str) -> list[str]:
    """Folder names of the embedding sets of ``modality`` in ``cache``."""
    folder = os.path.join(cache, EMBEDDINGS_DIR, modality)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _latest_sets(cache: str) -> dict[str, str]:
    """The embedding set of each modality that the latest run used (from ``_run.json``)."""
    path = os.path.join(cache, "_run.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        encoders = json.load(handle).get("encoders", {})
    return {modality: spec["table"].rsplit("/", 1)[-1] for modality, spec in encoders.items()}


def choose_set(cache: str, modality: str, wanted: Optional[str] = None) -> str:
    """The embedding set to train on: ``wanted`` (a set folder or encoder name prefix), the latest run's, or the only one.

    Raises:
        ConfigError: no set, an unknown ``wanted``, or several sets and no way to choose.
    """
    sets = embedding_sets(cache, modality)
    if not sets:
        raise ConfigError(f"{cache} has no {modality} embeddings; run mmfeat extract with a {modality} encoder")
    if wanted:
        matches = [s for s in sets if s == wanted or s.startswith(wanted.lower())]
        if len(matches) != 1:
            raise ConfigError(f"--encoder {modality}={wanted}: matches {matches or 'nothing'} among {sets}")
        return matches[0]
    latest = _latest_sets(cache).get(modality)
    if latest in sets:
        return latest
    if len(sets) == 1:
        return sets[0]
    raise ConfigError(f"{cache} has several {modality} embedding sets {sets}; choose one with --encoder {modality}=NAME")


def load_features(
    cache: str, *, labels: list[str], modalities: Optional[list[str]] = None, encoders: Optional[dict[str, str]] = None
) -> FeatureSet:
    """Join the chosen embedding sets and the label columns by ``sample_id``.

    Raises:
        ConfigError: a label column or a modality's embeddings are missing.
    """
    samples = ds.dataset(os.path.join(cache, "samples"), format="parquet").to_table()
    missing = [label for label in labels if label not in samples.column_names]
    if missing:
        raise ConfigError(f"--label {missing}: not a column of the samples table (columns: {samples.column_names})")
    rows = [
        r for r in samples.select(["sample_id", "status", "manifest_ok", *labels]).to_pylist()
        if r["manifest_ok"] and r["status"] != STATUS_FAILED and all(r[label] is not None for label in labels)
    ]
    ids = sorted({r["sample_id"] for r in rows})
    if not ids:
        raise ConfigError(f"{cache}: no usable sample has all of {labels}")
    by_id = {r["sample_id"]: r for r in rows}
    index = {sample_id: i for i, sample_id in enumerate(ids)}
    chosen = modalities or [m for m in MODALITIES if embedding_sets(cache, m)]
    features, present = {}, np.zeros((len(ids), len(chosen)), dtype=bool)
    for column, modality in enumerate(chosen):
        name = choose_set(cache, modality, (encoders or {}).get(modality))
        table = ds.dataset(os.path.join(cache, EMBEDDINGS_DIR, modality, name), format="parquet").to_table(columns=["sample_id", "vector"])
        dim = table.schema.field("vector").type.list_size
        matrix = np.zeros((len(ids), dim), dtype=np.float32)
        vectors = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        for row, sample_id in enumerate(table.column("sample_id").to_pylist()):
            if sample_id in index:
                matrix[index[sample_id]] = vectors[row]
                present[index[sample_id], column] = True
        features[modality] = matrix
    return FeatureSet(
        sample_ids=ids,
        modalities=chosen,
        features=features,
        present=present,
        labels={label: np.array([by_id[i][label] for i in ids]) for label in labels},
    )
