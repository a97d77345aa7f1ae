from xaipipe.pipeline import log_to, setup_job, table

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    table(dict(snakemake.output.items()), snakemake.input.summary, snakemake.wildcards.table,
          per_image=snakemake.input.per_image)
