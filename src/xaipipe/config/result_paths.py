"""Every result path, written once (the layout is listed in ``docs/results.md``).

The rules use the templates with their wildcards (``Paths.saliency`` ->
``results/saliency/{dataset}/{model}/{method}/{variant}.zarr``); the plan formats the same
templates. Wildcards are exactly: dataset, preprocess, model, method, variant, filter, metric,
experiment (and, for tables and figures, table / figure; for LPI's reference sets, refset).
"""
from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = {
    "images": "{R}/data/{dataset}/{preprocess}/{variant}.zarr",
    "weights": "{R}/models/{model}/weights.pt",
    "model_info": "{R}/models/{model}/model.json",
    "predictions": "{R}/predictions/{dataset}/{model}/{variant}.parquet",
    # one selection per (filter, variant whose predictions it uses): the DESIGN path
    # `selection/{dataset}/{model}/{filter}.parquet` with the variant as a last level
    "selection": "{R}/selection/{dataset}/{model}/{filter}/{variant}.parquet",
    "saliency": "{R}/saliency/{dataset}/{model}/{method}/{variant}.zarr",
    # LPI's reference set of a model, from its training images; {refset} names the settings
    # (lpi_r<R>_c<clusters>[_ypeiyu]), so method runs that differ otherwise share it
    "lpi_references": "{R}/references/{dataset}/{model}/{refset}.zarr",
    "scores": "{R}/metrics/{dataset}/{model}/{metric}/{method}/{variant}.parquet",
    "summary": "{R}/papers/{experiment}/summary.csv",
    # every per-image score of the experiment's own images, long form (the summary's input)
    "per_image": "{R}/papers/{experiment}/per_image.parquet",
    "table": "{R}/papers/{experiment}/tables/{table}.{ext}",
    "figure": "{R}/papers/{experiment}/figures/{figure}.{ext}",
    "log": "{R}/logs/{name}.log",
}
TABLE_EXTS = ("csv", "md", "tex", "html")
FIGURE_EXTS = ("png", "pdf")


@dataclass(frozen=True)
class Paths:
    """Path templates under one results root; attributes are templates with wildcards,
    :meth:`fmt` fills them."""
    R: str = "results"

    def __getattr__(self, key):
        if key in TEMPLATES:
            return TEMPLATES[key].replace("{R}", self.R.rstrip("/"))
        raise AttributeError(key)

    def fmt(self, key: str, **wildcards) -> str:
        return TEMPLATES[key].replace("{R}", self.R.rstrip("/")).format(**wildcards)

    def log(self, name: str) -> str:
        return self.fmt("log", name=name)
