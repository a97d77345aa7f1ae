rule lpi_references:
    """LPI's reference set of a model: k-means representatives of its logits over the
    training split, with density weights (once per model and settings)."""
    input:
        images=lambda w: plan.model_images(w.model, "original"),
        model=lambda w: plan.model_inputs(w.model),
    output:
        directory(P.lpi_references),
    threads: config["threads"]["explain"]
    log:
        P.log("references/{dataset}/{model}/{refset}"),
    resources:
        gpu=config["explain"]["gpu"],
    params:
        job=lambda w: plan.reference_set_job(w.dataset, w.model, w.refset),
        signature=lambda w: signature(plan.reference_set_job(w.dataset, w.model, w.refset)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/lpi_references.py"


rule explain:
    """Attribution maps of the selected images: one Zarr store per
    (dataset, model, method, variant)."""
    input:
        images=lambda w: plan.model_images(w.model, w.variant),
        selections=lambda w: plan.explain_selections(w.dataset, w.model, w.method, w.variant),
        model=lambda w: plan.model_inputs(w.model),
        references=lambda w: plan.explain_references(w.dataset, w.model, w.method, w.variant),
    output:
        directory(P.saliency),
    wildcard_constraints:
        method=plan.alternatives(plan.explained_alone()),
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


# A step sweep whose method evaluates one path for all counts (IG, Blur IG on nested grids):
# one job per (dataset, model, variant) writes one store per count, `{run}@{steps}`. A
# profile cannot name these rules: they take `explain`'s --set-resources and --groups.
_explain_resources = resources_of(workflow, "explain")

for _run in plan.sweeps:

    rule:
        name:
            f"explain_sweep_{_run}"
        input:
            images=lambda w: plan.model_images(w.model, w.variant),
            selections=lambda w, run=_run: plan.explain_selections(
                w.dataset, w.model, run, w.variant
            ),
            model=lambda w: plan.model_inputs(w.model),
            references=lambda w, run=_run: plan.explain_references(
                w.dataset, w.model, run, w.variant
            ),
        output:
            [directory(p) for p in plan.sweep_stores(_run)],
        threads: config["threads"]["explain"]
        log:
            P.log(f"saliency/{{dataset}}/{{model}}/{_run}/{{variant}}"),
        resources:
            **{"gpu": config["explain"]["gpu"], **_explain_resources},
        group:
            group_of(workflow, "explain")
        params:
            job=lambda w, run=_run: plan.explain_job(w.dataset, w.model, run, w.variant),
            signature=lambda w, run=_run: signature(
                plan.explain_job(w.dataset, w.model, run, w.variant)
            ),
        conda:
            "../envs/xaipipe.yaml"
        script:
            "../scripts/explain.py"
