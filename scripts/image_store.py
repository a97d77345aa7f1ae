from xaipipe.pipeline import image_store, log_to

with log_to(snakemake.log[0]):
    image_store(snakemake.output[0], snakemake.params.job)
