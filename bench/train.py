"""Training on a cache larger than you want in memory: the ``disk`` reader against the ``memory`` reader.

Writes a synthetic cache (``--rows`` embeddings of ``--dim`` float32, 256 MiB by
default), then for each reader, in a fresh process after a warm-up on a small
cache, loads the features, fits ``--epochs`` epochs of a ``concat`` head and
predicts every row, printing wall time, peak anonymous memory growth (memory
that cannot be paged out; a memory map's pages can) and accuracy, and the
ratios disk/memory.

    python bench/train.py [--rows 65536] [--dim 1024] [--epochs 2] [--chunk-rows 4096]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.memory import peak_anonymous_growth_mb  # noqa: E402
from tests.trainer.caches import write_vector_cache  # noqa: E402


def measure(reader: str, large: str, small: str, *, epochs: int, chunk_rows: int) -> tuple[float, int, float]:
    """Seconds, peak anonymous growth (MiB) and accuracy of one reader, in a fresh process."""
    setup = f"""
        import time
        from trainer.data import load_features
        from trainer.train import TrainConfig, evaluate, fit, infer_task

        def run(folder, epochs):
            storage = folder + "/scratch-{reader}" if {reader!r} == "disk" else None
            data = load_features(folder, labels=["label"], storage=storage)
            config = TrainConfig(fusion="concat", epochs=epochs, patience=epochs, chunk_rows={chunk_rows} if storage else None)
            fitted = fit(data, [infer_task("label", data.labels["label"])], config)
            return evaluate(fitted, data)["label"]["accuracy"]

        run({small!r}, 1)
    """
    work = f"""
        start = time.perf_counter()
        accuracy = run({large!r}, {epochs})
        print(time.perf_counter() - start, accuracy)
    """
    printed, growth = peak_anonymous_growth_mb(setup, work)
    seconds, accuracy = printed.split()[-2:]
    return float(seconds), growth, float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        large, small = os.path.join(folder, "large"), os.path.join(folder, "small")
        write_vector_cache(large, n=args.rows, dim=args.dim)
        write_vector_cache(small, n=2048, dim=args.dim)
        size_mib = args.rows * args.dim * 4 / 2**20
        print(f"features: {args.rows} rows x {args.dim} float32 = {size_mib:.0f} MiB; {args.epochs} epochs of concat; chunk {args.chunk_rows} rows")
        results = {reader: measure(reader, large, small, epochs=args.epochs, chunk_rows=args.chunk_rows) for reader in ("memory", "disk")}
    print(f"{'reader':<8} {'seconds':>8} {'peak anon MiB':>14} {'accuracy':>9}")
    for reader, (seconds, growth, accuracy) in results.items():
        print(f"{reader:<8} {seconds:>8.1f} {growth:>14} {accuracy:>9.3f}")
    (t_mem, m_mem, _), (t_disk, m_disk, _) = results["memory"], results["disk"]
    print(f"disk/memory: time {t_disk / t_mem:.2f}x, peak anonymous memory {m_disk / max(m_mem, 1):.2f}x")


if __name__ == "__main__":
    main()
