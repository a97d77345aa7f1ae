from xaipipe.pipeline import log_to, summary

with log_to(snakemake.log[0]):
    summary(snakemake.output.summary, list(snakemake.input.scores),
            list(snakemake.input.selections), snakemake.params.job,
            per_image=snakemake.output.per_image)
