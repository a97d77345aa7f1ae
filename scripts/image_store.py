from xaipipe.pipeline import image_store, log_to, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    image_store(snakemake.output[0], snakemake.params.job)
