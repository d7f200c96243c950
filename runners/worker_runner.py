"""``WorkerProcessesRunner``: Beam's ``FnApiRunner`` with its SDK workers in processes started by ``runners.worker_main``.

A module of its own because it subclasses Beam classes: ``runners.presets`` imports it only when
``--runner direct --workers N`` (N > 1) asks for it, so that the CLI's ``--help`` does not import Beam.

Beam's own way to start workers in processes (an environment holding a shell command) ran, for each worker, a
shell and an interpreter that handed the environment Beam set to a waiting warm worker, about 0.1 s each. Here an
environment of its own (``WORKER_PROCESSES_URN``) has a worker handler that does it from the launcher
(``runners.worker_pool.run_worker``): the control endpoint, options and worker id go straight to a warm worker, or
to a new worker process when none waits.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Iterable, Mapping, Optional

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import endpoints_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.worker_handlers import GrpcWorkerHandler, WorkerHandler
from apache_beam.transforms.environments import Environment, python_sdk_capabilities
from google.protobuf import json_format, text_format

from runners.worker_main import threads_per_worker
from runners.worker_pool import WarmWorkers, run_worker

logger = logging.getLogger(__name__)

WORKER_PROCESSES_URN = "mmfeat:env:worker_processes:v1"
"""The environment of SDK workers that ``_WorkerProcessHandler`` starts; its payload: ``run_worker``'s settings (JSON)."""


@Environment.register_urn(WORKER_PROCESSES_URN, bytes)
class WorkerProcessesEnvironment(Environment):
    """SDK workers in processes of this machine, started by the launcher: ``settings`` are ``run_worker``'s keyword
    arguments (``launcher_pid``, ``log_level``, ``threads``, ``pool``)."""

    def __init__(self, settings: Mapping[str, Any], capabilities: Iterable[str] = (), artifacts: Iterable[Any] = (),
                 resource_hints: Optional[Mapping[str, bytes]] = None) -> None:
        super().__init__(capabilities, artifacts, resource_hints)
        self.settings = dict(settings)

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and self.settings == getattr(other, "settings", None)

    def __hash__(self) -> int:
        return hash((super().__hash__(), json.dumps(self.settings, sort_keys=True)))

    def to_runner_api_parameter(self, context: Any) -> tuple[str, bytes]:
        return WORKER_PROCESSES_URN, json.dumps(self.settings, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_runner_api_parameter(payload: bytes, capabilities: Iterable[str], artifacts: Iterable[Any],
                                  resource_hints: Mapping[str, bytes], context: Any) -> WorkerProcessesEnvironment:
        return WorkerProcessesEnvironment(json.loads(payload), capabilities, artifacts, resource_hints)


@WorkerHandler.register_environment(WORKER_PROCESSES_URN, bytes)
class _WorkerProcessHandler(GrpcWorkerHandler):
    """Starts one worker of a ``WorkerProcessesEnvironment`` (``run_worker``, in a thread that waits for it to end)."""

    def __init__(self, payload: bytes, state: Any, provision_info: Any, grpc_server: Any) -> None:
        super().__init__(state, provision_info, grpc_server)
        self._settings = json.loads(payload)
        self._thread: Optional[threading.Thread] = None

    def start_worker(self) -> None:
        environment = {
            "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=self.control_address)),
            "PIPELINE_OPTIONS": json_format.MessageToJson(self.provision_info.provision_info.pipeline_options),
            "WORKER_ID": self.worker_id,
        }
        self._thread = threading.Thread(target=self._run, args=(environment,), name=f"mmfeat-{self.worker_id}", daemon=True)
        self._thread.start()

    def _run(self, environment: dict[str, str]) -> None:
        status = run_worker(environment, **self._settings)
        if status:
            logger.error("worker %s exited with status %d", self.worker_id, status)

    def stop_worker(self) -> None:
        if self._thread is not None:
            self._thread.join()


class WorkerProcessesRunner(FnApiRunner):
    """An ``FnApiRunner`` whose SDK workers are ``workers`` processes started by ``runners.worker_main``.

    Beam's ``--direct_running_mode=multi_processing`` would start ``sdk_worker_main`` under a shell instead; its
    ``--direct_num_workers`` is honoured only in that mode, so the worker count is set on the runner itself. With
    ``warm`` (``runners.worker_pool``, started before Beam was imported), the run's workers are those already
    waiting; the ones a run did not use end with it.
    """

    def __init__(self, workers: int, *, log_level: str = "INFO", warm: Optional[WarmWorkers] = None) -> None:
        self.threads = warm.threads if warm is not None else threads_per_worker(workers)
        settings = {"launcher_pid": os.getpid(), "log_level": log_level, "threads": self.threads,
                    "pool": warm.folder if warm is not None else None}
        super().__init__(default_environment=WorkerProcessesEnvironment(settings, capabilities=python_sdk_capabilities()))
        self.workers = workers
        self._warm = warm

    def run_via_runner_api(self, pipeline_proto: Any, options: PipelineOptions) -> Any:
        self._num_workers = self.workers  # run_pipeline has just set it from --direct_num_workers (1)
        try:
            return super().run_via_runner_api(pipeline_proto, options)
        finally:
            if self._warm is not None:
                self._warm.close()
