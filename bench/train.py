"""Training speed: mmfeat's epoch loop against a bare torch loop, ``mmfeat compare`` against its target, and the readers.

``epochs`` (default): for a ``concat``, an ``attention`` and a sequence head
(``concat`` over a GRU-encoded audio sequence and a text vector), times the
epochs of ``trainer.train.fit`` and of a bare torch loop over the same
standardised tensors (same model class, the same fused AdamW, a permutation
indexed batch by batch, a validation forward per epoch), both on one torch thread, in this
process, alternating (mmfeat, bare, mmfeat, bare) so both see the same machine
load. Prints the median seconds per epoch of each side and the ratio (target
<= 1.3x).

``compare`` (default): builds the 64-clip demo cache in a temp dir
(``mmfeat make-sample-corpus --n 64 --seed 0``, ``mmfeat extract``; or
``--demo-cache`` to reuse one) and times ``mmfeat compare --cache ... --label
label`` as a user runs it (a fresh process, start-up included). Target: under
60 s on 2 cores; the ratio is time / 60 s.

``readers``: training on a cache larger than you want in memory: for each
reader (``memory``, ``disk``), in a fresh process after a warm-up on a small
cache, loads ``--rows`` embeddings of ``--dim`` float32 (256 MiB by default),
fits ``--reader-epochs`` epochs of a ``concat`` head and predicts every row,
printing wall time, peak anonymous memory growth (memory that cannot be paged
out; a memory map's pages can) and accuracy, and the ratios disk/memory.

Exits 1 when a target of the parts run is missed.

    python bench/train.py [--part all|epochs|compare|readers] [--epochs 30] [--demo-cache PATH]
                          [--rows 65536] [--dim 1024] [--reader-epochs 2] [--chunk-rows 4096]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.memory import peak_anonymous_growth_mb  # noqa: E402
from tests.trainer.caches import write_vector_cache  # noqa: E402

EPOCH_TARGET = 1.3
COMPARE_TARGET_S = 60.0


def measure_reader(reader: str, large: str, small: str, *, epochs: int, chunk_rows: int) -> tuple[float, int, float]:
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


def synthetic_features(n: int, *, sequence: bool, seed: int = 0):
    """A ``FeatureSet`` of ``n`` rows: video (1280), audio (160) and text (384) vectors, or with ``sequence`` an audio
    sequence ``(n, 64, 20)`` of random lengths and a text vector; a binary ``label`` carried by the first dimensions."""
    import numpy as np

    from trainer.feature_set import FeatureSet

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    if sequence:
        audio = rng.standard_normal((n, 64, 20)).astype(np.float32)
        lengths = rng.integers(16, 65, n).astype(np.int32)
        audio[np.arange(64)[None, :] >= lengths[:, None]] = 0.0
        audio[:, :, 0] += labels[:, None]
        text = rng.standard_normal((n, 384)).astype(np.float32)
        return FeatureSet([f"s{i}" for i in range(n)], ["audio", "text"], {"audio": audio, "text": text}, np.ones((n, 2), bool),
                          {"label": labels}, {"audio": lengths})
    features = {m: rng.standard_normal((n, d)).astype(np.float32) for m, d in (("video", 1280), ("audio", 160), ("text", 384))}
    features["text"][:, 0] += 2 * labels
    return FeatureSet([f"s{i}" for i in range(n)], list(features), features, np.ones((n, 3), bool), {"label": labels})


def mmfeat_epochs(data, config) -> list[float]:
    """Seconds of each epoch of ``trainer.train.fit`` (setup left out: the times between epoch reports)."""
    from trainer.train import fit, infer_task

    stamps = [time.perf_counter()]
    fit(data, [infer_task("label", data.labels["label"])], config, on_epoch=lambda done, loss: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # the first epoch is left out on both sides (warm-up)


def bare_epochs(data, config) -> list[float]:
    """Seconds of each epoch of a bare torch loop on the same rows (80% train, 20% validation), tensors built once."""
    import torch

    from trainer.standardise import Standardiser
    from trainer.tasks import infer_task

    task = infer_task("label", data.labels["label"])
    n_train = int(round(len(data) * (1 - config.validation_fraction)))
    rows = {"train": slice(0, n_train), "val": slice(n_train, len(data))}
    standardiser = Standardiser.fit(data, list(range(n_train)))
    inputs = standardiser.apply(data)
    present = torch.from_numpy(data.present)
    lengths = {m: torch.from_numpy(v) for m, v in data.lengths.items()}
    targets = torch.from_numpy(task.targets(data.labels["label"]))
    split = {part: ({m: x[r] for m, x in inputs.items()}, present[r], {m: v[r] for m, v in lengths.items()}, targets[r]) for part, r in rows.items()}
    torch.manual_seed(config.seed)
    model = config.build_model(data.dims(), {"label": task.outputs})
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)  # as mmfeat's
    x, p, lens, y = split["train"]
    stamps = [time.perf_counter()]
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n_train)
        for start in range(0, n_train, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.cross_entropy(model({m: v[batch] for m, v in x.items()}, p[batch], {m: v[batch] for m, v in lens.items()})["label"], y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            vx, vp, vl, vy = split["val"]
            float(torch.nn.functional.cross_entropy(model(vx, vp, vl)["label"], vy))
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def epochs_part(epochs: int) -> bool:
    """Per head: median seconds per epoch of mmfeat and of the bare loop, and their ratio. True when every ratio meets the target."""
    import torch

    from trainer.train import TrainConfig

    torch.set_num_threads(1)
    heads = [
        ("concat", 2400, TrainConfig(fusion="concat", epochs=epochs, patience=epochs)),
        ("attention", 2400, TrainConfig(fusion="attention", epochs=epochs, patience=epochs)),
        ("concat + gru audio sequence", 600, TrainConfig(fusion="concat", epochs=epochs, patience=epochs, sequences=("audio",))),
    ]
    print(f"epochs: median seconds per epoch over {epochs} epochs x 2 runs per side, 1 torch thread, alternating; target mmfeat/bare <= {EPOCH_TARGET}x")
    print(f"{'head':<30} {'rows':>5} {'mmfeat s':>9} {'bare s':>9} {'ratio':>6}")
    ok = True
    for name, n, config in heads:
        data = synthetic_features(n, sequence=bool(config.sequences))
        ours, bare = [], []
        for _ in range(2):
            ours += mmfeat_epochs(data, config)
            bare += bare_epochs(data, config)
        ratio = statistics.median(ours) / statistics.median(bare)
        ok &= ratio <= EPOCH_TARGET
        print(f"{name:<30} {n:>5} {statistics.median(ours):>9.4f} {statistics.median(bare):>9.4f} {ratio:>5.2f}x")
    return ok


def _mmfeat(*args: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "mmfeat")
    return [script, *args] if os.path.exists(script) else [sys.executable, "-m", "runners.cli", *args]


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (their workers included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare_part(demo_cache: str | None) -> bool:
    """Seconds of ``mmfeat compare`` on the 64-clip demo cache (built here unless given) against the 60 s target."""
    with tempfile.TemporaryDirectory() as folder:
        cache = demo_cache
        if cache is None:
            cache, corpus = os.path.join(folder, "cache"), os.path.join(folder, "corpus")
            start = time.perf_counter()
            subprocess.run(_mmfeat("make-sample-corpus", corpus, "--n", "64", "--seed", "0", "--log-level", "WARNING"), check=True, capture_output=True)
            subprocess.run(_mmfeat("extract", "--manifest", os.path.join(corpus, "manifest.jsonl"), "--output", cache, "--overwrite",
                                   "--log-level", "WARNING"), check=True, capture_output=True)
            print(f"compare: built the 64-clip demo cache in {time.perf_counter() - start:.0f} s")
        start, cpu_before = time.perf_counter(), _children_cpu_s()
        done = subprocess.run(_mmfeat("compare", "--cache", cache, "--label", "label", "--log-level", "WARNING"), check=True,
                              capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - start, _children_cpu_s() - cpu_before
    print(done.stdout.rstrip())
    cores = len(os.sched_getaffinity(0))
    print(f"compare: mmfeat compare {seconds:.1f} s wall on {cores} cores (load average {os.getloadavg()[0]:.1f}); target {COMPARE_TARGET_S:.0f} s; "
          f"ratio {seconds / COMPARE_TARGET_S:.2f}x of the target")
    print(f"compare: {cpu:.1f} CPU s in all its processes (= {cpu / cores:.1f} s on {cores} idle cores; on a shared machine the wall time is longer)")
    return seconds <= COMPARE_TARGET_S


def readers_part(rows: int, dim: int, epochs: int, chunk_rows: int) -> None:
    """The ``disk`` reader against the ``memory`` reader (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        large, small = os.path.join(folder, "large"), os.path.join(folder, "small")
        write_vector_cache(large, n=rows, dim=dim)
        write_vector_cache(small, n=2048, dim=dim)
        size_mib = rows * dim * 4 / 2**20
        print(f"readers: {rows} rows x {dim} float32 = {size_mib:.0f} MiB; {epochs} epochs of concat; chunk {chunk_rows} rows")
        results = {reader: measure_reader(reader, large, small, epochs=epochs, chunk_rows=chunk_rows) for reader in ("memory", "disk")}
    print(f"{'reader':<8} {'seconds':>8} {'peak anon MiB':>14} {'accuracy':>9}")
    for reader, (seconds, growth, accuracy) in results.items():
        print(f"{reader:<8} {seconds:>8.1f} {growth:>14} {accuracy:>9.3f}")
    (t_mem, m_mem, _), (t_disk, m_disk, _) = results["memory"], results["disk"]
    print(f"disk/memory: time {t_disk / t_mem:.2f}x, peak anonymous memory {m_disk / max(m_mem, 1):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="default", choices=["default", "all", "epochs", "compare", "readers"],
                        help="default: epochs and compare; all: also readers")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per timed fit (part epochs)")
    parser.add_argument("--demo-cache", help="an extracted 64-clip demo cache to time compare on (default: build one in a temp dir)")
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--reader-epochs", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    args = parser.parse_args()
    ok = True
    if args.part in ("default", "all", "epochs"):
        ok &= epochs_part(args.epochs)
    if args.part in ("default", "all", "compare"):
        ok &= compare_part(args.demo_cache)
    if args.part in ("all", "readers"):
        readers_part(args.rows, args.dim, args.reader_epochs, args.chunk_rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
