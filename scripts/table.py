from xaipipe.pipeline import log_to, table

with log_to(snakemake.log[0]):
    table(dict(snakemake.output.items()), snakemake.input.summary, snakemake.wildcards.table,
          per_image=snakemake.input.per_image)
