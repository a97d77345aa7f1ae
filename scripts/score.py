from xaipipe.pipeline import log_to, score, set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    score(snakemake.output[0], dict(snakemake.input.items()), snakemake.params.job,
          threads=snakemake.threads)
