"""Fixtures of the pipeline tests."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """The address of one dask ``LocalCluster`` (two worker processes) for every DaskRunner test of the session.

    Shared because starting a cluster and importing Beam, torch and the encoders in its workers costs more than the
    small runs these tests make on it; and stopped at the end, because Beam's ``DaskRunner()`` without an address
    starts a ``LocalCluster`` of its own and never stops it: its processes stayed up, busy with heartbeats, for the
    rest of the session. The CLI's own cluster (``--runner dask``) is tested in ``tests/runners/test_presets.py``.
    """
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def dask_address(dask_cluster: str) -> Iterator[str]:
    """``dask_cluster``'s address for one test; the client the DaskRunner opened on it (and leaves open) is closed after."""
    yield dask_cluster
    from dask.distributed import default_client

    try:
        default_client().close()
    except ValueError:  # the test opened none
        pass
