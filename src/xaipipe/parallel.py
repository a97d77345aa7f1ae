"""How many CPUs a job may use, and the Dask client the metric jobs run on.

A job's threads come from its allocation, never from ``os.cpu_count()`` (which on a cluster node
counts CPUs that belong to other jobs): the smaller of the rule's Snakemake threads, the CPUs
the process may run on (``sched_getaffinity``, which SLURM's cgroups and ``taskset`` set) and
``SLURM_CPUS_PER_TASK`` when SLURM sets it.

``dask_client`` (``score.scheduler`` in the config):
- ``local``: a LocalCluster of ``workers`` worker *processes* with one thread each, so that
  pure-Python / GIL-holding work (PIC's WebP encoding and interpolation) runs in parallel; torch
  in each worker uses one thread. With one worker the chunks run in the job's own process
  (a cluster of one process would only add its start-up). The dashboard is off unless asked for,
  and then binds 127.0.0.1 only.
- ``threads`` / ``synchronous``: Dask's local schedulers, no ``distributed``.
- anything else: the address of a running scheduler (e.g. a dask-jobqueue ``SLURMCluster``;
  README, "Dask"). Tasks carry absolute paths, so workers started elsewhere find the files.

Scripts that start a LocalCluster must guard their body with ``if __name__ == "__main__"``:
worker processes are spawned and re-import the main module.
"""
from __future__ import annotations

import contextlib
import os

import dask
import dask.local
import dask.threaded


def allocated_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by ``SLURM_CPUS_PER_TASK``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def job_threads(threads: int | None = None) -> int:
    """A job's thread count: ``threads`` (the rule's) capped by :func:`allocated_cpus`."""
    n = allocated_cpus()
    return max(1, min(int(threads), n)) if threads else n


def set_torch_threads(threads: int | None = None) -> int:
    """Torch intra-op threads = :func:`job_threads`; returns the number set."""
    import torch
    n = job_threads(threads)
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def dask_client(scheduler: str | None = "local", workers: int = 1, dashboard: bool = False):
    """A context in which ``dask.compute`` runs on ``scheduler`` (module docstring); yields
    the distributed ``Client`` or None."""
    workers = max(1, int(workers))
    # Dask's local schedulers are given as functions, not names: a name makes every compute
    # check for `distributed` (an import of 0.5 s in each score job)
    if scheduler in (None, "local") and workers == 1 and not dashboard:
        with dask.config.set(scheduler=dask.local.get_sync):
            yield None
    elif scheduler in (None, "local"):
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1",
                          dashboard_address="127.0.0.1:0" if dashboard else None,
                          ) as cluster, Client(cluster) as client:
            yield client
    elif scheduler in ("threads", "synchronous"):
        get = dask.threaded.get if scheduler == "threads" else dask.local.get_sync
        with dask.config.set(scheduler=get, num_workers=workers):
            yield None
    else:
        from distributed import Client
        with Client(scheduler) as client:
            yield client
