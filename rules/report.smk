rule table:
    """A registered table of an experiment: CSV, Markdown, LaTeX and HTML (shown on the report
    page)."""
    input:
        summary=P.summary,
        per_image=P.per_image,
    output:
        csv=report(
            P.fmt("table", experiment="{experiment}", table="{table}", ext="csv"),
            caption="../report/table.rst",
            category="{experiment}",
            subcategory="Tables",
        ),
        md=P.fmt("table", experiment="{experiment}", table="{table}", ext="md"),
        tex=P.fmt("table", experiment="{experiment}", table="{table}", ext="tex"),
        html=report(
            P.fmt("table", experiment="{experiment}", table="{table}", ext="html"),
            caption="../report/table.rst",
            category="{experiment}",
            subcategory="Tables",
        ),
    log:
        P.log("papers/{experiment}/tables/{table}"),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/table.py"


rule figure:
    """A registered figure of an experiment: PNG and PDF."""
    input:
        unpack(lambda w: plan.figure_inputs(w.experiment, w.figure)),
    output:
        png=report(
            P.fmt("figure", experiment="{experiment}", figure="{figure}", ext="png"),
            caption="../report/figure.rst",
            category="{experiment}",
            subcategory="Figures",
        ),
        pdf=P.fmt("figure", experiment="{experiment}", figure="{figure}", ext="pdf"),
    log:
        P.log("papers/{experiment}/figures/{figure}"),
    params:
        job=lambda w: plan.figure_job(w.experiment, w.figure),
        signature=lambda w: signature(plan.figure_job(w.experiment, w.figure)),
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/figure.py"
