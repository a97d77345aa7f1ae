from xaipipe.pipeline import figure, log_to, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    figure(dict(snakemake.output.items()), snakemake.input.summary, list(snakemake.input.stores),
           snakemake.input.images, snakemake.params.job, per_image=snakemake.input.per_image)
