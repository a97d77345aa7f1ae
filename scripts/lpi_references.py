from xaipipe.pipeline import log_to, lpi_reference_set, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    lpi_reference_set(snakemake.output[0], snakemake.input.images, list(snakemake.input.model),
                      snakemake.params.job)
