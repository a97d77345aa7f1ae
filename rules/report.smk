rule figures:
    """Saliency grid (images x methods) and AUC bar charts, PNG and PDF."""
    input:
        summary=plan.tables()["csv"],
        stores=list(plan.report_stores().values()),
        images=plan.images(plan.datasets[0], config["report"]["variant"]),
    output:
        grid_png=report(plan.figures()["grid_png"], caption="../report/grid.rst",
                        category="Figures"),
        grid_pdf=plan.figures()["grid_pdf"],
        bars_png=report(plan.figures()["bars_png"], caption="../report/bars.rst",
                        category="Figures"),
        bars_pdf=plan.figures()["bars_pdf"],
    log:
        f"{R}/logs/figures.log",
    params:
        stores=plan.report_stores(),
        split=config["explain"]["split"],
        n_images=config["report"]["images"],
    conda:
        "../envs/xaipipe.yaml"
    script:
        "../scripts/figures.py"
