"""Encoder throughput: the RunInference path (Beam, pre-batched, ``EncoderModelHandler``) vs a bare ``model(batch)`` loop.

For every default encoder (``EncodeConfig()``'s text, image and audio values), in one run, rounds interleaved
(bare, handler, bare, handler, ...; best of ``--rounds``, since the machine may be shared), prints items/s of

* bare: the package's model loaded the plain way (no folding, no channels-last), fed inputs prepared beforehand
  and untimed (tokenised and padded per chunk / decoded, resized and normalised), in their given order, chunks of
  ``--batch`` items, ``model(batch)`` under ``torch.inference_mode``; for ``builtin:mfcc-stats`` (no torch
  model) the numpy function over each chunk;
* handler: ``EmbedItems`` in a Beam pipeline (FnApiRunner) with ``max_batch_size = --batch``, preprocessing
  included, from the first ``run_inference`` call's start to the last one's end (the steady state of a worker:
  what a job's throughput converges to; read from Beam distribution metrics);
* handler, free encoder: the same handler path, measured the same way, with the encoder's ``embed`` replaced by
  one returning zeros of its width (no model loaded): what the path itself costs per item (grouping, batching,
  ``RunInference``, building and emitting one row per item), whatever the encoder;
* handler end to end: the whole pipeline's wall time, one-off costs included (pipeline start, model load);

and the ratio handler/bare against the 0.87 target, with ``bare / (bare + free encoder)``: about the best ratio
the path can reach when the encoder costs in it what it costs bare. For a torch model it is close to 1.

An *inline* encoder (``builtin:mfcc-stats``: no model, a few microseconds an item) has no RunInference path: the
extraction computes its row as it finishes a sample's audio (``transforms.embedding_rows.InlineEmbedder``). For it
the bench prints, from short WAV samples (``--wavs``, 5 s each) extracted by ``SampleExtractor``:

* bare: the extraction handing the stream's moments out as items (what the RunInference path got), then the bare
  function over those payloads in chunks of ``--batch``: the same vectors, the bare way;
* inline: the extraction computing the rows itself;

and their ratio against the 0.87 target (the same work on both sides). Beside it, the micro figures: the bare
function per item at ``--batch`` and at batch 1 (the inline path's batch), the inline path alone (rows built,
checked and counted) over prepared moments, and the RunInference path the encoder took before, so the path's own
cost per item is visible: a 2-10 µs function cannot reach 0.87 of itself through any per-item Python path.

    python bench/encode.py [--texts 256] [--images 96] [--moments 1024] [--wavs 64] [--batch 32] [--rounds 2] [--device cpu|cuda]
                           [--only text,video,audio]

The end-to-end figure also pays for ``beam.Create`` pickling (and bz2-compressing) every item into the graph,
which a real run does not: read the steady figure for throughput.

Batch defaults (``EncodeConfig``: 32 items, 8192 padded tokens, 256 frames) are kept: all-MiniLM-L6-v2 runs
about 205 texts/s at batch 8 to 32 on 2 CPU threads (FACTS.md); a sweep for EfficientNet-Lite0 was not
conclusive on the loaded shared machine it was tried on. Rerun with ``--batch`` 8/16/64 on a worker's hardware
(a GPU wants larger batches: raise ``--max-batch-size`` and the budgets there).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import logging
import os
import tempfile
import time
from typing import Any, Callable

import apache_beam as beam
import cv2
import numpy as np
import soundfile
import torch
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract_graph import build_handlers
from schemas.config import EncodeConfig, ExtractConfig
from schemas.records import ManifestRecord
from transforms.embed import EmbedItems
from transforms.embed_handler import EncoderModelHandler
from transforms.embedding_rows import InlineEmbedder
from transforms.extract_sample import SampleExtractor
from transforms.sample_state import EncodeRequest, RunContext
from transforms.encoders.base import resolve_device
from transforms.encoders.registry import resolve_encoder

TARGET = 0.87
WORDS = "the a quick brown fox jumps over lazy dog music film sound picture happy sad great terrible movie scene actor".split()


def make_texts(n: int, rng: np.random.Generator) -> list[dict]:
    return [{"text": " ".join(rng.choice(WORDS, size=int(rng.integers(4, 120)))) + "."} for _ in range(n)]


def make_frames(n: int, rng: np.random.Generator) -> list[dict]:
    payloads = []
    for _ in range(n):
        image = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 2)
        payloads.append({"frames": [cv2.imencode(".jpg", image)[1].tobytes()]})
    return payloads


def make_moments(n: int, n_mfcc: int, rng: np.random.Generator) -> list[dict]:
    return [{"mfcc_moments": {"count": np.array([300.0, 299.0]), "mean": rng.standard_normal((2, n_mfcc)),
                              "m2": rng.random((2, n_mfcc)) * 300}} for _ in range(n)]


class TimedHandler(EncoderModelHandler):
    """The handler, recording each ``run_inference`` call's start and end (µs since the epoch) as Beam metrics."""

    def run_inference(self, batch, model, inference_args=None):
        beam.metrics.Metrics.distribution("bench", "start_us").update(int(time.time() * 1e6))
        rows = super().run_inference(batch, model, inference_args)
        beam.metrics.Metrics.distribution("bench", "end_us").update(int(time.time() * 1e6))
        beam.metrics.Metrics.counter("bench", "rows").inc(len(rows))
        return rows


