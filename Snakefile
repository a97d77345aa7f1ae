# xaipipe: data -> variants -> model filter -> attribution -> Zarr -> Dask metrics -> report.
# Rules are thin: each script unpacks `snakemake.*` and calls xaipipe.pipeline.
from snakemake.utils import min_version, validate

from xaipipe.config import Plan, check_config

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")
check_config(config)
plan = Plan(config)
R = plan.R


wildcard_constraints:
    **plan.wildcard_constraints(),


report: "report/workflow.rst"


rule all:
    input:
        plan.all_targets(),
    default_target: True


include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/attribution.smk"
include: "rules/metrics.smk"
include: "rules/report.smk"
