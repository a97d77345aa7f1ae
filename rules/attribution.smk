rule explain:
    """Attribution maps of the selected images: one Zarr store per
    (dataset, model, method, variant)."""
    input:
        images=f"{R}/data/{{dataset}}/{{variant}}.zarr",
        selection=f"{R}/selection/{{dataset}}/{{model}}/{config['explain']['filter']}.parquet",
        model=lambda w: plan.model_inputs(w.model),
    output:
        directory(f"{R}/saliency/{{dataset}}/{{model}}/{{method}}/{{variant}}.zarr"),
    threads: config["threads"]["explain"]
    log:
        f"{R}/logs/saliency/{{dataset}}/{{model}}/{{method}}/{{variant}}.log",
    resources:
        gpu=config["explain"]["gpu"],
    params:
        job=lambda w: plan.explain_job(w.dataset, w.model, w.method, w.variant),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/explain.py"
