"""Checks of a schema-valid config against the registries, before any job runs.

Every name must resolve and every parameter be valid; experiments may only combine things
that can work together (a CAM layer the model has, masks on a data set that has them).
Errors are :class:`ConfigError` naming the key (and both sides of a bad pair).
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from pathlib import Path

from ..data.datasets import make_source
from ..data.filters import check_filter
from ..data.preprocess import check_preprocess
from ..data.variants import check_variant
from ..errors import ConfigError, WeightsNotFoundError
from ..explain.base import Method, get_method
from ..metrics.base import get_metric
from ..models.meta import meta_model
from ..models.train import TRAIN_PARAMS
from ..models.zoo import _entry, is_weights_path, resolve_weights
from ..params import check_params
from ..registry import unknown_name

# names Snakemake rules already use: an experiment (its target rule) may not take them
RESERVED = ("all", "image_store", "train_model", "predict", "select", "explain", "score",
            "summary", "table", "figure")


def split_run(run: str, cfg: dict | None, key: str) -> tuple[str, dict]:
    """(registered name, parameters) of a ``methods``/``metrics`` entry."""
    cfg = dict(cfg or {})
    return cfg.pop(key, run), cfg


#: a sweep's store runs are named ``{run}@{steps}`` (``@`` is not allowed in catalog names)
SWEEP_SEP = "@"


def sweep_of(config: dict, run: str) -> tuple[int, ...] | None:
    """The step counts of a method run whose ``steps`` is a list (a sweep), else None."""
    steps = (config["methods"][run] or {}).get("steps")
    if not isinstance(steps, list):
        return None
    where = f"methods.{run}.steps"
    steps = [int(n) if isinstance(n, str) and n.strip().isdigit() else n for n in steps]
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise ConfigError(f"{where}: a sweep is a non-empty list of positive integers, "
                          f"got {steps!r}")
    return tuple(sorted(set(steps)))


def store_runs(config: dict, run: str) -> list[str]:
    """The saliency stores of a method run: ``[run]``, or ``run@n`` per count of a sweep."""
    sweep = sweep_of(config, run)
    return [run] if sweep is None else [f"{run}{SWEEP_SEP}{n}" for n in sweep]


def split_store_run(store_run: str) -> tuple[str, int | None]:
    """(method run, steps) of a store run name (steps None outside sweeps)."""
    run, sep, n = store_run.partition(SWEEP_SEP)
    return (run, int(n)) if sep else (run, None)


def method_of(config: dict, run: str) -> tuple[str, dict]:
    """(registered method name, validated hyper-parameters) of a method run, or of one store
    run ``run@n`` of a sweep (``steps`` = n); a sweep's own run gets ``steps`` = max(sweep)."""
    run, steps = split_store_run(run)
    name, params = split_run(run, config["methods"][run], "method")
    cls = get_method(name, f"methods.{run}.method")
    sweep = sweep_of(config, run)
    if sweep is not None:
        if "steps" not in cls.params:
            raise ConfigError(f"methods.{run}.steps: method {name!r} has no steps to sweep")
        params["steps"] = max(sweep) if steps is None else steps
    elif steps is not None:
        raise ConfigError(f"method run {run!r} is not a sweep (no list of steps)")
    return name, cls.check(params, f"methods.{run}")


def metric_of(config: dict, run: str):
    """The metric object (validated parameters in ``.hparams``) of a metric run."""
    name, params = split_run(run, config["metrics"][run], "metric")
    cls = get_metric(name, f"metrics.{run}.metric")
    return cls(cls.check(params, f"metrics.{run}"))


def normalise_entry(section: str, name: str, value):
    """A catalog entry with its declared defaults filled in (for comparisons)."""
    if section == "methods":
        cfg = {"methods": {name: value}}
        return (*method_of(cfg, name), sweep_of(cfg, name))
    if section == "metrics":
        m = metric_of({"metrics": {name: value}}, name)
        return (m.name, m.hparams)
    if section == "variants":
        return check_variant(name, value)
    if section == "filters":
        return check_filter(name, value)
    if section == "preprocess":
        return check_preprocess(value)
    return value


