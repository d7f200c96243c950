"""Scale: the launcher's work does not grow with the corpus, and a run's cost per sample stays flat.

``launcher``: for manifests of 10,000, 100,000 and 1,000,000 rows (paths only)
over a cache that already holds as many samples, runs ``run_extract`` up to
the moment the runner would start the pipeline (a runner that stops there),
each in a fresh interpreter, and prints the launcher's seconds, its peak
memory growth (MiB, ``ru_maxrss`` after imports) and the size of the pipeline
proto the runner receives (``to_runner_api().ByteSize()``). Targets: under
5 s, 400 MiB and 1 MB, and the same within 20% across the three sizes (a
difference under 0.25 s, 20 MiB or 0.01 MB, the measurement's own jitter,
passes whatever the ratio).

``end-to-end``: extracts 10,000 and 100,000 short texts (no encoders,
in-process runner) and reruns each unchanged, three times (a rerun commits
no data, so each meets the same cache; a few seconds long, one rerun moves
by a fifth with the machine's load, so the median is judged and all three
printed). Prints the cost per sample of each first run (target: 100,000
within 1.3x of 10,000), the files whose content the reruns read (counter
``content_files_hashed``; target 0) and the rerun's share of the first run
(target under 10% for the largest corpus; a smaller one's rerun is mostly
the pipeline's fixed cost, printed only).

Exits 1 when a target is missed.

    python bench/scale.py [--part all|launcher|end-to-end] [--sizes 10000,100000,1000000] [--e2e-sizes 10000,100000]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa

LAUNCHER_TARGETS = {"seconds": 5.0, "peak_mib": 400.0, "proto_mb": 1.0}
SPREAD_TARGET = 1.2
SPREAD_NOISE = {"seconds": 0.25, "peak_mib": 20.0, "proto_mb": 0.01}
PER_SAMPLE_TARGET = 1.3
RERUN_TARGET = 0.10
RERUNS = 3


def write_manifest(path: str, rows: int) -> None:
    """``rows`` JSONL rows naming a text file each (the files need not exist: the launcher never opens them)."""
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, rows, 100_000):
            handle.write("".join(json.dumps({"id": f"s{i:07d}", "text": f"texts/s{i:07d}.txt", "label": i % 2}) + "\n"
                                 for i in range(start, min(rows, start + 100_000))))


def write_cache(cache: str, rows: int, files: int = 16) -> None:
    """A committed cache holding ``rows`` samples (the launcher must not read them)."""
    from schemas.cache import RunCommit, commit_run, new_attempt, write_data_file
    from schemas.tables import FEATURE_TABLES, SAMPLES_BASE, table_schemas

    schemas = table_schemas([pa.field("label", pa.int64())])
    attempt = new_attempt("seed")
    data_files = []
    for part in range(files):
        ids = [f"s{i:07d}" for i in range(part, rows, files)]
        n = len(ids)
        columns = {field.name: pa.nulls(n, field.type) for field in SAMPLES_BASE}
        columns |= {"sample_id": pa.array(ids), "manifest_row": pa.array(range(n), pa.int64()), "status": pa.array(["ok"] * n),
                    "manifest_ok": pa.array([True] * n), "features_fingerprint": pa.array(["f"] * n), "manifest_hash": pa.array(["m"] * n),
                    "run_id": pa.array(["seed"] * n), "label": pa.array([0] * n, pa.int64())}
        for name in ("n_frames", "n_audio_windows", "n_tokens", "n_errors", "n_skipped_packets"):
            columns[name] = pa.array([0] * n, pa.int32())
        table = pa.Table.from_pydict(columns, schema=schemas["samples"])
        data_files.append(write_data_file(cache, "samples", f"{attempt}-part-{part:05d}.parquet", table))
    commit_run(cache, RunCommit(run_id="seed", attempt=attempt, files=data_files,
                                schemas={"samples": schemas["samples"], **FEATURE_TABLES}))


_MEASURE = r"""
import json, resource, sys, time
from apache_beam.runners.runner import PipelineRunner
from pipelines.extract import run_extract
from pipelines.manifest import open_manifest
from schemas.config import ExtractConfig
from transforms.text import resolve_tokenizer_path

class Stop(Exception):
    pass

class StopBeforeRun(PipelineRunner):
    '''Records what the runner receives, then stops: the launcher's work is done at this point.'''
    def run_pipeline(self, pipeline, options):
        self.seconds = time.perf_counter() - started
        self.proto_bytes = pipeline.to_runner_api().ByteSize()
        self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        raise Stop()

manifest, cache = sys.argv[1:3]
tokenizer = resolve_tokenizer_path(None)
runner = StopBeforeRun()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    run_extract(open_manifest(manifest), output=cache, config=ExtractConfig(), tokenizer_path=tokenizer, runner=runner, run_id="scale")
except Stop:
    pass
