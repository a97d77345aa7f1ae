"""How many CPUs a job may use, and the Dask client the metric jobs run on.

A job's threads come from its allocation, never from ``os.cpu_count()`` (which on a cluster node
counts CPUs that belong to other jobs): the smaller of the rule's Snakemake threads, the CPUs
the process may run on (``sched_getaffinity``, which SLURM's cgroups and ``taskset`` set) and
``SLURM_CPUS_PER_TASK`` when SLURM sets it.

``dask_client`` (``score.scheduler`` in the config):
- ``local``: a LocalCluster of ``workers`` worker *processes* with one thread each, so that
  pure-Python / GIL-holding work (PIC's WebP encoding and interpolation) runs in parallel; torch
  in each worker uses one thread. With one worker the chunks run in the job's own process
  (a cluster of one process would only add its start-up). The dashboard is off unless asked for
  (``score.dashboard``), and then binds 127.0.0.1 only, on a free port whose link is logged
  to the ``xaipipe`` logger (the job's log). It needs ``bokeh`` (``pip install -e
  '.[dashboard]'``), which is not a dependency: without it :func:`dask_client` stops with a
  :class:`~xaipipe.errors.ConfigError` (distributed itself would only serve a page saying
  that bokeh is missing). Off, the scheduler still answers a few HTTP routes (``/health``,
  ``/metrics``, ``/info``) on 127.0.0.1 (port 8787, or a free one when taken), and each
  worker on a free port of 127.0.0.1: distributed always starts these servers.
- ``threads`` / ``synchronous``: Dask's local schedulers, no ``distributed``.
- anything else: the address of a running scheduler (e.g. a dask-jobqueue ``SLURMCluster``;
  README, "Dask"). Tasks carry absolute paths, so workers started elsewhere find the files.

``retain_freed_memory`` (``allocator: retain`` in the config, the default): a job process keeps
the memory it frees for its next allocations instead of handing it back to the OS.

Scripts that start a LocalCluster must guard their body with ``if __name__ == "__main__"``:
worker processes are spawned and re-import the main module.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os

from .errors import ConfigError

log = logging.getLogger("xaipipe")


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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
ALLOCATORS = ("retain", "system")


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for reuse: no ``mmap`` for large
    blocks (``M_MMAP_MAX = 0``) and no trimming of the heap (``M_TRIM_THRESHOLD = -1``).
    Returns whether it was applied (False off glibc, e.g. macOS or musl: nothing changes).

    Why: with glibc's defaults every tensor over the (adaptive, at most 32 MB) mmap threshold
    is a fresh mapping, returned to the OS when freed, and the next one is paid again in page
    faults as its pages are first touched: an optimisation step of ShearletX at S = 16 and
    256 x 256 touched 1.4 GB of fresh pages, about 40 % of the step on 2 CPU cores
    (README, "Mask methods"). Retained, the same blocks are reused without a fault. The price:
    the process's resident memory stays at its peak until it exits, which is what a job's
    memory request covers anyway (PyTorch's CUDA caching allocator does the same on the GPU).
    Numbers do not change: only where memory comes from. Call it once, early; it applies to
    the whole process. The worker processes of a score job's LocalCluster get the same
    through their environment (:func:`worker_allocator_config`)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version                   # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):    # TypeError: CDLL(None) on Windows
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def _checked_allocator(value: str, name: str) -> str:
    if value not in ALLOCATORS:
        raise ValueError(f"{name}={value!r}: allowed {', '.join(ALLOCATORS)}")
    return value


def worker_allocator_config(allocator: str) -> dict:
    """Dask config for the worker processes of a LocalCluster under ``allocator``.

    ``retain``: glibc's ``MALLOC_MMAP_MAX_=0`` and a trim threshold no heap reaches, in the
    environment the nanny starts each worker with (in place of distributed's own
    ``MALLOC_TRIM_THRESHOLD_=65536``, which returns freed memory at once and makes every large
    tensor of the next chunk fault its pages in again: a score job's insertion chunks ran
    2.7x slower in such workers than with retained memory, README "Benchmarks"), and
    distributed's memory thresholds that act on the resident size off (``target``, ``spill``,
    ``pause``): a worker that keeps its peak would otherwise be paused for good once that
    peak is over 80 % of its share of the memory. The tasks hold no data between them, so
    spilling would not help; ``terminate`` (95 %) stays as the last guard, and the job's own
    memory limit (SLURM's cgroup) is the real one. ``system``: distributed's defaults."""
    if _checked_allocator(allocator, "allocator") == "system":
        return {}
    env = "distributed.nanny.pre-spawn-environ"
    mem = "distributed.worker.memory"
    return {f"{env}.MALLOC_MMAP_MAX_": 0, f"{env}.MALLOC_TRIM_THRESHOLD_": 1 << 62,
            f"{mem}.target": False, f"{mem}.spill": False, f"{mem}.pause": False}


def allocator_environment(allocator: str) -> dict:
    """The variable through which the workflow passes its ``allocator`` to its jobs."""
    return {"XAIPIPE_ALLOCATOR": _checked_allocator(allocator, "allocator")}


def allocator_requested() -> str:
    """The job allocator the workflow asked for (``XAIPIPE_ALLOCATOR``, set by the Snakefile
    from the config's ``allocator``): ``retain`` (default) or ``system``."""
    return _checked_allocator(os.environ.get("XAIPIPE_ALLOCATOR", "retain"),
                              "XAIPIPE_ALLOCATOR")


def check_dashboard() -> None:
    """Stop with a :class:`ConfigError` when the Dask dashboard cannot be served: it needs
    ``bokeh`` in the version distributed asks for (not a dependency of xaipipe; the
    ``dashboard`` extra installs it). Without it distributed would start anyway and serve
    only a page saying that bokeh is missing."""
    from distributed.versions import BOKEH_REQUIREMENT     # e.g. bokeh>=3.1.0
    fix = (f"pip install '{BOKEH_REQUIREMENT}' (or pip install -e '.[dashboard]'), "
           "or set score.dashboard: false")
    if importlib.util.find_spec("bokeh") is None:
        raise ConfigError("score.dashboard: true needs the Python package bokeh, which is "
                          f"not installed: {fix}")
    from importlib.metadata import PackageNotFoundError, version
    try:
        have = version("bokeh")
    except PackageNotFoundError:        # importable without metadata: let distributed judge
        return
    if not BOKEH_REQUIREMENT.specifier.contains(have, prereleases=True):
        raise ConfigError(f"score.dashboard: true needs {BOKEH_REQUIREMENT}, not "
                          f"bokeh=={have}: {fix}")


@contextlib.contextmanager
def _environ_restored():
    """Put ``os.environ`` back as it was on exit: distributed's nanny writes its
    ``pre-spawn-environ`` into this process's environment before it starts a worker, and
    it would stay for every later child process."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def dask_client(scheduler: str | None = "local", workers: int = 1, dashboard: bool = False):
    """A context in which ``dask.compute`` runs on ``scheduler`` (module docstring); yields
    the distributed ``Client`` or None. Dask is imported here, not with the module: the jobs
    that only set up their threads (every job) do not pay for it."""
    import dask
    import dask.local
    import dask.threaded
    workers = max(1, int(workers))
    # Dask's local schedulers are given as functions, not names: a name makes every compute
    # check for `distributed` (an import of 0.5 s in each score job)
    if scheduler in (None, "local") and workers == 1 and not dashboard:
        with dask.config.set(scheduler=dask.local.get_sync):
            yield None
    elif scheduler in (None, "local"):
        if dashboard:
            check_dashboard()
        from distributed import Client, LocalCluster
        cfg = worker_allocator_config(allocator_requested())
        with _environ_restored(), dask.config.set(cfg), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             host="127.0.0.1",
                             dashboard_address="127.0.0.1:0" if dashboard else None,
                             ) as cluster, Client(cluster) as client:
            if dashboard:
                log.info("Dask dashboard: %s", client.dashboard_link)
            yield client
    elif scheduler in ("threads", "synchronous"):
        get = dask.threaded.get if scheduler == "threads" else dask.local.get_sync
        with dask.config.set(scheduler=get, num_workers=workers):
            yield None
    else:
        from distributed import Client
        with Client(scheduler) as client:
            yield client
