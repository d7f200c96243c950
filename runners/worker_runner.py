"""``WorkerProcessesRunner``: Beam's ``FnApiRunner`` with its SDK workers in processes started by ``runners.worker_main``.

A module of its own because it subclasses a Beam class: ``runners.presets`` imports it only when
``--runner direct --workers N`` (N > 1) asks for it, so that the CLI's ``--help`` does not import Beam.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from runners.worker_main import threads_per_worker, worker_command
from runners.worker_pool import WarmWorkers


class WorkerProcessesRunner(FnApiRunner):
    """An ``FnApiRunner`` whose SDK workers are ``workers`` processes started by ``runners.worker_main``.

    Beam's ``--direct_running_mode=multi_processing`` would start ``sdk_worker_main`` under a shell instead; its
    ``--direct_num_workers`` is honoured only in that mode, so the worker count is set on the runner itself. With
    ``warm`` (``runners.worker_pool``, started before Beam was imported), the workers Beam starts claim those
    already waiting; the ones a run did not claim end with it.
    """

    def __init__(self, workers: int, *, log_level: str = "INFO", warm: Optional[WarmWorkers] = None) -> None:
        self.threads = warm.threads if warm is not None else threads_per_worker(workers)
        command = warm.worker_command() if warm is not None else worker_command(os.getpid(), log_level, threads=self.threads)
        super().__init__(default_environment=SubprocessSDKEnvironment.from_command_string(command))
        self.workers = workers
        self._warm = warm

    def run_via_runner_api(self, pipeline_proto: Any, options: PipelineOptions) -> Any:
        self._num_workers = self.workers  # run_pipeline has just set it from --direct_num_workers (1)
        try:
            return super().run_via_runner_api(pipeline_proto, options)
        finally:
            if self._warm is not None:
                self._warm.close()
