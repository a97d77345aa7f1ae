from xaipipe.pipeline import log_to, setup_job, train_model

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    train_model(snakemake.output.weights, snakemake.output.info, snakemake.input[0],
                snakemake.params.job)
