from xaipipe.pipeline import explain_store, log_to, setup_job

with log_to(snakemake.log[0]):
    setup_job(snakemake.threads)
    job = snakemake.params.job
    # a one-path sweep writes one store per step count
    out = list(snakemake.output) if job.sweep else snakemake.output[0]
    explain_store(out, snakemake.input.images, list(snakemake.input.selections),
                  list(snakemake.input.model), job, references=list(snakemake.input.references))