def free_encoder(encoder: Any) -> Any:
    """A copy of ``encoder`` that loads nothing and embeds every batch as zeros ``(n, dim)``: the handler path's
    own cost."""
    free = copy.copy(encoder)
    free.load = lambda device: None
    free.embed = lambda model, payloads, **kwargs: np.zeros((len(payloads), encoder.dim), np.float32)
    free.keep_sequences = False
    return free


def handler_path(handler: EncoderModelHandler, payloads: list[dict], *, encoder: Any = None) -> tuple[float, float]:
    """Seconds (steady: first ``run_inference`` start to last end; end to end: the whole pipeline), through
    ``handler`` or, with ``encoder``, through the same handler over that encoder."""
    timed = TimedHandler(encoder or handler.encoder, table=handler.table, device=handler.device, precision=handler.precision,
                         min_batch_size=1, max_batch_size=handler.max_batch_size, budget=handler.budget)
    items = [{"sample_id": f"s{i}", "manifest_row": i, "payload": p} for i, p in enumerate(payloads)]
    start = time.perf_counter()
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = pipeline | beam.Create(items) | EmbedItems(timed, num_buckets=1)
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    metrics = result.metrics().query(MetricsFilter().with_namespace("bench"))
    rows = sum(c.committed for c in metrics["counters"] if c.key.metric.name == "rows")
    if rows != len(items):
        raise SystemExit(f"the handler path returned {rows} rows for {len(items)} items")
    ends = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    return (ends["end_us"].max - ends["start_us"].min) / 1e6, wall


def _timed(loop: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        loop()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_text(encoder: Any, payloads: list[dict], batch: int, device: torch.device) -> Callable[[], None]:
    from tokenizers import Tokenizer
    from transformers import AutoModel

    model = AutoModel.from_pretrained(encoder.folder).eval().to(device)
    tokenizer = Tokenizer.from_file(f"{encoder.folder}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=encoder.max_tokens)
    inputs = []
    for start in range(0, len(payloads), batch):
        encodings = tokenizer.encode_batch([p["text"] for p in payloads[start : start + batch]])
        longest = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(encodings), longest), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = 1
        inputs.append((ids.to(device), mask.to(device)))
    return lambda: [model(input_ids=ids, attention_mask=mask) for ids, mask in inputs]


def bare_image(encoder: Any, payloads: list[dict], batch: int, device: torch.device) -> Callable[[], None]:
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=encoder.weights_path()).eval().to(device)
    frames = [f for p in payloads for f in p["frames"]]
    inputs = [torch.from_numpy(encoder.pixels(frames[s : s + batch]).copy()).to(device) for s in range(0, len(frames), batch)]
    return lambda: [model.extract_features(x) for x in inputs]


