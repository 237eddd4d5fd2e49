"""Where chunk-parallel work runs: an existing Dask cluster, or a local one started for the step."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from distributed import Client


class DaskCluster(dg.ConfigurableResource):
    """A Dask cluster for chunk-parallel work over Zarr stores (e.g. the PCA behind the embedding map).

    With ``scheduler_address`` (tcp://host:8786: a cluster from dask-kubernetes, dask-jobqueue, or
    `dask scheduler` + `dask worker` by hand) steps connect to it and leave it running; without,
    each step starts a ``distributed.LocalCluster`` on its machine and closes it afterwards."""

    scheduler_address: str | None = Field(default=None, description="An existing cluster's scheduler (tcp://...).")
    n_workers: int = Field(default=2, ge=1, description="Local cluster: worker processes.")
    threads_per_worker: int = Field(default=1, ge=1, description="Local cluster: threads per worker.")
    processes: bool = Field(default=True, description="Local cluster: workers in processes (else threads).")
    memory_limit: str = Field(default="auto", description="Local cluster: memory per worker (e.g. 4GiB).")
    connect_timeout_seconds: float = Field(default=30, gt=0, description="Giving up on an unreachable scheduler.")

    @contextmanager
    def client(self) -> Iterator["Client"]:
        """A client that is also Dask's default scheduler inside the ``with`` block."""
        from distributed import Client, LocalCluster  # imported here: a slow import most steps do not need

        if self.scheduler_address:
            with Client(self.scheduler_address, set_as_default=True, timeout=self.connect_timeout_seconds) as client:
                yield client
            return
        with LocalCluster(n_workers=self.n_workers, threads_per_worker=self.threads_per_worker,
                          processes=self.processes, memory_limit=self.memory_limit,
                          dashboard_address=None) as cluster, Client(cluster, set_as_default=True) as client:
            yield client
