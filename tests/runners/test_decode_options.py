"""``--frame-mode`` on the command line, and the thread counts each worker process gets."""
import os

import pytest

from runners.cli import main
from runners.worker_main import THREAD_ENV_VARS, worker_thread_env
from schemas.config import DECODE_THREADS_ENV
from tests import media


def test_an_unknown_frame_mode_fails_before_any_work(tmp_path, capsys):
    manifest = media.manifest(str(tmp_path / "m.jsonl"), [{"id": "a", "text": media.text(str(tmp_path / "a.txt"), "hi")}])
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as caught:
        main(["extract", "--manifest", manifest, "--output", str(output), "--frame-mode", "every"])
    assert caught.value.code == 2
    assert "--frame-mode: invalid choice: 'every'" in capsys.readouterr().err
    assert not output.exists()


def test_frame_mode_reaches_the_video_config():
    from runners.cli import _config_from, build_parser

    _, extract = build_parser("extract")
    args = extract.parse_args(["--manifest", "m.jsonl", "--output", "out", "--frame-mode", "keyframes"])
    assert _config_from(args).video.frame_mode == "keyframes"
    args = extract.parse_args(["--manifest", "m.jsonl", "--output", "out"])
    assert _config_from(args).video.frame_mode == "sampled"


def test_a_worker_s_environment_sets_every_thread_variable():
    assert worker_thread_env(0) == {name: "1" for name in THREAD_ENV_VARS}
    assert worker_thread_env(3) == {name: "3" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", DECODE_THREADS_ENV)}


def test_worker_processes_run_with_their_share_of_the_cores(monkeypatch):
    """Two worker processes on this machine: each sees max(1, cores // 2) threads in its environment and in OpenCV."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.config import available_cores
    from runners.worker_runner import WorkerProcessesRunner

    for name in THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    runner = WorkerProcessesRunner(2, log_level="WARNING")
    expected = str(max(1, available_cores() // 2))
    assert runner.threads == int(expected)

    def seen(_):
        import os as worker_os

        import cv2

        return tuple(worker_os.environ.get(name) for name in THREAD_ENV_VARS) + (str(cv2.getNumThreads()), worker_os.getpid() != parent)

    parent = os.getpid()
    with beam.Pipeline(runner=runner) as pipeline:
        result = pipeline | beam.Create([1, 2, 3, 4]) | beam.Map(seen) | beam.Distinct()
        assert_that(result, equal_to([(expected,) * (len(THREAD_ENV_VARS) + 1) + (True,)]))