print(json.dumps({"seconds": runner.seconds, "peak_mib": (runner.peak - before) / 1024, "proto_mb": runner.proto_bytes / 1e6}))
"""


def measure_launcher(manifest: str, cache: str) -> dict[str, float]:
    """The launcher's seconds, peak memory growth (MiB) and proto size (MB), in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, manifest, cache], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise SystemExit(f"launcher measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def launcher_bench(sizes: list[int], repeats: int) -> bool:
    met = True
    results = {}
    with tempfile.TemporaryDirectory() as work:
        print("launcher: run_extract until the runner would start, manifest of N rows over a cache of N samples, fresh interpreter")
        for size in sizes:
            manifest, cache = os.path.join(work, f"m{size}.jsonl"), os.path.join(work, f"cache{size}")
            write_manifest(manifest, size)
            write_cache(cache, size)
            runs = [measure_launcher(manifest, cache) for _ in range(repeats)]
            best = {key: min(r[key] for r in runs) for key in LAUNCHER_TARGETS}
            results[size] = best
            misses = [f"{key} {best[key]:.2f} >= {target}" for key, target in LAUNCHER_TARGETS.items() if best[key] >= target]
            met &= not misses
            print(f"  {size:>9,} rows  {best['seconds']:6.2f} s  {best['peak_mib']:7.1f} MiB  proto {best['proto_mb']:6.3f} MB"
                  f"{'  MISSED: ' + ', '.join(misses) if misses else ''}")
    for key in LAUNCHER_TARGETS:
        values = [results[size][key] for size in sizes]
        spread = max(values) / max(min(values), 1e-9)
        noise = SPREAD_NOISE[key]  # a difference this small is the measurement's own jitter, whatever the ratio
        ok = spread <= SPREAD_TARGET or max(values) - min(values) < noise
        met &= ok
        print(f"  {key:<9} largest / smallest across sizes {spread:5.2f}, largest - smallest {max(values) - min(values):.2f} "
              f"(target <= {SPREAD_TARGET}, or a difference under {noise}){'' if ok else ': MISSED'}")
    return met


def _text_corpus(directory: str, samples: int) -> str:
    os.makedirs(os.path.join(directory, "texts"), exist_ok=True)
    words = ("good", "bad", "movie", "sound", "picture", "today", "slow", "bright")
    with open(os.path.join(directory, "m.jsonl"), "w", encoding="utf-8") as manifest:
        for i in range(samples):
            with open(os.path.join(directory, "texts", f"s{i:07d}.txt"), "w", encoding="utf-8") as handle:
                handle.write(" ".join(words[(i + k) % len(words)] for k in range(10)) + f" {i}\n")
            manifest.write(json.dumps({"id": f"s{i:07d}", "text": f"texts/s{i:07d}.txt", "label": i % 2}) + "\n")
    return os.path.join(directory, "m.jsonl")


def end_to_end_bench(sizes: list[int]) -> bool:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.extract import run_extract
    from pipelines.manifest import open_manifest
    from schemas.config import ExtractConfig
    from transforms.text import resolve_tokenizer_path

    tokenizer = resolve_tokenizer_path(None)
    met = True
    per_sample = {}
    print("end to end: short texts, no encoders, in-process runner; then the same corpus again (unchanged)")
    for size in sizes:
        with tempfile.TemporaryDirectory() as work:
            manifest = _text_corpus(os.path.join(work, "corpus"), size)
            cache = os.path.join(work, "cache")
            timings, reports = [], []
            for run_id in ("first", *(f"rerun-{i}" for i in range(RERUNS))):
                start = time.perf_counter()
                reports.append(run_extract(open_manifest(manifest), output=cache, config=ExtractConfig(), tokenizer_path=tokenizer,
                                           runner=FnApiRunner(), options=PipelineOptions([]), run_id=run_id))
                timings.append(time.perf_counter() - start)
            first, reruns = timings[0], timings[1:]
            rerun = statistics.median(reruns)
            hashed = sum(report.summary["metrics"].get("content_files_hashed", 0) for report in reports[1:])
            unchanged = min(report.summary["samples"]["unchanged"] for report in reports[1:])
            per_sample[size] = first / size
            share = rerun / first
            judged = size == max(sizes)  # the target: the largest corpus's rerun (a smaller one is mostly fixed cost)
            ok = hashed == 0 and unchanged == size and (share < RERUN_TARGET or not judged)
            met &= ok
            print(f"  {size:>9,} texts  first run {first:7.1f} s ({1e3 * first / size:.2f} ms/sample)  rerun {rerun:6.1f} s, the median of "
                  f"{', '.join(f'{t:.1f}' for t in reruns)} ({share:.1%} of the first{f', target < {RERUN_TARGET:.0%}' if judged else ''}); "
                  f"files read by the reruns {hashed}, unchanged {unchanged}{'' if ok else ': MISSED'}")
    smallest, largest = min(sizes), max(sizes)
    if smallest != largest:
        ratio = per_sample[largest] / per_sample[smallest]
        ok = ratio <= PER_SAMPLE_TARGET
        met &= ok
        print(f"  cost per sample at {largest:,} / at {smallest:,}: {ratio:.2f}x (target <= {PER_SAMPLE_TARGET}){'' if ok else ': MISSED'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "launcher", "end-to-end"], default="all")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="manifest rows of the launcher part")
    parser.add_argument("--e2e-sizes", default="10000,100000", help="texts of the end-to-end part")
    parser.add_argument("--repeats", type=int, default=2, help="launcher measurements per size (the best is kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    met = True
    if args.part in ("all", "launcher"):
        met &= launcher_bench([int(s) for s in args.sizes.split(",")], args.repeats)
    if args.part in ("all", "end-to-end"):
        met &= end_to_end_bench([int(s) for s in args.e2e_sizes.split(",")])
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
