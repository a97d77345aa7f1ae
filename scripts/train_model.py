from xaipipe.pipeline import log_to, set_threads, train_model

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    train_model(snakemake.output.weights, snakemake.output.info, snakemake.input[0],
                snakemake.params.job)
