rule score:
    """Per-image scores of one saliency store by one metric, computed on Dask."""
    input:
        saliency=f"{R}/saliency/{{dataset}}/{{model}}/{{method}}/{{variant}}.zarr",
        images=f"{R}/data/{{dataset}}/{{variant}}.zarr",
        fill=lambda w: plan.fill_path(w.dataset, w.metric) or [],
        model=lambda w: plan.model_inputs(w.model),
    output:
        f"{R}/metrics/{{dataset}}/{{model}}/{{metric}}/{{method}}/{{variant}}.parquet",
    threads: config["threads"]["score"]
    log:
        f"{R}/logs/metrics/{{dataset}}/{{model}}/{{metric}}/{{method}}/{{variant}}.log",
    params:
        job=lambda w: plan.score_job(w.dataset, w.model, w.metric, w.method, w.variant),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/score.py"


rule aggregate:
    """Mean and 95% bootstrap interval of every per-image score: CSV and Markdown."""
    input:
        [e[1] for e in plan.aggregate_entries()],
    output:
        csv=report(plan.tables()["csv"], caption="../report/summary.rst", category="Tables"),
        md=plan.tables()["md"],
    log:
        f"{R}/logs/tables/summary.log",
    params:
        entries=plan.aggregate_entries(),
        n_boot=config["score"]["bootstrap"],
        level=config["score"]["level"],
        seed=config["seed"],
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/aggregate.py"
