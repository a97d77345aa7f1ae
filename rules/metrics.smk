rule score:
    """Per-image scores of one saliency store by one metric, computed on Dask; the inputs are
    what the metric declares it needs."""
    input:
        unpack(
            lambda w: plan.score_inputs(w.dataset, w.model, w.metric, w.method, w.variant)
        ),
    output:
        P.scores,
    threads: config["threads"]["score"]
    log:
        P.log("metrics/{dataset}/{model}/{metric}/{method}/{variant}"),
    params:
        job=lambda w: plan.score_job(w.dataset, w.model, w.metric, w.method, w.variant),
        signature=lambda w: signature(plan.score_job(w.dataset, w.model, w.metric, w.method, w.variant)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/score.py"


rule summary:
    """An experiment's scores aggregated per (model, variant, method, metric, score): mean and
    bootstrap interval by default, or the metric's own aggregation."""
    input:
        unpack(lambda w: plan.summary_inputs(w.experiment)),
    output:
        summary=P.summary,
        per_image=P.per_image,
    log:
        P.log("papers/{experiment}/summary"),
    params:
        job=lambda w: plan.summary_job(w.experiment),
        signature=lambda w: signature(plan.summary_job(w.experiment)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/summary.py"
