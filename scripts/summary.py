from xaipipe.pipeline import log_to, summary

with log_to(snakemake.log[0]):
    summary(snakemake.output[0], list(snakemake.input.scores), list(snakemake.input.selections),
            snakemake.params.job)