@dataclass(frozen=True)
class Experiment:
    name: str
    models: tuple
    variants: tuple
    methods: tuple
    metrics: tuple
    filters: dict                    # metric run -> filter name; key None: the default
    filter_variant: str | None
    target: str
    max_images: int | None
    tables: tuple
    figures: tuple
    report_variant: str
    metric_variants: dict = None     # metric run -> variants it scores (absent: all)

    def scores(self, metric: str, variant: str) -> bool:
        """Whether the experiment scores ``variant``'s maps with ``metric``."""
        return variant in (self.metric_variants or {}).get(metric, self.variants)

    @classmethod
    def from_config(cls, name: str, e: dict) -> "Experiment":
        f = e.get("filter", "correct")
        filters = {None: f} if isinstance(f, str) else \
            {None: f.get("default", "correct"), **{k: v for k, v in f.items() if k != "default"}}
        variants = tuple(e.get("variants") or ["original"])
        return cls(name, tuple(e["models"]), variants, tuple(e["methods"]),
                   tuple(e.get("metrics") or ()), filters, e.get("filter_variant"),
                   e.get("target", "label"), e.get("max_images"),
                   tuple(e.get("tables", ["summary"])), tuple(e.get("figures") or ()),
                   e.get("report_variant") or variants[0],
                   {k: tuple(v) for k, v in (e.get("metric_variants") or {}).items()})

    def filter_for(self, metric: str | None = None) -> str:
        return self.filters.get(metric, self.filters[None])

    def filter_on(self, variant: str) -> str:
        """The variant whose predictions select the images explained on ``variant``."""
        return self.filter_variant or variant


def _allowed(where: str, name, allowed) -> None:
    if name not in allowed:
        raise ConfigError(unknown_name(where, "name", name, [str(a) for a in allowed],
                                       label="allowed"))


def model_factory(config: dict, name: str):
    """Model ``name``'s architecture on the meta device (no memory, no weights), for checks of
    what it contains (:func:`xaipipe.models.meta.meta_model`)."""
    m = config["models"][name]
    kw = {}
    if m["arch"] == "hf_vit":           # the architecture is in the weights folder
        check_weights(config, name)
        return meta_model("hf_vit", weights=m.get("weights"))
    if m.get("num_classes"):
        kw["num_classes"] = m["num_classes"]
    if "train" in m:
        kw["width"] = check_params(TRAIN_PARAMS, m["train"], "train")["width"]
        kw.setdefault("num_classes", len(make_source(m["dataset"],
                                                     config["datasets"][m["dataset"]]).classes()))
    return meta_model(m["arch"], **kw)


def check_catalogs(config: dict) -> None:
    for name, d in config["datasets"].items():
        make_source(name, d or {})
    for name, p in config["preprocess"].items():
        check_preprocess(p, f"preprocess.{name}")
    for name, v in config["variants"].items():
        check_variant(name, v, f"variants.{name}")
    for name, f in config["filters"].items():
        check_filter(name, f, f"filters.{name}")
    for name, m in config["models"].items():
        where = f"models.{name}"
        _entry(m["arch"], f"{where}.arch")
        _allowed(f"{where}.dataset", m["dataset"], config["datasets"])
        _allowed(f"{where}.preprocess", m.get("preprocess", "native"), config["preprocess"])
        if "train" in m:
            check_params(TRAIN_PARAMS, m["train"], f"{where}.train")
            if m.get("weights"):
                raise ConfigError(f"{where}: a trained model (train: ...) takes no weights")
    for run in config["methods"]:
        for store_run in store_runs(config, run):
            method_of(config, store_run)
    for run in config["metrics"]:
        metric_of(config, run)


