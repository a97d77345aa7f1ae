from xaipipe.pipeline import figures, log_to

with log_to(snakemake.log[0]):
    figures(dict(snakemake.output.items()), snakemake.input.summary, snakemake.params.stores,
            snakemake.input.images, split=snakemake.params.split,
            n_images=snakemake.params.n_images)
