"""A cap on the SLURM executor plugin's status-check back-off (``slurm.max_seconds_between_
status_checks`` in the config; README, "Cluster (SLURM)").

snakemake-executor-plugin-slurm (2.8.0) sleeps ``slurm-init-seconds-before-status-checks``
before its first status check and after every check that saw a job end, and 10 s longer after
every check that saw none, up to 180 s. A job is therefore noticed as finished at 5, 20, 45,
80, 125, ... s after the last noticed end: a 50 s job waits until 80 s, a 90 s one until 125 s,
and its dependants are submitted only then. On the tiny run through a one-node cluster every
job's end was noticed at exactly 45, 80 or 125 s, whatever the job took (``docs/cluster.md``).

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


_JOBSTEP_ARGS = "--executor slurm-jobstep --jobs 1"


def run_jobs_in_allocation(runner: str = "local") -> bool:
    """How a SLURM job runs its rule(s) inside its allocation (``slurm.job_runner``).

    ``"jobstep"`` is the plugin's own way: the batch script starts Snakemake with the
    ``slurm-jobstep`` executor and ``--jobs 1``, which ``srun``s a second Snakemake per rule,
    one after the other (group jobs included). ``"local"`` gives the batch script's Snakemake
    the local executor instead: it runs the job's rules itself, as a local run does, side by
    side up to the job's ``--cores`` (the allocation). That is one workflow start-up per SLURM
    job instead of two, and group jobs keep their parallelism. Returns whether the plugin now
    runs jobs locally in their allocation."""
    try:
        from snakemake_executor_plugin_slurm import Executor
    except ImportError:
        return False
    current = Executor.additional_general_args
    base = getattr(current, "base", current)
    if runner == "jobstep":
        Executor.additional_general_args = base
        return False

    def additional_general_args(self):
        args = base(self)
        if _JOBSTEP_ARGS not in args:
            raise RuntimeError(f"xaipipe.slurm: the SLURM plugin's job arguments {args!r} no "
                               f"longer hold {_JOBSTEP_ARGS!r}; set slurm.job_runner: jobstep")
        return args.replace(_JOBSTEP_ARGS, "--executor local")

    additional_general_args.base = base
    Executor.additional_general_args = additional_general_args
    return True


def resources_of(workflow, rule: str) -> dict:
    """The command line's (or profile's) ``--set-resources`` entries of ``rule``. Rules whose
    names come from the config (the step-sweep rules ``explain_sweep_<run>``) cannot be named
    in a profile written beforehand, so they take the resources of the rule they stand in for
    (``explain``; with :func:`group_of`, its grouping too). Resources given for such a rule
    itself (``--set-resources explain_sweep_igs:mem_mb=…``) still win: Snakemake applies them
    after the rule's own directive."""
    settings = workflow.resource_settings.overwrite_resources.get(rule, {})
    items = settings.items() if hasattr(settings, "items") else ()
    return {name: getattr(value, "raw", value) for name, value in items}


def group_of(workflow, rule: str):
    """A ``group:`` function giving a job ``rule``'s ``--groups`` entry (None: no group). It
    is read when the DAG is built, after Snakemake has taken the profile's groups (they are
    not known yet while the Snakefile is parsed); a local run never asks."""
    return lambda wildcards: workflow.group_settings.overwrite_groups.get(rule)
