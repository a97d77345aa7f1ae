rule image_store:
    """Images (uint8), labels and masks of one variant of a data set, preprocessed."""
    output:
        directory(P.images),
    log:
        P.log("data/{dataset}/{preprocess}/{variant}"),
    params:
        job=lambda w: plan.image_store_job(w.dataset, w.preprocess, w.variant),
        signature=lambda w: signature(plan.image_store_job(w.dataset, w.preprocess, w.variant)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/image_store.py"
