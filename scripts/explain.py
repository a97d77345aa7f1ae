from xaipipe.pipeline import explain_store, log_to, set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    explain_store(snakemake.output[0], snakemake.input.images, list(snakemake.input.selections),
                  list(snakemake.input.model), snakemake.params.job)
