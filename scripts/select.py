from xaipipe.pipeline import log_to, selection

with log_to(snakemake.log[0]):
    selection(snakemake.output[0], snakemake.input[0], snakemake.params.job)
