"""Encoder throughput: mmfeat's handler path (Beam, pre-batched RunInference) vs a bare ``model(batch)`` loop.

For each default encoder, on the same inputs in the same run, prints items/s for

* a bare loop: inputs in their given order, chunks of ``--batch`` items,
  padded per chunk, straight into the model (no Beam);
* the handler path: ``EmbedItems`` in a Beam pipeline (bucketing, size-budgeted
  batches sorted by length, ``RunInference``) with ``max_batch_size = --batch``;
* the same handler path with batches of one item;

and the ratios handler/bare (pipeline overhead, or gain from sorting) and
batched/one-at-a-time.

    python bench/encode.py [--texts 512] [--images 96] [--batch 32] [--device cpu|cuda] [--precision fp32|fp16|bf16]
"""
from __future__ import annotations

import argparse
import logging
import time

import apache_beam as beam
import cv2
import numpy as np
import torch
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.extract_graph import build_handlers
from schemas.config import EncodeConfig, ExtractConfig
from transforms.embed import EmbedItems
from transforms.encoders.base import resolve_device
from transforms.encoders.registry import resolve_encoder

WORDS = "the a quick brown fox jumps over lazy dog music film sound picture happy sad great terrible movie scene actor".split()


def make_texts(n: int, rng: np.random.Generator) -> list[dict]:
    return [{"text": " ".join(rng.choice(WORDS, size=int(rng.integers(4, 120)))) + "."} for _ in range(n)]


def make_frames(n: int, rng: np.random.Generator) -> list[dict]:
    payloads = []
    for _ in range(n):
        image = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 2)
        payloads.append({"frames": [cv2.imencode(".jpg", image)[1].tobytes()]})
    return payloads


def bare_loop(encoder, model, payloads: list[dict], *, batch: int, device: torch.device, precision: str) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(payloads), batch):
            encoder.embed(model, payloads[i : i + batch], device=device, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _count(pair: tuple) -> None:
    beam.metrics.Metrics.counter("bench", "rows").inc()


def handler_path(handler, payloads: list[dict]) -> float:
    items = [{"sample_id": f"s{i}", "manifest_row": i, "payload": p} for i, p in enumerate(payloads)]
    start = time.perf_counter()
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = pipeline | beam.Create(items) | EmbedItems(handler, num_buckets=1) | beam.Map(_count)
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - start
    counters = result.metrics().query(MetricsFilter().with_name("rows"))["counters"]
    rows = sum(counter.committed for counter in counters)
    if rows != len(items):
        raise SystemExit(f"the handler path returned {rows} rows for {len(items)} items")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device_name = resolve_device(args.device)
    device = torch.device(device_name)
    rng = np.random.default_rng(0)
    cases = [("text", "minilm", make_texts(args.texts, rng)), ("video", "efficientnet-lite0", make_frames(args.images, rng))]
    print(f"device {device_name}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
          f"precision {args.precision}, torch threads {torch.get_num_threads()}, batch {args.batch}")
    for modality, name, payloads in cases:
        extract = ExtractConfig()
        batched = EncodeConfig(device=device_name, precision=args.precision, max_batch_size=args.batch)
        encoder = resolve_encoder(modality, name, encode=batched, extract=extract)
        model = encoder.load(device)
        bare_loop(encoder, model, payloads[: args.batch], batch=args.batch, device=device, precision=args.precision)  # warm-up
        bare_s = bare_loop(encoder, model, payloads, batch=args.batch, device=device, precision=args.precision)
        handler_s = handler_path(build_handlers({modality: encoder}, batched, device_name)[modality], payloads)
        single = EncodeConfig(device=device_name, precision=args.precision, max_batch_size=1)
        single_s = handler_path(build_handlers({modality: encoder}, single, device_name)[modality], payloads)
        n = len(payloads)
        print(f"{encoder.name} ({n} {'texts' if modality == 'text' else 'frames'}):")
        print(f"  bare model(batch) loop        {n / bare_s:8.1f} items/s")
        print(f"  handler path, batch {args.batch:<3}       {n / handler_s:8.1f} items/s  ratio vs bare {bare_s / handler_s:5.2f}x")
        print(f"  handler path, batch 1         {n / single_s:8.1f} items/s  batch {args.batch} vs 1: {single_s / handler_s:5.2f}x")


if __name__ == "__main__":
    main()
