# xaipipe: data -> variants -> model filter -> attribution -> Zarr -> Dask metrics -> tables
# and figures, one target rule per experiment. Rules are thin: each script unpacks
# `snakemake.*` and calls xaipipe.pipeline; xaipipe.config.Plan says what runs and with which
# arguments (`signature`: what a job's result depends on, Snakemake's rerun trigger),
# xaipipe.config.result_paths holds every result path.
from snakemake.utils import min_version

import os

from xaipipe import repro
from xaipipe.config import setup_workflow, snakemake_targets
from xaipipe.jobs import signature
from xaipipe.parallel import allocator_environment
from xaipipe.slurm import cap_status_interval, run_jobs_in_allocation, group_of, resources_of

min_version("9.0")


configfile: "config.yaml"


# the checks of data on disk cover the experiments asked for (the targets, read while this file
# is parsed: xaipipe.config.snakemake_targets), in the process that plans the run; the job
# processes (--target-jobs, SLURM or local subprocesses) do not repeat them
plan = setup_workflow(
    config,
    files=["config.yaml", *workflow.overwrite_configfiles],
    targets=snakemake_targets(workflow),
    check_data=workflow.is_main_process,
    presets=os.path.join(workflow.basedir, "presets"),
)
P = plan.P

# SLURM: a cap on the executor plugin's status-check back-off, in the process that submits
# (xaipipe.slurm; no effect with other executors)
if workflow.is_main_process:
    cap_status_interval(config["slurm"]["max_seconds_between_status_checks"])
    run_jobs_in_allocation(config["slurm"]["job_runner"])

# reproducible mode: pinned CPU kernels in every job (read when a job imports torch)
if config.get("reproducible"):
    os.environ.update(repro.environment())
# the jobs' allocator (xaipipe.parallel.retain_freed_memory; read by each job's set-up)
os.environ.update(allocator_environment(config.get("allocator", "retain")))
# conda: envs/xaipipe.yaml installs this checkout from $XAIPIPE_ROOT (Snakemake copies the
# env file to .snakemake/conda/, where a relative path would point elsewhere)
os.environ.update(XAIPIPE_ROOT=os.path.abspath(workflow.basedir))


wildcard_constraints:
    **plan.wildcard_constraints(),


report: "report/workflow.rst"


rule all:
    """The experiments listed under `run:`."""
    input:
        plan.all_targets(),
    default_target: True


for _experiment in plan.experiments:

    rule:
        name:
            _experiment
        input:
            plan.experiment_targets(_experiment),


include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/attribution.smk"
include: "rules/metrics.smk"
include: "rules/report.smk"
