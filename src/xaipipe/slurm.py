"""A cap on the SLURM executor plugin's status-check back-off (``slurm.max_seconds_between_
status_checks`` in the config; README, "Cluster (SLURM)").

snakemake-executor-plugin-slurm (2.8.0) sleeps ``slurm-init-seconds-before-status-checks``
before its first status check and after every check that saw a job end, and 10 s longer after
every check that saw none, up to 180 s. A job is therefore noticed as finished at 5, 20, 45,
80, 125, ... s after the last noticed end: a 50 s job waits until 80 s, a 90 s one until 125 s,
and its dependants are submitted only then. On the tiny run through a one-node cluster every
job's end was noticed at exactly 45, 80 or 125 s, whatever the job took (DEVELOPERS.md).

:func:`cap_status_interval` clamps the interval the plugin sets (``next_seconds_between_status_
checks``, a property of the executor-plugin interface's ``RemoteExecutor``) to ``seconds``.
Each check is one ``squeue`` call for all of the run's jobs, so a 10 s cap costs one cheap
call per 10 s. The Snakefile applies it in the main Snakemake process only; it changes
nothing for other executors, and does nothing (returns False) where the plugin is not
installed or no longer has that property.
"""
from __future__ import annotations


class _Capped(property):
    """The plugin's property with a clamping setter; ``base`` is the original."""
    base: property


def cap_status_interval(seconds: float | None) -> bool:
    """Clamp the SLURM plugin's status-check interval to ``seconds`` (None: the plugin's own
    back-off). Idempotent; returns whether the plugin is now capped."""
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:
        return False
    current = getattr(Executor, "next_seconds_between_status_checks", None)
    base = current.base if isinstance(current, _Capped) else current
    if not isinstance(base, property) or base.fset is None:
        return False
    if seconds is None:
        if isinstance(current, _Capped):
            delattr(Executor, "next_seconds_between_status_checks")
        return False

    def fset(self, value):
        base.fset(self, None if value is None else min(value, seconds))

    capped = _Capped(base.fget, fset, doc=f"{base.__doc__ or ''} (capped at {seconds} s)")
    capped.base = base
    Executor.next_seconds_between_status_checks = capped
    return True
