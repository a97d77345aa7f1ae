from xaipipe.pipeline import log_to, selection, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    selection(snakemake.output[0], snakemake.input[0], snakemake.params.job)
