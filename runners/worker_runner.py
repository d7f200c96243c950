"""``WorkerProcessesRunner``: Beam's ``FnApiRunner`` with its SDK workers in processes started by ``runners.worker_main``.

A module of its own because it subclasses a Beam class: ``runners.presets`` imports it only when
``--runner direct --workers N`` (N > 1) asks for it, so that the CLI's ``--help`` does not import Beam.
"""
from __future__ import annotations

import os
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from runners.worker_main import available_cores, worker_command


class WorkerProcessesRunner(FnApiRunner):
    """An ``FnApiRunner`` whose SDK workers are ``workers`` processes started by ``runners.worker_main``.

    Beam's ``--direct_running_mode=multi_processing`` would start ``sdk_worker_main`` under a shell instead; its
    ``--direct_num_workers`` is honoured only in that mode, so the worker count is set on the runner itself.
    """

    def __init__(self, workers: int, *, log_level: str = "INFO") -> None:
        # The cores shared out: each worker's decode threads and BLAS/OpenMP pools get max(1, cores // workers).
        self.threads = max(1, available_cores() // workers)
        command = worker_command(os.getpid(), log_level, threads=self.threads)
        super().__init__(default_environment=SubprocessSDKEnvironment.from_command_string(command))
        self.workers = workers

    def run_via_runner_api(self, pipeline_proto: Any, options: PipelineOptions) -> Any:
        self._num_workers = self.workers  # run_pipeline has just set it from --direct_num_workers (1)
        return super().run_via_runner_api(pipeline_proto, options)
