rule image_store:
    """Images (uint8), labels and masks of one variant of a data set."""
    output:
        directory(f"{R}/data/{{dataset}}/{{variant}}.zarr"),
    log:
        f"{R}/logs/data/{{dataset}}/{{variant}}.log",
    params:
        job=lambda w: plan.image_store_job(w.dataset, w.variant),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/image_store.py"
