"""Speech recognition as a Beam step, and the rows a transcript becomes.

Where it sits in the extraction (``pipelines.extract_graph``)::

    ExtractSampleFn -> "_encode/speech" items (one per sound track: 16 kHz samples)
        -> TranscribeItems (buckets, GroupByKey, batches, RunInference(WhisperModelHandler))
        -> TranscriptRowsFn -> words, segments          -> written
                            -> text row (+ "_encode/text" item) -> written (+ the text encoder's RunInference)
                            -> "_speech_text" marker, asr errors -> the per-sample finalize (samples row)

Why after the extraction and not inside it: the model runs under
``RunInference`` like every other model (loaded once per worker, batched,
metrics), and the decode that feeds the MFCCs also feeds the recogniser
(no second decode). The price is ordering: a sample whose text must come
from its transcript only gets it here, so this DoFn tokenises the
transcript itself (the same ``TextTokenizer`` and ``max_tokens`` as text
files), writes its ``text`` row, and hands the text encoder an item that
joins the extraction's own text items before the text ``RunInference``; the
``_speech_text`` marker then sets ``n_tokens`` and ``text_source`` on the
sample's ``samples`` row when the finalize step groups the sample's rows.

Batching is the encoders' (``transforms.embed.batched_inference``: keyed buckets,
``GroupByKey``, batches cut by cost, ``RunInference`` with its own batching off): Beam's
``BatchElements`` flushes in ``finish_bundle``, which the DaskRunner drops.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import apache_beam as beam

from schemas.config import ASR_SAMPLE_RATE
from schemas.tables import TEXT_SOURCE_ASR
from transforms.embed import batched_inference, batch_by_cost
from transforms.sample_state import encode_table
from transforms.text import TextTokenizer

if TYPE_CHECKING:
    from transforms.asr_handler import WhisperModelHandler

Item = dict[str, Any]
TableRow = tuple[str, dict[str, Any]]

SPEECH_ITEMS = encode_table("speech")
"""Pseudo-table of the extraction's speech items (not written: ``_encode/`` items go to a model)."""
SPEECH_TEXT = "_speech_text"
"""Pseudo-table of the marker that a sample's text came from its transcript: ``{sample_id, manifest_row,
n_tokens}``; the finalize step moves it onto the ``samples`` row and drops it."""


def speech_seconds(item: Item) -> float:
    """A speech item's length in seconds (its ``audio`` is at ``ASR_SAMPLE_RATE``): its cost in a batch."""
    return len(item["audio"]) / ASR_SAMPLE_RATE


def form_speech_batches(items: Iterable[Item], *, max_batch_size: int, max_batch_s: float) -> Iterator[list[Item]]:
    """Cut ``items`` into batches, shortest first: at most ``max_batch_size`` recordings and ``max_batch_s``
    seconds of audio (a longer recording is a batch of its own)."""
    return batch_by_cost(items, cost=speech_seconds, max_batch_size=max_batch_size, budget=max_batch_s)


class TranscribeItems(beam.PTransform):
    """``PCollection[Item]`` (speech items) -> ``PCollection[(table, row)]``: ``WhisperModelHandler`` results, batched
    as the encoders' items are (``transforms.embed.batched_inference``).

    Args:
        handler: the speech model's handler.
        num_buckets: how many groups items are batched in (bounds parallelism and one group's memory).
    """

    def __init__(self, handler: "WhisperModelHandler", *, num_buckets: int) -> None:
        super().__init__()
        self._handler = handler
        self._num_buckets = num_buckets

    def expand(self, items: beam.PCollection) -> beam.PCollection:
        form = functools.partial(form_speech_batches, max_batch_size=self._handler.max_batch_size, max_batch_s=self._handler.max_batch_s)
        return batched_inference(items, self._handler, form, num_buckets=self._num_buckets)


class TranscriptRowsFn(beam.DoFn):
    """A handler result -> the sample's ``words`` and ``segments`` rows; for the track chosen as the sample's text
    (``as_text``: the sample has no text file) also its ``text`` row, a text-encoder item and a ``SPEECH_TEXT``
    marker. ``errors`` rows pass through. A transcript without words gives no text (and no error).

    Args:
        tokenizer_path, max_tokens: as for text files (``TextTokenizer``), built in ``setup()``.
        text_needs: the payload fields the text encoder takes, or ``None`` (no text encoder: no item).
    """

    def __init__(self, tokenizer_path: str, *, max_tokens: int, text_needs: Optional[frozenset[str]]) -> None:
        self._tokenizer_path = tokenizer_path
        self._max_tokens = max_tokens
        self._text_needs = text_needs
        self._tokenizer: Optional[TextTokenizer] = None

    def setup(self) -> None:
        self._tokenizer = TextTokenizer(self._tokenizer_path, max_tokens=self._max_tokens)

    def process(self, pair: TableRow) -> Iterator[TableRow]:
        table, row = pair
        if table == "errors":
            yield table, row
            return
        sample_id, source, transcript = row["sample_id"], row["source"], row["transcript"]
        for word in transcript.words:
            yield "words", {"sample_id": sample_id, "source": source, **word}
        for segment in transcript.segments:
            yield "segments", {"sample_id": sample_id, "source": source, **segment}
        text = transcript.text
        if not row["as_text"] or not text:
            return
        tokens = self._tokenizer.encode(text)
        yield "text", {"sample_id": sample_id, "text": text, "token_ids": tokens.ids, "n_tokens_full": tokens.n_full,
                       "truncated": tokens.truncated}
        if self._text_needs is not None:
            payload = {key: value for key, value in {"text": tokens.kept_text}.items() if key in self._text_needs}
            yield encode_table("text"), {"sample_id": sample_id, "manifest_row": row["manifest_row"], "payload": payload}
        yield SPEECH_TEXT, {"sample_id": sample_id, "manifest_row": row["manifest_row"], "n_tokens": len(tokens.ids),
                            "text_source": TEXT_SOURCE_ASR}


def speech_text_updates(rows: Iterable[TableRow]) -> Optional[dict[str, Any]]:
    """The ``samples`` columns a sample's ``SPEECH_TEXT`` marker sets (``n_tokens``, ``text_source``), or ``None``."""
    for table, row in rows:
        if table == SPEECH_TEXT:
            return {"n_tokens": row["n_tokens"], "text_source": row["text_source"]}
    return None
