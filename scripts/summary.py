from xaipipe.pipeline import log_to, setup_job, summary

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    summary(snakemake.output.summary, list(snakemake.input.scores),
            list(snakemake.input.selections), snakemake.params.job,
            per_image=snakemake.output.per_image)
