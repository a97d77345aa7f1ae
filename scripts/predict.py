from xaipipe.pipeline import log_to, predictions, set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    predictions(snakemake.output[0], snakemake.input.images, list(snakemake.input.model),
                snakemake.params.job)
