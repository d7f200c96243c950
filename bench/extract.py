"""Extraction throughput: mmfeat's Beam pipeline vs a naive sequential loop, on the same corpus, same run.

Prints media-seconds processed per wall-second for each and the ratios.

The naive loop is what a hand-written script does: OpenCV ``read()`` on every
frame keeping one per second (resized + JPEG, as the pipeline does), the
sound decoded with PyAV at its native rate then ``librosa.resample`` +
``librosa.feature.mfcc`` on the whole signal, and one-by-one tokenisation. It
writes nothing; the pipeline also writes the Parquet cache.

    python bench/extract.py [--samples 6] [--seconds 60] [--width 854 --height 480 --fps 25]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import av
import cv2
import librosa
import numpy as np
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.extract import run_extract
from pipelines.manifest import read_manifest
from schemas.config import ExtractConfig
from transforms.media_writers import write_media, write_wav
from transforms.text import TextTokenizer, resolve_tokenizer_path
from transforms.video import encode_frame


def make_corpus(directory: str, *, samples: int, seconds: float, width: int, height: int, fps: int) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(samples):
        n_frames = int(seconds * fps)
        # A blurred random texture panning 3 px a frame: motion and detail an encoder spends bits on, like real footage.
        texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8), (0, 0), 3)
        frames = (texture[:, (3 * k) % width : (3 * k) % width + width] for k in range(n_frames))
        t = np.arange(int(seconds * 16000)) / 16000
        sound = (0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + rng.normal(0, 0.02, t.shape)).astype(np.float32)
        separate = i % 3 == 2
        write_media(os.path.join(directory, f"s{i}.mp4"), frames=frames, width=width, height=height, fps=fps,
                    audio=None if separate else sound, sample_rate=16000)
        row = {"id": f"s{i}", "video": f"s{i}.mp4", "text": f"s{i}.txt"}
        if separate:
            write_wav(os.path.join(directory, f"s{i}.wav"), sound, sample_rate=16000)
            row["audio"] = f"s{i}.wav"
        with open(os.path.join(directory, f"s{i}.txt"), "w", encoding="utf-8") as handle:
            handle.write(" ".join(rng.choice(["good", "bad", "movie", "sound", "picture", "today"], size=40)) + "\n")
        rows.append(row)
    manifest = os.path.join(directory, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


def naive_loop(manifest: str, config: ExtractConfig, tokenizer_path: str) -> int:
    """The hand-written baseline; returns the number of frames kept (so the work cannot be skipped)."""
    records = read_manifest(manifest).records
    tokenizer = TextTokenizer(tokenizer_path, max_tokens=config.text.max_tokens)
    kept = 0
    for record in records:
        capture = cv2.VideoCapture(record.video)
        native_fps = capture.get(cv2.CAP_PROP_FPS)
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % round(native_fps / config.video.fps) == 0:
                encode_frame(frame, shorter_side=config.video.frame_size, jpeg_quality=config.video.jpeg_quality)
                kept += 1
            index += 1
        capture.release()
        if record.audio:
            signal, _ = librosa.load(record.audio, sr=config.audio.sample_rate, mono=True)
        else:
            with av.open(record.video) as container:
                stream = container.streams.audio[0]
                signal = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
                signal = librosa.resample(signal, orig_sr=stream.rate, target_sr=config.audio.sample_rate)
        librosa.feature.mfcc(y=signal, sr=config.audio.sample_rate, n_mfcc=config.audio.n_mfcc,
                             n_fft=config.audio.n_fft, hop_length=config.audio.hop_length, n_mels=config.audio.n_mels)
        with open(record.text, encoding="utf-8") as handle:
            tokenizer.encode(handle.read())
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = ExtractConfig()
    tokenizer_path = resolve_tokenizer_path(None)
    with tempfile.TemporaryDirectory() as work:
        corpus_dir = os.path.join(work, "corpus")
        os.makedirs(corpus_dir)
        manifest = make_corpus(corpus_dir, samples=args.samples, seconds=args.seconds, width=args.width, height=args.height, fps=args.fps)
        media_seconds = args.samples * args.seconds
        print(f"corpus: {args.samples} samples x {args.seconds:g} s = {media_seconds:g} media-s "
              f"({args.width}x{args.height} H.264 @ {args.fps} fps, 16 kHz audio, text); 1 frame/s, 40 MFCCs")
        # Warm librosa's JIT and the page cache once, outside every timing.
        naive_loop(manifest, config, tokenizer_path)

        start = time.perf_counter()
        naive_loop(manifest, config, tokenizer_path)
        naive_s = time.perf_counter() - start
        naive_rate = media_seconds / naive_s
        print(f"  naive sequential loop       {naive_s:7.2f} s  {naive_rate:8.1f} media-s/s")

        outputs: dict[str, str] = {}
        first_run_s = 0.0
        for label, options in [
            ("mmfeat extract (in-process)", PipelineOptions()),
            ("mmfeat extract (--workers 2)", PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])),
        ]:
            start = time.perf_counter()
            outputs[label] = os.path.join(work, label.replace(" ", "_"))
            report = run_extract(read_manifest(manifest), output=outputs[label], config=config,
                                 tokenizer_path=tokenizer_path, runner=FnApiRunner(), options=options)
            elapsed = time.perf_counter() - start
            if report.summary["samples"]["ok"] != args.samples:
                raise SystemExit(f"{label}: not every sample succeeded: {report.summary['samples']}")
            print(f"  {label:<28}{elapsed:7.2f} s  {media_seconds / elapsed:8.1f} media-s/s  ratio vs naive {naive_s / elapsed:5.2f}x")
            first_run_s = elapsed if "in-process" in label else first_run_s

        # A scheduled rerun over the unchanged corpus: everything is already cached.
        start = time.perf_counter()
        report = run_extract(read_manifest(manifest), output=outputs["mmfeat extract (in-process)"], config=config,
                             tokenizer_path=tokenizer_path, runner=FnApiRunner())
        rerun_s = time.perf_counter() - start
        if report.summary["samples"]["unchanged"] != args.samples:
            raise SystemExit(f"rerun recomputed samples: {report.summary['samples']}")
        print(f"  incremental rerun, unchanged {rerun_s:7.2f} s  ({rerun_s / first_run_s:.1%} of the first run)")


if __name__ == "__main__":
    main()
