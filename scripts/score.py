from xaipipe.pipeline import log_to, score, setup_job

# guarded: a local Dask cluster spawns worker processes, which re-import this module
if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        setup_job(snakemake.threads)
        score(snakemake.output[0], dict(snakemake.input.items()), snakemake.params.job,
              threads=snakemake.threads)
