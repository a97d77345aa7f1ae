rule train_model:
    """Train a demo model on its data set's train split; weights + model.json (accuracy)."""
    input:
        lambda w: plan.model_images(w.model, "original"),
    output:
        weights=P.weights,
        info=P.model_info,
    log:
        P.log("models/{model}"),
    threads: config["threads"]["train"]
    params:
        job=lambda w: plan.train_job(w.model),
        signature=lambda w: signature(plan.train_job(w.model)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/train_model.py"


rule predict:
    """Label, prediction, probabilities and top-5 of every image of a variant."""
    input:
        images=lambda w: plan.model_images(w.model, w.variant),
        model=lambda w: plan.model_inputs(w.model),
    output:
        P.predictions,
    log:
        P.log("predictions/{dataset}/{model}/{variant}"),
    params:
        job=lambda w: plan.predict_job(w.model),
        signature=lambda w: signature(plan.predict_job(w.model)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/predict.py"


rule select:
    """A selection (correct, confident, ...) from the predictions on one variant."""
    input:
        P.predictions,
    output:
        P.selection,
    log:
        P.log("selection/{dataset}/{model}/{filter}/{variant}"),
    params:
        job=lambda w: plan.select_job(w.filter),
        signature=lambda w: signature(plan.select_job(w.filter)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/select.py"
