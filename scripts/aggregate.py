from xaipipe.pipeline import aggregate, log_to

with log_to(snakemake.log[0]):
    aggregate(snakemake.output.csv, snakemake.output.md, snakemake.params.entries,
              n_boot=snakemake.params.n_boot, level=snakemake.params.level,
              seed=snakemake.params.seed)
