"""Nearest-neighbour search: the index ``mmfeat index`` builds (``trainer.ann``, faiss IVF-Flat) against exact numpy search.

Builds the index over ``--n`` synthetic ``--dim``-d unit vectors and searches
``--queries`` held-out query vectors one at a time. Exact search is numpy on
the same vectors: one matrix-vector product and ``argpartition`` per query
(and, batched, the ground truth for recall). Prints, per method, build seconds,
recall@10 against exact, median and p95 single-query milliseconds, the ratio
of its median latency to exact's (measured in the same run), and its size
(index file on disk; exact: the float32 matrix). ``--compare`` also measures
the other installed libraries of ``trainer.ann`` (usearch HNSW, faiss HNSW,
hnswlib), one at a time; ``--libraries a,b`` measures just those.

Vectors are embedding-like, not isotropic noise: a mixture of ``--clusters``
Gaussian clusters in a ``--latent``-d subspace (a random orthonormal basis of
the ``--dim`` space), plus isotropic noise, unit-normalised; queries are fresh
draws. ``--isotropic`` uses pure Gaussian noise instead (a worst case).

Targets: recall@10 >= 0.95 and median latency < 10 ms; exits 1 when the chosen index misses one.

    python bench/search.py [--n 1000000] [--queries 300] [--dim 384] [--compare | --libraries usearch,hnswlib] [--isotropic]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.ann_candidates import CANDIDATES, MODULES as CANDIDATE_MODULES  # noqa: E402
from trainer.ann import DEFAULT_LIBRARY, LIBRARIES as KEPT, normalise  # noqa: E402

LIBRARIES = {**KEPT, **CANDIDATES}
MODULES = {DEFAULT_LIBRARY: "faiss", **CANDIDATE_MODULES}

K = 10
RECALL_TARGET = 0.95
LATENCY_TARGET_MS = 10.0


def synthetic(n: int, dim: int, *, clusters: int, latent: int, isotropic: bool, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors: cluster centre + spread in a ``latent``-d subspace, plus noise (or pure noise)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    if isotropic:
        for start in range(0, n, chunk):
            out[start:start + chunk] = normalise(rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32))
        return out
    basis = np.linalg.qr(np.random.default_rng(1234).standard_normal((dim, latent)))[0].T.astype(np.float32)  # (latent, dim)
    centres = np.random.default_rng(1235).standard_normal((clusters, latent), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        points = centres[rng.integers(0, clusters, rows)] + 0.5 * rng.standard_normal((rows, latent), dtype=np.float32)
        noise = 0.15 * np.sqrt(latent / dim) * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start:start + rows] = normalise(points @ basis + noise)
    return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, batch: int = 64) -> np.ndarray:
    """Row indices ``(q, k)`` of the ``k`` largest inner products, best first (batched matmul + argpartition)."""
    found = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start:start + batch] @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        found[start:start + batch] = np.take_along_axis(top, order, 1)
    return found


def exact_one(base: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Exact search of one query (the baseline a user would otherwise run)."""
    scores = base @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def latencies_ms(search, queries: np.ndarray) -> list[float]:
    """Milliseconds of each single-query call (after 5 warm-up calls)."""
    for query in queries[:5]:
        search(query)
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append((time.perf_counter() - start) * 1000)
    return times


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth)]))


def row(name: str, build_s: float, rec: float, times: list[float], exact_median: float, size_mb: float) -> None:
    median, p95 = statistics.median(times), float(np.percentile(times, 95))
    print(f"{name:<12} {build_s:>8.1f} {rec:>9.4f} {median:>10.3f} {p95:>9.3f} {median / exact_median:>7.3f}x {size_mb:>9.0f}", flush=True)


def measure(library: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, exact_median: float, folder: str) -> tuple[float, float]:
    """Build, save and time one library's index; prints its row. Returns (recall, median ms)."""
    keys = np.arange(len(base), dtype=np.uint64)
    start = time.perf_counter()
    index = LIBRARIES[library](base.shape[1])
    index.add(keys, base)
    build_s = time.perf_counter() - start
    path = os.path.join(folder, f"{library}.index")
    index.save(path)
    found = np.stack([index.search(query[None, :], K)[0][0] for query in queries])
    times = latencies_ms(lambda query: index.search(query[None, :], K), queries)
    row(library, build_s, recall(found, truth), times, exact_median, os.path.getsize(path) / 2**20)
    os.remove(path)
    return recall(found, truth), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--queries", type=int, default=300, help="held-out queries, searched one at a time")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=4000)
    parser.add_argument("--latent", type=int, default=64, help="dimension of the subspace the clusters live in")
    parser.add_argument("--isotropic", action="store_true", help="pure Gaussian noise vectors (worst case)")
    parser.add_argument("--compare", action="store_true", help="also measure the other installed libraries")
    parser.add_argument("--libraries", help=f"comma-separated libraries to measure instead (of {', '.join(LIBRARIES)})")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data = synthetic(args.n + args.queries, args.dim, clusters=args.clusters, latent=args.latent, isotropic=args.isotropic, seed=0)
    base, queries = data[: args.n], data[args.n:].copy()
    kind = "isotropic Gaussian" if args.isotropic else \
        f"{args.clusters} Gaussian clusters in a {args.latent}-d subspace (spread 0.5, centres N(0,1)) + isotropic noise"
    print(f"{args.n} x {args.dim}-d float32 unit vectors ({kind}), {args.queries} queries, "
          f"made in {time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    truth = exact_topk(base, queries, K)
    print(f"exact ground truth (batched matmul + argpartition): {time.perf_counter() - start:.1f} s", flush=True)

    exact_times = latencies_ms(lambda query: exact_one(base, query, K), queries)
    exact_median = statistics.median(exact_times)
    print(f"\n{'method':<12} {'build s':>8} {'recall@10':>9} {'median ms':>10} {'p95 ms':>9} {'ratio':>8} {'size MiB':>9}")
    row("exact numpy", 0.0, 1.0, exact_times, exact_median, base.nbytes / 2**20)
    libraries = [DEFAULT_LIBRARY] + ([name for name in LIBRARIES if name != DEFAULT_LIBRARY] if args.compare else [])
    if args.libraries:
        libraries = args.libraries.split(",")
        unknown = [name for name in libraries if name not in LIBRARIES]
        if unknown:
            parser.error(f"--libraries {unknown}: known are {', '.join(LIBRARIES)}")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for library in libraries:
            if importlib.util.find_spec(MODULES[library]) is None:
                print(f"{library:<12} not installed")
                continue
            rec, median = measure(library, base, queries, truth, exact_median, folder)
            if library == DEFAULT_LIBRARY:
                ok = rec >= RECALL_TARGET and median < LATENCY_TARGET_MS
    print(f"\ntargets for {DEFAULT_LIBRARY}: recall@10 >= {RECALL_TARGET}, median < {LATENCY_TARGET_MS} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
