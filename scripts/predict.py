from xaipipe.pipeline import log_to, predictions

with log_to(snakemake.log[0]):
    predictions(snakemake.output[0], snakemake.input.images, list(snakemake.input.model),
                snakemake.params.job)
