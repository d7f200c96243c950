"""Embedding as a Beam step: an ``Encoder`` behind a ``ModelHandler``, run by ``RunInference``.

Batching is done before ``RunInference`` and in the same way on every runner:
items are keyed by a bounded number of buckets, grouped with ``GroupByKey``,
sorted by size and cut into batches capped by ``max_batch_size`` items and a
size budget (tokens, frames or seconds, padded cost when the encoder pads);
``RunInference`` then runs on those batches with its own batching switched off
(``with_no_batching``). Beam's ``BatchElements`` flushes its last batch in
``finish_bundle``, which Beam 2.77's DaskRunner drops; this path emits
nothing there. Model loading (once per process), sharing and inference
metrics still come from ``RunInference``.

Items are dicts ``{"sample_id", "manifest_row", "payload"}`` (plus
``"window"`` for a windowed encoder's items: ``{"index", "count", "weight_s", ...}``);
results are ``(table, row)`` pairs: an embedding row, or an ``errors`` row
(stage ``embed``) for an item the model failed on; the rest of its batch is
kept. A windowed encoder's window results are grouped by sample and pooled
(``pool_window_rows``): one embedding row per sample (its windows' vectors as
its ``sequence`` when sequences are kept), or one ``errors`` row when any of
its windows failed.

The handler itself (``EncoderModelHandler``) is in ``transforms.embed_handler``
and is imported from here on first use: Beam's inference module imports torch,
and importing this module must not (a run with every encoder off never does).
"""
from __future__ import annotations

import functools
import logging
import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import apache_beam as beam
import numpy as np

from schemas.errors import ErrorKind, Stage
from transforms.encoders.base import Encoder

if TYPE_CHECKING:
    from transforms.embed_handler import EncoderModelHandler

logger = logging.getLogger(__name__)

Item = dict[str, Any]
TableRow = tuple[str, dict[str, Any]]


