from xaipipe.pipeline import log_to, predictions, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    predictions(snakemake.output[0], snakemake.input.images, list(snakemake.input.model),
                snakemake.params.job)
