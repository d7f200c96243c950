"""``mmfeat predict`` as library functions: a saved model and a cache (labelled or not) in, one row of predictions per sample out.

The rows are the samples the trainer would read (valid manifest row, not failed), labelled or not; a sample without any
modality still gets a row (its ``modalities_present`` is empty). Columns (see ``predictions_schema``):

* ``sample_id`` (string) and ``modalities_present`` (list<string>, in the model's modality order);
* per task ``<label>``: the prediction in the label's own type (a class such as ``"positive"``, or a float32 score);
* per classification task also ``<label>_probability`` (float32, the predicted class's probability) and
  ``<label>_probabilities`` (list<float32>, one per class, in the order of the classes the schema metadata records
  under ``mmfeat.classes``, a JSON object label -> classes).

The kind of checkpoint decides how it predicts: ``model.json``'s ``task`` (absent for the fusion heads ``mmfeat train``
writes); ``PREDICTORS`` maps each kind to its function, the one place a new kind (``generate``) is added.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.cache.layout import filesystem
from schemas.errors import ConfigError
from trainer.checkpoint import CONFIG, WEIGHTS
from trainer.evaluation import Predictions, predict_with_probabilities
from trainer.feature_set import FeatureSet
from trainer.run import checkpoint_features
from trainer.tasks import Task

logger = logging.getLogger(__name__)

FUSION = "fusion"
"""The kind of the checkpoints ``mmfeat train`` writes (``model.json`` without ``task``)."""
CLASSES_KEY = b"mmfeat.classes"
SOURCE_KEY = b"mmfeat.source"


def checkpoint_kind(model_dir: str) -> str:
    """The kind of the checkpoint in ``model_dir``: ``model.json``'s ``task``, ``fusion`` when it has none.

    Raises:
        ConfigError: no such folder, or no readable ``model.json`` in it.
    """
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"--model {model_dir}: no such folder; give the --output folder of mmfeat train")
    if not os.path.isfile(path):
        raise ConfigError(f"--model {model_dir}: no {CONFIG} in it; give the --output folder of mmfeat train")
    try:
        with open(path, encoding="utf-8") as handle:
            description = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--model {model_dir}: {CONFIG} is not readable JSON ({error})") from error
    if not isinstance(description, dict):
        raise ConfigError(f"--model {model_dir}: {CONFIG} does not describe a model")
    return str(description.get("task", FUSION))


def predict_checkpoint(model_dir: str, cache: str, *, as_of: Optional[str] = None, encoders: Optional[dict[str, str]] = None,
                       reader: str = "auto", scratch: Optional[str] = None) -> pa.Table:
    """Predictions of the model saved in ``model_dir`` on every usable sample of ``cache`` (as run ``as_of`` left it).

    Features are read as ``trainer.run.checkpoint_features`` reads them (the embedding sets the model was trained on when the
    cache has them; ``encoders`` overrides; ``reader`` memory/disk/auto, memory maps under ``scratch``). Labels are not needed.

    Returns:
        One row per sample, sorted by ``sample_id``, with the schema ``predictions_schema`` gives.

    Raises:
        ConfigError: no model in ``model_dir``, a kind of checkpoint this version cannot predict with, features of other
            sizes than the model's inputs, or a cache without usable samples.
    """
    kind = checkpoint_kind(model_dir)
    predictor = PREDICTORS.get(kind)
    if predictor is None:
        raise ConfigError(f"--model {model_dir}: a {kind!r} checkpoint; mmfeat predict handles {', '.join(sorted(PREDICTORS))} "
                          "checkpoints")
    return predictor(model_dir, cache, as_of=as_of, encoders=encoders, reader=reader, scratch=scratch)


def _predict_fusion(model_dir: str, cache: str, *, as_of: Optional[str], encoders: Optional[dict[str, str]], reader: str,
                    scratch: Optional[str]) -> pa.Table:
    """``predict_checkpoint`` for the fusion heads of ``mmfeat train`` (any fusion, vectors or sequences, one or more tasks)."""
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS)):
        raise ConfigError(f"--model {model_dir}: no {WEIGHTS} beside {CONFIG}; give the --output folder of a finished mmfeat train")
    with checkpoint_features(model_dir, cache, labels=[], as_of=as_of, encoders=encoders, reader=reader,
                             scratch=scratch) as (fitted, data):
        logger.info("predicting %s on %d samples of %s", [t.label for t in fitted.tasks], len(data), data.source.get("cache"))
        predictions = predict_with_probabilities(fitted, data)
        return predictions_table(fitted.tasks, data, predictions, model_dir=model_dir)


def _predict_generate(model_dir: str, cache: str, *, as_of: Optional[str], encoders: Optional[dict[str, str]], reader: str,
                      scratch: Optional[str]) -> pa.Table:
    """``predict_checkpoint`` for caption heads (``mmfeat train --task generate``): ``text`` and its ``score`` (mean
    log-probability per token) by beam search (4 beams), in memory (``reader``/``scratch`` do not apply)."""
    from trainer.generate_run import caption_records, checkpoint_data

    fitted, data, tokenizer, _ = checkpoint_data(model_dir, cache, as_of=as_of, encoders=encoders)
    records = caption_records(fitted, data, tokenizer)
    schema = pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("modalities_present", pa.list_(pa.string()), nullable=False),
                        pa.field("text", pa.string()), pa.field("score", pa.float32())],
                       metadata={SOURCE_KEY: _source_metadata(model_dir, data)})
    return pa.table({"sample_id": data.sample_ids, "modalities_present": _modalities_present(data),
                     "text": [r["text"] for r in records], "score": [r["score"] for r in records]}, schema=schema)


def _source_metadata(model_dir: Optional[str], data: FeatureSet) -> bytes:
    """What predictions came from, for the file's schema metadata: the model folder and the cache state read."""
    return json.dumps({"model": model_dir, **{k: data.source.get(k) for k in ("cache", "run_id", "samples_version")}}).encode()


