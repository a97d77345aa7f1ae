"""Configuration: validation beyond the JSON schema, and the plan of a run (which outputs exist,
which arguments each job gets). The Snakefile and the tests both use this module, so what the
workflow builds is testable without Snakemake.

Config sections (see ``config.yaml`` and ``schemas/config.schema.yaml``): ``datasets``,
``variants``, ``models``, ``filters``, ``methods``, ``metrics`` name things; ``explain``
chooses which combinations run; ``score`` and ``report`` hold execution settings.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .data.datasets import SOURCES, make_source
from .data.filters import check_filter
from .data.variants import check_variant
from .errors import ConfigError
from .explain.base import get_method
from .metrics.base import get_metric
from .models.train import TRAIN_PARAMS
from .models.zoo import _entry, is_weights_path
from .params import check_params

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def _allowed(what: str, name, allowed) -> None:
    if name not in allowed:
        raise ConfigError(f"{what}: unknown name {name!r}; allowed: {', '.join(map(str, allowed))}")


def validate_schema(config: dict, schema_path=SCHEMA) -> dict:
    """``snakemake.utils.validate`` (JSON schema, defaults filled in), as the Snakefile does;
    the error names the key (``On instance['explain']['max_images']``)."""
    from snakemake.utils import validate
    from snakemake_interface_common.exceptions import WorkflowError

    try:
        validate(config, str(schema_path))
    except WorkflowError as e:
        cause = e.__context__
        if hasattr(cause, "absolute_path") and hasattr(cause, "message"):
            key = ".".join(map(str, cause.absolute_path)) or "(top level)"
            raise ConfigError(f"config key {key}: {cause.message}") from None
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    return config


def method_name(run: str, cfg: dict) -> str:
    return cfg.get("method", run)


def method_params(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "method"}


def metric_name(run: str, cfg: dict) -> str:
    return cfg.get("metric", run)


def metric_params(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "metric"}


def check_config(config: dict) -> dict:
    """Every name resolvable and every parameter valid; raises :class:`ConfigError` naming
    the key and the allowed values. Returns the config."""
    for name, d in config["datasets"].items():
        _allowed(f"datasets.{name}.kind", d.get("kind", "shapes"), SOURCES)
        make_source(name, d)
    for name, v in config["variants"].items():
        check_variant(name, v, f"variants.{name}")
    if "original" not in config["variants"]:
        raise ConfigError("variants: 'original' is required (filters use its predictions)")
    for name, f in config["filters"].items():
        check_filter(name, f, f"filters.{name}")
    for name, m in config["models"].items():
        where = f"models.{name}"
        _entry(m["arch"])
        if "train" in m:
            check_params(TRAIN_PARAMS, m["train"], f"{where}.train")
            _allowed(f"{where}.dataset", m.get("dataset"), config["datasets"])
    for run, m in config["methods"].items():
        cls = get_method(method_name(run, m))
        cls.check(method_params(m), f"methods.{run}")
    for run, m in config["metrics"].items():
        cls = get_metric(metric_name(run, m))
        metric = cls(**cls.check(metric_params(m), f"metrics.{run}"))
        fill = metric.fill_variant()
        if fill and fill not in config["variants"]:
            raise ConfigError(f"metrics.{run}: needs the variant {fill!r}; add it to variants")
    ex = config["explain"]
    for key, section in (("datasets", "datasets"), ("models", "models"),
                         ("variants", "variants"), ("methods", "methods"),
                         ("metrics", "metrics")):
        for name in ex.get(key) or []:
            _allowed(f"explain.{key}", name, config[section])
    _allowed("explain.filter", ex["filter"], config["filters"])
    _allowed("report.variant", config["report"]["variant"], ex.get("variants") or ["original"])
    return config


class Plan:
    """What a validated config asks for: paths, combinations and job arguments."""

    def __init__(self, config: dict):
        self.c = config
        self.R = config["results"].rstrip("/")
        ex = config["explain"]
        self.datasets = ex.get("datasets") or list(config["datasets"])
        self.models = ex.get("models") or list(config["models"])
        self.variants = ex.get("variants") or ["original"]
        self.methods = ex.get("methods") or list(config["methods"])
        self.metrics = ex.get("metrics") or list(config["metrics"])

    def wildcard_constraints(self) -> dict[str, str]:
        """Each wildcard matches exactly the configured names (longest first)."""
        sections = {"dataset": "datasets", "model": "models", "method": "methods",
                    "variant": "variants", "filter": "filters", "metric": "metrics"}
        return {w: "|".join(re.escape(n) for n in sorted(self.c[s], key=len, reverse=True))
                for w, s in sections.items()}

    # -- paths ---------------------------------------------------------------------------
    def images(self, dataset, variant):
        return f"{self.R}/data/{dataset}/{variant}.zarr"

    def model_dir(self, model):
        return f"{self.R}/models/{model}"

    def predictions(self, dataset, model, variant):
        return f"{self.R}/predictions/{dataset}/{model}/{variant}.parquet"

    def selection(self, dataset, model, filt):
        return f"{self.R}/selection/{dataset}/{model}/{filt}.parquet"

    def saliency(self, dataset, model, method, variant):
        return f"{self.R}/saliency/{dataset}/{model}/{method}/{variant}.zarr"

    def scores(self, dataset, model, metric, method, variant):
        return f"{self.R}/metrics/{dataset}/{model}/{metric}/{method}/{variant}.parquet"

    def tables(self):
        return {"csv": f"{self.R}/tables/summary.csv", "md": f"{self.R}/tables/summary.md"}

    def figures(self):
        f = f"{self.R}/figures"
        return {"grid_png": f"{f}/saliency_grid.png", "grid_pdf": f"{f}/saliency_grid.pdf",
                "bars_png": f"{f}/auc_bars.png", "bars_pdf": f"{f}/auc_bars.pdf"}

    # -- combinations --------------------------------------------------------------------
    def combos(self):
        """(dataset, model, method, variant) of every saliency store."""
        return [(d, m, me, v) for d in self.datasets for m in self.models
                for me in self.methods for v in self.variants]

    def score_combos(self):
        return [(d, m, mt, me, v) for d, m, me, v in self.combos() for mt in self.metrics]

    def all_targets(self) -> list[str]:
        out = [self.scores(*c) for c in self.score_combos()]
        out += list(self.tables().values()) + list(self.figures().values())
        out += [self.selection(d, m, f) for d in self.datasets for m in self.models
                for f in self.c["filters"]]
        out += [self.predictions(d, m, v) for d in self.datasets for m in self.models
                for v in self.c["variants"]]
        return sorted(set(out))

    # -- data ----------------------------------------------------------------------------
    def store_splits(self, variant: str) -> list[str] | None:
        """original: every split (training needs train); other variants: the explained split."""
        return None if variant == "original" else [self.c["explain"]["split"]]

    def image_store_job(self, dataset, variant) -> dict:
        return {"name": dataset, "cfg": self.c["datasets"][dataset], "variant": variant,
                "variant_params": check_variant(variant, self.c["variants"][variant]),
                "splits": self.store_splits(variant)}

    # -- models --------------------------------------------------------------------------
    def model_cfg(self, model) -> dict:
        return self.c["models"][model]

    def model_inputs(self, model) -> list[str]:
        m = self.model_cfg(model)
        if "train" in m:
            return [f"{self.model_dir(model)}/weights.pt", f"{self.model_dir(model)}/model.json"]
        w = m.get("weights")
        return [w] if w and is_weights_path(w) else []

    def model_spec(self, model) -> dict:
        """Arguments of :func:`xaipipe.models.load_model` for a configured model."""
        m = self.model_cfg(model)
        if "train" in m:
            return {"name": m["arch"], "weights": f"{self.model_dir(model)}/weights.pt"}
        spec = {"name": m["arch"], "weights": m.get("weights")}
        if m.get("num_classes"):
            spec["num_classes"] = m["num_classes"]
        return spec

    def train_job(self, model) -> dict:
        m = self.model_cfg(model)
        return {"arch": m["arch"], "data_path": self.images(m["dataset"], "original"),
                "device": self.c["device"], **m["train"]}

    def predict_job(self, dataset, model, variant) -> dict:
        return {"model_spec": self.model_spec(model), "images_path": self.images(dataset, variant),
                "split": self.c["explain"]["split"], "device": self.c["device"]}

    # -- explain -------------------------------------------------------------------------
    def explain_job(self, dataset, model, method, variant) -> dict:
        ex, m = self.c["explain"], self.c["methods"][method]
        return {"method": method_name(method, m), "params": method_params(m),
                "model_spec": self.model_spec(model),
                "images_path": self.images(dataset, variant), "split": ex["split"],
                "selection_path": self.selection(dataset, model, ex["filter"]),
                "target": ex["target"], "max_images": ex.get("max_images"),
                "seed": self.c["seed"], "device": self.c["device"],
                "batch_size": ex["batch_size"], "memory_mb": ex["memory_mb"],
                "dtype": ex["dtype"],
                "attrs": {"dataset": dataset, "model": model, "method": method,
                          "variant": variant, "filter": ex["filter"]}}

    # -- metrics -------------------------------------------------------------------------
    def metric(self, metric):
        cfg = self.c["metrics"][metric]
        cls = get_metric(metric_name(metric, cfg))
        return cls(**metric_params(cfg))

    def fill_path(self, dataset, metric) -> str | None:
        fill = self.metric(metric).fill_variant()
        return self.images(dataset, fill) if fill else None

    def score_job(self, dataset, model, metric, method, variant) -> dict:
        cfg, sc = self.c["metrics"][metric], self.c["score"]
        return {"metric_name": metric_name(metric, cfg), "metric_params": metric_params(cfg),
                "saliency_path": self.saliency(dataset, model, method, variant),
                "images_path": self.images(dataset, variant),
                "fill_path": self.fill_path(dataset, metric),
                "model_spec": self.model_spec(model), "split": self.c["explain"]["split"],
                "device": self.c["device"], "batch_size": sc["batch_size"],
                "scheduler": sc["scheduler"]}

    def report_stores(self) -> dict[str, str]:
        """method -> saliency store shown in the report grid (first data set and model)."""
        d, m, v = self.datasets[0], self.models[0], self.c["report"]["variant"]
        return {me: self.saliency(d, m, me, v) for me in self.methods}

    def aggregate_entries(self):
        """(keys, parquet path, registered metric name) of every per-image score file."""
        return [({"dataset": d, "model": m, "metric": mt, "method": me, "variant": v},
                 self.scores(d, m, mt, me, v), metric_name(mt, self.c["metrics"][mt]))
                for d, m, mt, me, v in self.score_combos()]


def load_config(path=None, overrides: dict | None = None) -> dict:
    """Read, merge, schema-validate and check a config file (default: the repository's)."""
    cfg = yaml.safe_load(Path(path or ROOT / "config.yaml").read_text()) or {}
    if overrides:
        cfg = deep_update(cfg, overrides)
    return check_config(validate_schema(cfg))


def deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out
