"""Runner presets: how ``mmfeat extract --runner NAME`` builds a Beam runner and its options.

Presets are registered by name; the CLI's ``--runner`` choices come from this
registry. Each returns a ``RunnerChoice``: the runner, its pipeline options,
and a context to run inside (a Dask cluster started and stopped for the run).
Beam is imported by the preset that builds a runner, not by this module, so the
CLI's ``--help`` and its option errors do not wait for it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

from schemas.errors import ConfigError

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineRunner

logger = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


@dataclass
class RunnerChoice:
    """A runner (instance or Beam name), its pipeline options, and what must run around it; ``spread_over``: the
    direct runner's processes (1: in the launcher; N > 1: ``--workers N``, each handed one key of a grouping, which
    share the extraction's samples, each claiming the next as it is free, ``pipelines.extract.run_extract``), else 0."""

    runner: Union[str, PipelineRunner]
    options: PipelineOptions
    context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)
    spread_over: int = 0


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every preset (each preset checks the ones it needs)."""
    group = parser.add_argument_group("runners")
    group.add_argument("--workers", type=int, default=1, help="direct: worker processes; dask: LocalCluster workers (default 1)")
    group.add_argument("--dask-address", help="dask: scheduler of an existing cluster (tcp://host:8786); default: a LocalCluster")
    group.add_argument("--project", help="dataflow: Google Cloud project")
    group.add_argument("--region", help="dataflow: region, e.g. europe-west1")
    group.add_argument("--temp-location", help="dataflow: gs:// folder for temporary and staging files")
    group.add_argument("--machine-type", help="dataflow: worker machine type, e.g. n1-standard-8")
    group.add_argument("--gpu-type", help="dataflow: attach GPUs, e.g. nvidia-tesla-t4 (needs --sdk-container-image)")
    group.add_argument("--gpu-count", type=int, default=1, help="dataflow: GPUs per worker (default 1)")
    group.add_argument("--sdk-container-image", help="dataflow: worker image built from the project's Dockerfile")
    group.add_argument("--max-num-workers", type=int, help="dataflow: autoscaling limit")


def _direct(args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """Beam's ``FnApiRunner``, named explicitly: in this process, or with ``--workers N`` (N > 1) in N worker processes.

    Beam 2.77.0's ``DirectRunner`` first tries to download the Prism binary
    and silently changes engines when it can; naming ``FnApiRunner`` pins the
    engine. The worker processes start through ``runners.worker_main``, which
    ends them with the launcher (even a killed one) and logs each line once;
    on Linux they start here, before Beam is imported, forked after one
    import (``runners.worker_pool``), and wait for the run (the caller enters
    the choice's ``context`` at once); elsewhere each starts with the run.
    """
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    log_level = getattr(args, "log_level", "INFO")
    warm = None
    if args.workers > 1 and sys.platform.startswith("linux"):  # started before this process imports Beam, to import beside it
        # (forked: macOS's system libraries are not safe in a forked copy; there each worker starts as a new process)
        from runners.worker_main import threads_per_worker
        from runners.worker_pool import WarmWorkers

        warm = WarmWorkers(args.workers, launcher_pid=os.getpid(), log_level=log_level, threads=threads_per_worker(args.workers))
    from apache_beam.options.pipeline_options import PipelineOptions

    if args.workers == 1:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return RunnerChoice(FnApiRunner(), PipelineOptions(beam_args), spread_over=1)
    from runners.worker_runner import WorkerProcessesRunner

    return RunnerChoice(WorkerProcessesRunner(args.workers, log_level=log_level, warm=warm), PipelineOptions(beam_args),
                        context=lambda: contextlib.closing(warm),  # the workers no run claimed end with the command
                        spread_over=args.workers)


@contextlib.contextmanager
def _local_cluster(options: PipelineOptions, workers: int) -> Iterator[None]:
    """A dask ``LocalCluster`` of ``workers`` processes for the run, shut down afterwards."""
    from dask.distributed import LocalCluster, default_client

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        logger.info("started a Dask LocalCluster at %s with %d workers", cluster.scheduler_address, workers)
        options.view_as(_dask_options_class()).address = cluster.scheduler_address
        try:
            yield
        finally:
            try:  # the DaskRunner opens a client of its own and leaves it open; close it before the cluster
                default_client().close()
            except ValueError:
                pass


def _dask_options_class() -> Any:
    from apache_beam.runners.dask.dask_runner import DaskOptions

    return DaskOptions


def _dask(args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """Beam's ``DaskRunner`` on a dask.distributed cluster.

    With ``--dask-address`` the run goes to that scheduler (whose scheduler and
    workers must have mmfeat installed); otherwise a ``LocalCluster`` of
    ``--workers`` processes is started and stopped for the run.
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskRunner

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    # The DaskRunner's default of 128 elements a partition would put a small corpus on one worker.
    if not any(arg.startswith(("--dask_npartitions", "--dask_partition_size")) for arg in beam_args):
        beam_args = beam_args + [f"--dask_npartitions={4 * args.workers if not args.dask_address else 64}"]
    if args.dask_address:
        if not args.dask_address.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ConfigError(f"--dask-address must look like tcp://host:8786 (got {args.dask_address!r})")
        return RunnerChoice(DaskRunner(), PipelineOptions(beam_args + [f"--dask_client_address={args.dask_address}"]))
    options = PipelineOptions(beam_args)
    return RunnerChoice(DaskRunner(), options, context=lambda: _local_cluster(options, max(1, args.workers)))


def project_setup_file() -> str:
    """The ``setup.py`` of this project (for ``--setup_file``), found next to the installed packages."""
    candidate = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    if not os.path.isfile(candidate):
        raise ConfigError("--runner dataflow: cannot find mmfeat's setup.py; install mmfeat from a source checkout (pip install -e .)")
    return candidate


def dataflow_args(args: argparse.Namespace) -> list[str]:
    """DataflowRunner options built from the preset's flags.

    Raises:
        ConfigError: a required flag is missing or a GPU is asked for without a worker image.
    """
    missing = [flag for flag, value in (("--project", args.project), ("--region", args.region), ("--temp-location", args.temp_location)) if not value]
    if missing:
        raise ConfigError(f"--runner dataflow needs {', '.join(missing)}")
    if not args.temp_location.startswith("gs://"):
        raise ConfigError(f"--temp-location must be a gs:// folder (got {args.temp_location!r})")
    built = [
        "--runner=DataflowRunner",
        f"--project={args.project}",
        f"--region={args.region}",
        f"--temp_location={args.temp_location}",
        f"--setup_file={project_setup_file()}",
    ]
    if args.machine_type:
        built.append(f"--machine_type={args.machine_type}")
    if args.max_num_workers:
        built.append(f"--max_num_workers={args.max_num_workers}")
    if args.sdk_container_image:
        built.append(f"--sdk_container_image={args.sdk_container_image}")
    if args.gpu_type:
        if not args.sdk_container_image:
            raise ConfigError("--gpu-type needs --sdk-container-image: GPU workers run the image built from the project's Dockerfile")
        built.append(f"--dataflow_service_options=worker_accelerator=type:{args.gpu_type};count:{args.gpu_count};install-nvidia-driver")
    return built


def _dataflow(args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """Google Cloud Dataflow, with workers that install this project through ``--setup_file``."""
    built = dataflow_args(args)
    if importlib.util.find_spec("apitools") is None:
        raise ConfigError("--runner dataflow needs Beam's GCP extras: pip install 'apache-beam[gcp]==2.77.0'")
    from apache_beam.options.pipeline_options import PipelineOptions

    return RunnerChoice("DataflowRunner", PipelineOptions(beam_args + built))


def _portable(runner_name: str, needed: str) -> Callable[[argparse.Namespace, list[str]], RunnerChoice]:
    """Flink or Spark through Beam's portable runner; their options (master, job-server jar) pass through."""

    def build(args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
        if not any(arg.startswith(needed) for arg in beam_args):
            raise ConfigError(f"--runner {runner_name[:-6].lower()} needs {needed}=... (and, offline, the job-server jar option)")
        from apache_beam.options.pipeline_options import PipelineOptions

        return RunnerChoice(runner_name, PipelineOptions(beam_args))

    return build


RUNNER_PRESETS: dict[str, Callable[[argparse.Namespace, list[str]], RunnerChoice]] = {
    "direct": _direct,
    "dask": _dask,
    "dataflow": _dataflow,
    "flink": _portable("FlinkRunner", "--flink_master"),
    "spark": _portable("SparkRunner", "--spark_master_url"),
}


def build_runner(name: str, args: argparse.Namespace, beam_args: list[str]) -> RunnerChoice:
    """The ``RunnerChoice`` of preset ``name``. Raises ``ConfigError`` for an unknown name or bad options."""
    if name not in RUNNER_PRESETS:
        raise ConfigError(f"--runner must be one of {sorted(RUNNER_PRESETS)} (got {name!r})")
    return RUNNER_PRESETS[name](args, beam_args)