def _modalities_present(data: FeatureSet) -> list[list[str]]:
    names = np.asarray(data.modalities, dtype=object)
    return [names[row].tolist() for row in np.asarray(data.present, dtype=bool)]


PREDICTORS: dict[str, Callable[..., pa.Table]] = {FUSION: _predict_fusion, "generate": _predict_generate}
"""Checkpoint kind -> ``predict_checkpoint`` for it (same keyword arguments)."""


def _label_type(task: Task) -> pa.DataType:
    """The arrow type of ``task``'s predictions: the classes' own type (string, int64, bool), or float32 scores."""
    if task.kind != "classification":
        return pa.float32()
    kind = pa.array(task.classes).type
    return pa.string() if pa.types.is_null(kind) else kind


def predictions_schema(tasks: list[Task], metadata: Optional[dict[bytes, bytes]] = None) -> pa.Schema:
    """``sample_id``, ``modalities_present`` and per task ``<label>`` (+ ``_probability``, ``_probabilities`` for classification).

    Raises:
        ConfigError: two columns would have the same name (a label named like another's probability column).
    """
    fields = [pa.field("sample_id", pa.string(), nullable=False), pa.field("modalities_present", pa.list_(pa.string()), nullable=False)]
    for task in tasks:
        fields.append(pa.field(task.label, _label_type(task)))
        if task.kind == "classification":
            fields.append(pa.field(f"{task.label}_probability", pa.float32()))
            fields.append(pa.field(f"{task.label}_probabilities", pa.list_(pa.float32()),
                                   metadata={b"classes": json.dumps(task.classes).encode()}))
    names = [f.name for f in fields]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"the predictions would have several columns named {repeated}; rename the label columns and retrain")
    return pa.schema(fields, metadata=metadata)


def predictions_table(tasks: list[Task], data: FeatureSet, predictions: Predictions, *, model_dir: Optional[str] = None) -> pa.Table:
    """The predictions of ``tasks`` on the rows of ``data`` as an arrow table (see the module docstring for its columns)."""
    classes = {t.label: t.classes for t in tasks if t.kind == "classification"}
    schema = predictions_schema(tasks, {CLASSES_KEY: json.dumps(classes).encode(), SOURCE_KEY: _source_metadata(model_dir, data)})
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array(data.sample_ids, pa.string()),
        "modalities_present": pa.array(_modalities_present(data), pa.list_(pa.string())),
    }
    for task in tasks:
        values = predictions.values[task.label]
        if task.kind != "classification":
            columns[task.label] = pa.array(values.astype(np.float32), pa.float32())
            continue
        probabilities = predictions.probabilities[task.label].astype(np.float32)
        columns[task.label] = pa.array([task.classes[i] for i in values.tolist()], schema.field(task.label).type)
        columns[f"{task.label}_probability"] = pa.array(probabilities[np.arange(len(values)), values], pa.float32())
        offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * probabilities.shape[1])
        columns[f"{task.label}_probabilities"] = pa.ListArray.from_arrays(offsets, pa.array(probabilities.ravel(), pa.float32()))
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def write_predictions(table: pa.Table, output: str) -> None:
    """Write ``table`` as one Parquet file at ``output`` (a local path or a URI the cache layer reaches: ``gs://``, ``s3://``)."""
    fs, path = filesystem(output)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    pq.write_table(table, path, filesystem=fs)


def class_counts(table: pa.Table, label: str) -> dict[Any, int]:
    """How many rows predict each class of ``label`` (in order of the classes recorded in the metadata)."""
    classes = json.loads((table.schema.metadata or {}).get(CLASSES_KEY, b"{}")).get(label, [])
    values = table.column(label).to_pylist()
    return {c: values.count(c) for c in classes}