def bare_numpy(encoder: Any, payloads: list[dict], batch: int, device: torch.device) -> Callable[[], None]:
    """The model-free encoder's numpy function over each chunk of payloads, as given (its ``embed``: vectorised over
    the chunk)."""
    return lambda: [encoder.embed(None, payloads[s : s + batch], device=device, precision="fp32") for s in range(0, len(payloads), batch)]


def write_wavs(folder: str, n: int, rng: np.random.Generator, sample_rate: int) -> list[ManifestRecord]:
    """``n`` audio-only samples of 5 s (16-bit mono WAVs at ``sample_rate``: a tone in noise), one file each."""
    records = []
    times = np.arange(5 * sample_rate) / sample_rate
    for index in range(n):
        path = os.path.join(folder, f"a{index}.wav")
        signal = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * times) + 0.05 * rng.standard_normal(len(times))
        soundfile.write(path, signal.astype(np.float32), sample_rate, subtype="PCM_16")
        records.append(ManifestRecord(sample_id=f"a{index}", manifest_row=index, audio=path))
    return records


def inline_in_extraction(embedder: InlineEmbedder, records: list[ManifestRecord], batch: int, extract: ExtractConfig) -> tuple[float, float]:
    """Seconds to get every record's vector (bare: extraction handing out items, then the bare function in chunks of
    ``batch``; inline: extraction computing the rows); each side's vectors are checked equal to the other's."""
    encoder = embedder.encoder
    request = EncodeRequest("audio", encoder.needs, encoder.fingerprint())
    handing_out = SampleExtractor(extract, None, RunContext(requests={"audio": request}))
    computing = SampleExtractor(extract, None, RunContext(requests={"audio": dataclasses.replace(request, inline=embedder)}))
    start = time.perf_counter()
    payloads = [row["payload"] for record in records for table, row in handing_out.extract(record) if table == "_encode/audio"]
    bare = np.concatenate([encoder.embed(None, payloads[s : s + batch], device=None, precision="fp32") for s in range(0, len(payloads), batch)])
    bare_s = time.perf_counter() - start
    start = time.perf_counter()
    inline = [row["vector"] for record in records for table, row in computing.extract(record) if table == embedder.table]
    inline_s = time.perf_counter() - start
    if len(inline) != len(records) or not np.array_equal(np.stack(inline), bare):
        raise SystemExit("the inline rows differ from the bare function's vectors")
    return bare_s, inline_s