def check_experiment(config: dict, e: Experiment) -> None:
    from ..report.figures import FIGURES
    from ..report.tables import TABLES

    where = f"experiments.{e.name}"
    if e.name in RESERVED or e.name.startswith("explain_sweep_"):
        raise ConfigError(f"{where}: the name is taken by a workflow rule; reserved: "
                          f"{', '.join(RESERVED)}, explain_sweep_*")
    for key, section in (("models", "models"), ("variants", "variants"),
                         ("methods", "methods"), ("metrics", "metrics")):
        for name in getattr(e, key):
            _allowed(f"{where}.{key}", name, config[section])
    for metric, f in e.filters.items():
        _allowed(f"{where}.filter" + (f".{metric}" if metric else ""), f, config["filters"])
        if metric is not None:
            _allowed(f"{where}.filter (metric)", metric, e.metrics)
    for metric, vs in (e.metric_variants or {}).items():
        _allowed(f"{where}.metric_variants", metric, e.metrics)
        for v in vs:
            _allowed(f"{where}.metric_variants.{metric}", v, e.variants)
    if e.filter_variant:
        _allowed(f"{where}.filter_variant", e.filter_variant, config["variants"])
    _allowed(f"{where}.report_variant", e.report_variant, e.variants)
    for t in e.tables:
        TABLES.get(t, f"{where}.tables")
    for f in e.figures:
        FIGURES.get(f, f"{where}.figures")
    for m in e.models:
        dataset = config["models"][m]["dataset"]
        source = make_source(dataset, config["datasets"][dataset])
        model = None
        for run in e.methods:
            name, params = method_of(config, run)
            needs = getattr(get_method(name), "needs_references", None)
            if needs and "train" not in source.split_names():
                raise ConfigError(
                    f"{where}: method {run!r} draws its references from the training images, "
                    f"which data set {dataset!r} (of model {m!r}) does not have: give it a "
                    f"'train' split (datasets.{dataset}.splits)")
            check_model = get_method(name).check_model
            # build the architecture only for methods that inspect it (not the default no-op)
            if check_model.__func__ is not Method.check_model.__func__:
                model = model if model is not None else model_factory(config, m)
                check_model(params, model, f"{where}: method {run!r} on model {m!r}")
        for run in e.metrics:
            metric = metric_of(config, run)
            for need, has in (("masks", source.has_masks),
                              ("boxes", getattr(source, "has_boxes", False))):
                if need in metric.needs and not has:
                    raise ConfigError(f"{where}: metric {run!r} needs {need}, which data set "
                                      f"{dataset!r} (of model {m!r}) does not have")
            other = metric.other_variant()
            if other:
                _allowed(f"{where}: metric {run!r} needs the variant", other,
                         config["variants"])
                if "other_maps" in metric.needs and other not in e.variants:
                    raise ConfigError(f"{where}: metric {run!r} compares with the maps of "
                                      f"variant {other!r}; add it to {where}.variants")


def check_config(config: dict) -> dict:
    """Every name resolvable, every parameter valid, every experiment's pairs workable;
    raises :class:`ConfigError` naming the key. Returns the config."""
    check_catalogs(config)
    ex = config.get("explain") or {}
    if ex.get("keepbits") is not None and ex.get("dtype") != "float16":
        raise ConfigError(f"explain.keepbits: {ex['keepbits']} rounds float16 mantissas; it "
                          f"needs explain.dtype: float16 (got {ex.get('dtype')!r})")
    for name, e in config["experiments"].items():
        check_experiment(config, Experiment.from_config(name, e))
    for name in config.get("run") or []:
        _allowed("run", name, config["experiments"])
    return config


def check_files(config: dict, experiments) -> None:
    """The data and the model weights of the given experiments are on disk (checked before any
    job starts): see :func:`check_weights`."""
    seen, models = set(), []
    for e in experiments:
        for m in config["experiments"][e]["models"]:
            if m not in models:
                models.append(m)
            d = config["models"][m]["dataset"]
            if d not in seen:
                seen.add(d)
                make_source(d, config["datasets"][d]).check_files()
    for m in models:
        check_weights(config, m)


def check_weights(config: dict, name: str) -> None:
    """Model ``name``'s weights can be loaded without a download: a weights file exists, or
    torchvision's enum weights are in the local cache (:func:`~xaipipe.models.zoo.
    resolve_weights`, whose error names every place searched). Weights the workflow makes
    (``train:``, or the path of another model's trained weights) are not checked."""
    from .result_paths import Paths

    m = config["models"][name]
    where = f"models.{name}.weights"
    weights = m.get("weights")
    if "train" in m or weights == "random":
        return
    if weights is not None and is_weights_path(weights):
        trained = {os.path.abspath(Paths(config["results"]).fmt("weights", model=other))
                   for other, o in config["models"].items() if "train" in o}
        if os.path.abspath(weights) in trained:
            return
        path = Path(weights).expanduser()
        if m["arch"] == "hf_vit":            # a save_pretrained folder
            if not (path / "config.json").is_file():
                raise ConfigError(f"{where}: {str(weights)!r} is not a save_pretrained folder "
                                  "(no config.json)")
            return
        if not path.is_file():
            raise ConfigError(f"{where}: weights file {str(weights)!r} does not exist")
        return
    try:
        resolve_weights(m["arch"], weights)
    except (WeightsNotFoundError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None
