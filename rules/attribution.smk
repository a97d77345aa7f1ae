rule explain:
    """Attribution maps of the selected images: one Zarr store per
    (dataset, model, method, variant)."""
    input:
        images=lambda w: plan.model_images(w.model, w.variant),
        selections=lambda w: plan.explain_selections(w.dataset, w.model, w.method, w.variant),
        model=lambda w: plan.model_inputs(w.model),
    output:
        directory(P.saliency),
    threads: config["threads"]["explain"]
    log:
        P.log("saliency/{dataset}/{model}/{method}/{variant}"),
    resources:
        gpu=config["explain"]["gpu"],
    params:
        job=lambda w: plan.explain_job(w.dataset, w.model, w.method, w.variant),
        signature=lambda w: signature(plan.explain_job(w.dataset, w.model, w.method, w.variant)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/explain.py"
