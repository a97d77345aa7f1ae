rule train_model:
    """Train a demo model on its data set's train split; weights + model.json (accuracy)."""
    input:
        lambda w: plan.images(plan.model_cfg(w.model)["dataset"], "original"),
    output:
        weights=f"{R}/models/{{model}}/weights.pt",
        info=f"{R}/models/{{model}}/model.json",
    log:
        f"{R}/logs/models/{{model}}.log",
    threads: config["threads"]["train"]
    params:
        job=lambda w: plan.train_job(w.model),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/train_model.py"


rule predict:
    """Label, prediction, probabilities and top-5 of every image of a variant."""
    input:
        images=f"{R}/data/{{dataset}}/{{variant}}.zarr",
        model=lambda w: plan.model_inputs(w.model),
    output:
        f"{R}/predictions/{{dataset}}/{{model}}/{{variant}}.parquet",
    log:
        f"{R}/logs/predictions/{{dataset}}/{{model}}/{{variant}}.log",
    params:
        job=lambda w: plan.predict_job(w.dataset, w.model, w.variant),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/predict.py"


rule select:
    """A selection (correct, confident, ...) from the predictions on the original images."""
    input:
        f"{R}/predictions/{{dataset}}/{{model}}/original.parquet",
    output:
        f"{R}/selection/{{dataset}}/{{model}}/{{filter}}.parquet",
    log:
        f"{R}/logs/selection/{{dataset}}/{{model}}/{{filter}}.log",
    params:
        params=lambda w: config["filters"][w.filter] or {},
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/select.py"