def report_inline(embedder: InlineEmbedder, payloads: list[dict], args: argparse.Namespace, extract: ExtractConfig,
                  rng: np.random.Generator) -> bool:
    """Prints the inline encoder's figures (see the module docstring); whether it reached the target."""
    encoder, n = embedder.encoder, len(payloads)
    items = [{"sample_id": f"s{i}", "manifest_row": i, "payload": p} for i, p in enumerate(payloads)]
    handler = EncoderModelHandler(encoder, table=embedder.table, device="cpu", precision="fp32", min_batch_size=1,
                                  max_batch_size=args.batch, budget=args.batch)
    batched, single = bare_numpy(encoder, payloads, args.batch, None), bare_numpy(encoder, payloads, 1, None)
    with tempfile.TemporaryDirectory() as folder:
        records = write_wavs(folder, args.wavs, rng, extract.audio.sample_rate)
        inline_in_extraction(embedder, records[:2], args.batch, extract)  # warm-up
        best = {name: float("inf") for name in ("batched", "single", "inline", "handler", "extract_bare", "extract_inline")}
        for _ in range(args.rounds):
            for name, loop in (("batched", batched), ("single", single), ("inline", lambda: [embedder.rows(item) for item in items])):
                start = time.perf_counter()
                loop()
                best[name] = min(best[name], time.perf_counter() - start)
            best["handler"] = min(best["handler"], handler_path(handler, payloads)[0])
            bare_s, inline_s = inline_in_extraction(embedder, records, args.batch, extract)
            best["extract_bare"], best["extract_inline"] = min(best["extract_bare"], bare_s), min(best["extract_inline"], inline_s)
    ratio = best["extract_bare"] / best["extract_inline"]
    per_item = {name: best[name] / n * 1e6 for name in ("batched", "single", "inline", "handler")}
    print(f"{encoder.name} (inline: computed by the extraction; {len(records)} WAV samples of 5 s, {n} prepared moments):")
    print(f"  extraction, then bare function at batch {args.batch}  {len(records) / best['extract_bare']:9.1f} samples/s")
    print(f"  extraction computing the rows inline   {len(records) / best['extract_inline']:9.1f} samples/s  ratio vs bare {ratio:5.2f}x  "
          f"{'ok' if ratio >= TARGET else 'BELOW'} (target {TARGET})")
    print(f"  per item: bare at batch {args.batch} {per_item['batched']:.1f} µs, at batch 1 {per_item['single']:.1f} µs; inline path "
          f"{per_item['inline']:.1f} µs (ratio {per_item['batched'] / per_item['inline']:.2f}x / {per_item['single'] / per_item['inline']:.2f}x); "
          f"the RunInference path it took before {per_item['handler']:.1f} µs (steady state: its grouping not counted)")
    return ratio >= TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--moments", type=int, default=1024)
    parser.add_argument("--wavs", type=int, default=64, help="5 s WAV samples for an inline encoder's extraction figure")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default="", help="comma-separated modalities (text,video,audio); default all")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device_name = resolve_device(args.device)
    device = torch.device(device_name)
    encode, extract = EncodeConfig(device=device_name, max_batch_size=args.batch), ExtractConfig()
    rng = np.random.default_rng(0)
    makers = {"text": (lambda: make_texts(args.texts, rng), bare_text), "video": (lambda: make_frames(args.images, rng), bare_image),
              "audio": (lambda: make_moments(args.moments, extract.audio.n_mfcc, rng), bare_numpy)}
    print(f"device {device_name}, fp32, torch threads {torch.get_num_threads()}, batch {args.batch}, best of {args.rounds} "
          f"interleaved rounds, target handler/bare >= {TARGET}")
    failed = []
    for modality in args.only.split(",") if args.only else ("text", "video", "audio"):
        make, bare_for = makers[modality]
        encoder = resolve_encoder(modality, encode.encoder_for(modality), encode=encode, extract=extract)
        payloads = make()
        handler = build_handlers({modality: encoder}, encode, device_name)[modality]
        if isinstance(handler, InlineEmbedder):
            failed += [] if report_inline(handler, payloads, args, extract, rng) else [encoder.name]
            continue
        bare_loop = bare_for(encoder, payloads, args.batch, device)
        _timed(bare_loop, device)  # warm-up
        free = free_encoder(encoder)
        bare_s = steady_s = free_s = wall_s = float("inf")
        for _ in range(args.rounds):
            bare_s = min(bare_s, _timed(bare_loop, device))
            steady, wall = handler_path(handler, payloads)
            steady_s, wall_s = min(steady_s, steady), min(wall_s, wall)
            free_s = min(free_s, handler_path(handler, payloads, encoder=free)[0])
        n, ratio = len(payloads), bare_s / steady_s
        failed += [encoder.name] if ratio < TARGET else []
        print(f"{encoder.name} ({n} items):")
        print(f"  bare model(batch) loop        {n / bare_s:9.1f} items/s")
        print(f"  handler path (RunInference)   {n / steady_s:9.1f} items/s  ratio vs bare {ratio:5.2f}x  "
              f"{'ok' if ratio >= TARGET else 'BELOW'} (target {TARGET})")
        print(f"  handler path, free encoder    {n / free_s:9.1f} items/s  bare/(bare+free) {bare_s / (bare_s + free_s):5.2f}x")
        print(f"  handler path end to end       {n / wall_s:9.1f} items/s  (pipeline start and model load included)")
    print("all encoders at target" if not failed else f"below target: {', '.join(failed)}")


if __name__ == "__main__":
    main()