def __getattr__(name: str) -> Any:
    """``EncoderModelHandler`` and ``LoadedEncoder`` live in ``transforms.embed_handler``, imported on first use:
    Beam's ``apache_beam.ml.inference.base`` imports torch, which a run without encoders never needs."""
    if name in ("EncoderModelHandler", "LoadedEncoder"):
        from transforms import embed_handler

        return getattr(embed_handler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pool_window_rows(rows: Iterable[TableRow], *, encoder: Encoder) -> list[TableRow]:
    """The result rows of one sample's windows (from ``EncoderModelHandler``) as that sample's result: one row.

    The embedding row's ``vector`` is ``encoder.pool_windows`` of the windows' vectors, weighted by their
    ``weight_s``; with ``keep_sequences`` its ``sequence`` is the windows' vectors in order, ``(n_windows, dim)``.
    When a window failed (or one is missing), the sample gets one ``errors`` row instead, naming the first
    failed window. Rows without a ``window`` (items that were not cut) are returned as they are.
    """
    rows = list(rows)
    windowed = [(table, row) for table, row in rows if "window" in row]
    if not windowed:
        return rows
    passthrough = [(table, row) for table, row in rows if "window" not in row]
    failures = sorted((row for table, row in windowed if table == "errors"), key=lambda row: row["window"]["index"])
    done = sorted(((table, row) for table, row in windowed if table != "errors"), key=lambda pair: pair[1]["window"]["index"])
    count = windowed[0][1]["window"]["count"]
    if failures:
        first = failures[0]
        message = f"{len(failures)} of {count} audio windows failed; window {first['window']['index']}: {first['message']}"
        return [*passthrough, ("errors", {**_without_window(first), "message": message})]
    indices = [row["window"]["index"] for _, row in done]
    if indices != list(range(count)):
        first_row = done[0][1]
        return [*passthrough, ("errors", {
            "sample_id": first_row["sample_id"], "manifest_row": first_row["manifest_row"], "uri": None,
            "stage": Stage.EMBED, "error_kind": ErrorKind.ENCODER_FAILED,
            "message": f"{encoder.modality} encoder {encoder.name}: got windows {indices} of {count}",
        })]
    vectors = np.stack([row["vector"] for _, row in done]).astype(np.float32)
    weights = np.array([row["window"]["weight_s"] for _, row in done], np.float64)
    table, first_row = done[0]
    pooled = {**_without_window(first_row), "vector": encoder.pool_windows(vectors, weights)}
    pooled.pop("sequence", None)
    if encoder.keep_sequences:
        pooled["sequence"] = vectors
    return [*passthrough, (table, pooled)]


def _without_window(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "window"}


class _PoolWindowsFn(beam.DoFn):
    """``((manifest_row, sample_id), rows)`` -> the sample's pooled result (``pool_window_rows``)."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder

    def process(self, element: tuple[tuple[int, str], Iterable[TableRow]]) -> Iterator[TableRow]:
        _, rows = element
        for table, row in pool_window_rows(rows, encoder=self._encoder):
            if table != "errors":
                beam.metrics.Metrics.counter("mmfeat", f"embeddings_{self._encoder.modality}").inc()
            yield table, row


def batch_by_cost(items: Iterable[Item], *, cost: Callable[[Item], float], max_batch_size: int, budget: float,
                  padded: bool = False) -> Iterator[list[Item]]:
    """Cut ``items`` into batches, cheapest first: at most ``max_batch_size`` items and at most ``budget`` cost.

    With ``padded`` a batch costs ``len(batch) * max(cost)`` (what a padded tensor holds); otherwise the sum of
    costs. An item costlier than the budget forms a batch of its own. Each item's ``cost`` is computed once.
    """
    costed = sorted(((cost(item), item["sample_id"], index, item) for index, item in enumerate(items)), key=lambda entry: entry[:3])
    batch: list[Item] = []
    largest = total = 0.0
    for item_cost, _, _, item in costed:
        new_cost = (len(batch) + 1) * max(largest, item_cost) if padded else total + item_cost
        if batch and (len(batch) >= max_batch_size or new_cost > budget):
            yield batch
            batch, largest, total = [], 0.0, 0.0
        batch.append(item)
        largest, total = max(largest, item_cost), total + item_cost
    if batch:
        yield batch


def form_batches(items: Iterable[Item], *, encoder: Encoder, max_batch_size: int, budget: float) -> Iterator[list[Item]]:
    """``batch_by_cost`` of encoder items: their cost is ``encoder.cost`` of their payload (tokens, frames or
    seconds), padded when the encoder pads."""
    return batch_by_cost(items, cost=lambda item: encoder.cost(item["payload"]), max_batch_size=max_batch_size, budget=budget,
                         padded=encoder.padded)


class _FormBatchesFn(beam.DoFn):
    """A bucket's items -> their batches, cut by ``form`` (a picklable ``items -> batches`` function)."""

    def __init__(self, form: Callable[[Iterable[Item]], Iterator[list[Item]]]) -> None:
        self._form = form

    def process(self, element: tuple[int, Iterable[Item]]) -> Iterator[list[Item]]:
        _, items = element
        yield from self._form(items)


def batched_inference(items: beam.PCollection, handler: Any, form: Callable[[Iterable[Item]], Iterator[list[Item]]], *,
                      num_buckets: int) -> beam.PCollection:
    """``items`` -> ``handler``'s ``RunInference`` results: keyed by a bucket of their ``sample_id``, grouped, cut into
    batches by ``form``, then ``RunInference`` with its own batching off (see the module docstring). Shared by the
    encoders (``EmbedItems``) and the speech recogniser (``transforms.asr``)."""
    from apache_beam.ml.inference.base import RunInference  # imports torch: only once a graph runs a model

    buckets = max(1, num_buckets)
    return (
        items
        | "KeyByBucket" >> beam.Map(lambda item: (zlib.crc32(item["sample_id"].encode("utf-8")) % buckets, item))
        | "GroupByBucket" >> beam.GroupByKey()
        | "FormBatches" >> beam.ParDo(_FormBatchesFn(form))
        | "RunInference" >> RunInference(handler.with_no_batching())
    )


class EmbedItems(beam.PTransform):
    """``PCollection[Item]`` -> ``PCollection[(table, row)]`` through ``RunInference`` (see module docstring).

    Args:
        handler: the encoder's model handler.
        num_buckets: how many groups items are batched in (bounds the parallelism and the memory of one group).
    """

    def __init__(self, handler: "EncoderModelHandler", *, num_buckets: int) -> None:
        super().__init__()
        self._handler = handler
        self._num_buckets = num_buckets

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        handler = self._handler
        form = functools.partial(form_batches, encoder=handler.encoder, max_batch_size=handler.max_batch_size, budget=handler.budget)
        results = batched_inference(items, handler, form, num_buckets=self._num_buckets)
        if not self._handler.encoder.windowed:
            return results
        return (
            results
            | "KeyBySample" >> beam.Map(lambda pair: ((pair[1]["manifest_row"], pair[1]["sample_id"]), pair))
            | "GroupWindows" >> beam.GroupByKey()
            | "PoolWindows" >> beam.ParDo(_PoolWindowsFn(self._handler.encoder))
        )
