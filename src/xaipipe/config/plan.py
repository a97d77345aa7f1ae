"""The plan of a run: which outputs the experiments need, and each job's typed arguments.

The Snakefile and the tests both use it, so what the workflow builds is testable without
Snakemake. A saliency store or a score file is shared by every experiment that needs it: it
covers the union of the image selections they ask of it (each capped at its experiment's
``max_images``); each experiment's tables read back exactly its own images.
"""
from __future__ import annotations

import re
from collections import defaultdict

from ..data.datasets import make_source
from ..data.filters import check_filter
from ..data.preprocess import check_preprocess
from ..data.variants import check_variant
from ..errors import ConfigError
from ..models.train import TRAIN_PARAMS
from ..models.zoo import is_weights_path
from ..params import check_params, signature_values
from ..explain.base import get_method
from .check import Experiment, method_of, metric_of, split_store_run, store_runs, sweep_of
from ..jobs import (Entry, ExplainJob, FigureJob, ImageStoreJob, ModelSpec, PredictJob,
                   ReferenceSetJob, ScoreJob, SelectJob, SummaryJob, TrainJob)
from .result_paths import FIGURE_EXTS, TABLE_EXTS, Paths


def _merge_max(a, b):
    return None if a is None or b is None else max(a, b)


class Plan:
    """What a checked config asks for: paths, requests and job arguments."""

    def __init__(self, config: dict):
        self.c = config
        self.P = Paths(config["results"])
        self.split = config["explain"]["split"]
        self.experiments = {n: Experiment.from_config(n, e)
                            for n, e in config["experiments"].items()}
        self.run = list(config.get("run") or self.experiments)
        # store run (a method run, or ``run@n`` of a sweep) -> (registered name, parameters)
        self.methods = {sr: method_of(config, sr) for run in config["methods"]
                        for sr in store_runs(config, run)}
        # method runs whose sweep is one path evaluation (one job, one store per count)
        self.sweeps = {}
        for run in config["methods"]:
            sweep = sweep_of(config, run)
            if sweep is not None:
                name, params = method_of(config, run)
                if get_method(name).shares_path(params, sweep):
                    self.sweeps[run] = sweep
        self.metrics = {run: metric_of(config, run) for run in config["metrics"]}
        # (dataset, model, method, variant) -> {(filter, on_variant): max_images}
        self._explain: dict[tuple, dict] = defaultdict(dict)
        self._target: dict[tuple, tuple[str, str]] = {}
        # (dataset, model, metric, method, variant) -> {(filter, on_variant): max_images}
        self._score: dict[tuple, dict] = defaultdict(dict)
        # experiment -> [(score key, (filter, on_variant), max_images)], its store keys
        self._entries: dict[str, list] = {}
        self._stores: dict[str, list] = {}
        for e in self.experiments.values():
            self._add(e)

    # -- requests ------------------------------------------------------------------------
    def _request(self, table: dict, key, sel, max_images) -> None:
        table[key][sel] = _merge_max(table[key][sel], max_images) if sel in table[key] \
            else max_images

    def _add(self, e: Experiment) -> None:
        entries, stores = [], []
        for m in e.models:
            d = self.dataset_of(m)
            for me in (sr for run in e.methods for sr in store_runs(self.c, run)):
                for v in e.variants:
                    key = (d, m, me, v)
                    if key in self._target and self._target[key][0] != e.target:
                        other = self._target[key][1]
                        raise ConfigError(
                            f"experiments {other!r} and {e.name!r} both need the maps of method "
                            f"{me!r} on model {m!r} ({v}) but explain different targets "
                            f"({self._target[key][0]} vs {e.target}); give one of them a "
                            f"method run of another name")
                    self._target.setdefault(key, (e.target, e.name))
                    stores.append(key)
                    filters = ({e.filter_for(mt) for mt in e.metrics if e.scores(mt, v)}
                               or {e.filter_for()})
                    for f in sorted(filters):
                        self._request(self._explain, key, (f, e.filter_on(v)), e.max_images)
                    for mt in e.metrics:
                        if not self.metrics[mt].applies_to(v) or not e.scores(mt, v) or \
                                not self.metrics[mt].applies_to_method(*self.methods[me]):
                            continue
                        sel = (e.filter_for(mt), e.filter_on(v))
                        skey = (d, m, mt, me, v)
                        self._request(self._score, skey, sel, e.max_images)
                        entries.append((skey, sel, e.max_images))
        self._entries[e.name] = entries
        self._stores[e.name] = stores

    # -- names ---------------------------------------------------------------------------
    def wildcard_constraints(self) -> dict[str, str]:
        """Each wildcard matches exactly the configured names (longest first)."""
        from ..report.figures import FIGURES
        from ..report.tables import TABLES

        alt = self.alternatives
        sections = {"dataset": "datasets", "preprocess": "preprocess", "model": "models",
                    "method": "methods", "variant": "variants", "filter": "filters",
                    "metric": "metrics", "experiment": "experiments"}
        out = {w: alt(self.c[s]) for w, s in sections.items()}
        out["method"] = alt(self.methods)
        out["refset"] = alt(self.reference_sets() or ["lpi_none"])
        out["table"] = alt(TABLES.names())
        out["figure"] = alt(FIGURES.names())
        return out

    @staticmethod
    def alternatives(names) -> str:
        """A regex matching exactly one of ``names`` (longest first)."""
        return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))

    def dataset_of(self, model: str) -> str:
        return self.c["models"][model]["dataset"]

    def preprocess_of(self, model: str) -> str:
        return self.c["models"][model].get("preprocess", "native")

    # -- paths ---------------------------------------------------------------------------
    def images(self, dataset, preprocess, variant) -> str:
        return self.P.fmt("images", dataset=dataset, preprocess=preprocess, variant=variant)

    def model_images(self, model, variant) -> str:
        """The image store a model reads for a variant (its data set and preprocessing)."""
        return self.images(self.dataset_of(model), self.preprocess_of(model), variant)

    def selection(self, dataset, model, filt, variant) -> str:
        return self.P.fmt("selection", dataset=dataset, model=model, filter=filt,
                          variant=variant)

    def saliency(self, dataset, model, method, variant) -> str:
        return self.P.fmt("saliency", dataset=dataset, model=model, method=method,
                          variant=variant)

    def scores(self, dataset, model, metric, method, variant) -> str:
        return self.P.fmt("scores", dataset=dataset, model=model, metric=metric,
                          method=method, variant=variant)

    def summary(self, experiment) -> str:
        return self.P.fmt("summary", experiment=experiment)

    def per_image(self, experiment) -> str:
        return self.P.fmt("per_image", experiment=experiment)

    def table(self, experiment, table) -> dict[str, str]:
        return {ext: self.P.fmt("table", experiment=experiment, table=table, ext=ext)
                for ext in TABLE_EXTS}

    def figure(self, experiment, figure) -> dict[str, str]:
        return {ext: self.P.fmt("figure", experiment=experiment, figure=figure, ext=ext)
                for ext in FIGURE_EXTS}

    # -- targets -------------------------------------------------------------------------
    def experiment_targets(self, experiment: str) -> list[str]:
        e = self.experiments[experiment]
        out = [self.summary(experiment), self.per_image(experiment)]
        for t in e.tables:
            out += self.table(experiment, t).values()
        for f in e.figures:
            out += self.figure(experiment, f).values()
        return out

    def all_targets(self) -> list[str]:
        return [t for e in self.run for t in self.experiment_targets(e)]

    def explain_keys(self, experiment: str | None = None) -> list[tuple]:
        """(dataset, model, method run, variant) of every saliency store (of one experiment)."""
        return sorted(self._explain if experiment is None else set(self._stores[experiment]))

    def score_keys(self, experiment: str | None = None) -> list[tuple]:
        """(dataset, model, metric run, method run, variant) of every score file (of one
        experiment)."""
        return sorted(self._score if experiment is None
                      else {k for k, _, _ in self._entries[experiment]})

    # -- data ----------------------------------------------------------------------------
    def image_store_job(self, dataset, preprocess, variant) -> ImageStoreJob:
        source = make_source(dataset, self.c["datasets"][dataset])
        return ImageStoreJob(
            dataset=dataset, source={"kind": source.name, **source.p},
            preprocess=check_preprocess(self.c["preprocess"][preprocess]), variant=variant,
            variant_params=check_variant(variant, self.c["variants"][variant]),
            # original: every split (training needs train); other variants: the explained one
            splits=None if variant == "original" else (self.split,))

    # -- models --------------------------------------------------------------------------
    def model_inputs(self, model) -> list[str]:
        m = self.c["models"][model]
        if "train" in m:
            return [self.P.fmt("weights", model=model)]
        w = m.get("weights")
        return [w] if w and is_weights_path(w) else []

    def model_spec(self, model) -> ModelSpec:
        m = self.c["models"][model]
        kwargs = {"num_classes": m["num_classes"]} if m.get("num_classes") else {}
        weights = None if "train" in m or (m.get("weights") and is_weights_path(m["weights"])) \
            else m.get("weights")
        return ModelSpec(m["arch"], weights, kwargs)

    def train_job(self, model) -> TrainJob:
        m = self.c["models"][model]
        p = check_params(TRAIN_PARAMS, m["train"], "train")
        # a training option declared omit_default does not retrain the models before it
        return TrainJob(m["arch"], signature_values(TRAIN_PARAMS, p), self.c["device"])

    def predict_job(self, model) -> PredictJob:
        return PredictJob(self.model_spec(model), self.split, self.c["device"],
                          self.c["score"]["batch_size"])

    def select_job(self, filt) -> SelectJob:
        return SelectJob(filt, check_filter(filt, self.c["filters"][filt]))

    # -- explain -------------------------------------------------------------------------
    def explained_alone(self) -> list[str]:
        """Store runs made by the ``explain`` rule (all but those of one-path sweeps)."""
        return [sr for sr in self.methods if split_store_run(sr)[0] not in self.sweeps]

    def sweep_stores(self, run: str, **wildcards) -> list[str]:
        """The saliency stores of a one-path sweep, one per step count (wildcards left as
        ``{dataset}`` etc. where not given: the sweep rule's outputs)."""
        w = {k: wildcards.get(k, "{" + k + "}") for k in ("dataset", "model", "variant")}
        return [self.saliency(w["dataset"], w["model"], sr, w["variant"])
                for sr in store_runs(self.c, run)]

    def _requests(self, dataset, model, method, variant) -> dict:
        """The selections asked of a store run, or (a sweep's run) of all its stores."""
        if method in self.sweeps:
            reqs: dict = {}
            for sr in store_runs(self.c, method):
                for sel, mx in self._explain.get((dataset, model, sr, variant), {}).items():
                    reqs[sel] = _merge_max(reqs[sel], mx) if sel in reqs else mx
            return reqs
        return self._explain[(dataset, model, method, variant)]

    # -- references (Expected Gradients, LPI) ---------------------------------------------
    def references_kind(self, method: str) -> str | None:
        """Where a store run's references come from (``needs_references`` of its method)."""
        if method in self.sweeps:
            method = store_runs(self.c, method)[0]
        return getattr(get_method(self.methods[method][0]), "needs_references", None)

    def refset(self, method: str) -> str:
        """The name of an LPI run's reference set: its settings (runs with the same R,
        clusters and compat share one set)."""
        p = self.methods[method][1]
        return f"lpi_r{p.samples}_c{p.clusters}" + \
            ("_ypeiyu" if p.compat == "ypeiyu_lpi" else "")

    def reference_sets(self) -> list[str]:
        return sorted({self.refset(sr) for sr in self.methods
                       if self.references_kind(sr) == "lpi"})

    def explain_references(self, dataset, model, method, variant) -> list[str]:
        """The explain rule's ``references`` input: the model's original image store (its
        training split is Expected Gradients' pool), the model's LPI reference set, or none."""
        kind = self.references_kind(method)
        if kind == "train":
            return [self.model_images(model, "original")]
        if kind == "lpi":
            return [self.P.fmt("lpi_references", dataset=dataset, model=model,
                               refset=self.refset(method))]
        return []

    def reference_set_job(self, dataset, model, refset) -> ReferenceSetJob:
        runs = [sr for sr in self.methods
                if self.references_kind(sr) == "lpi" and self.refset(sr) == refset]
        p = self.methods[runs[0]][1] if runs else None      # the name fixes what is used
        if p is None:
            raise ConfigError(f"no LPI method run uses the reference set {refset!r}")
        return ReferenceSetJob(self.model_spec(model), n_references=p.samples,
                               n_clusters=p.clusters, seed=self.c["seed"],
                               offset=200 if p.compat == "ypeiyu_lpi" else 0,
                               device=self.c["device"],
                               batch_size=self.c["score"]["batch_size"])

    def explain_selections(self, dataset, model, method, variant) -> list[str]:
        reqs = self._requests(dataset, model, method, variant)
        return [self.selection(dataset, model, f, on) for f, on in sorted(reqs)]

    def explain_job(self, dataset, model, method, variant) -> ExplainJob:
        """The job of one store run, or of a one-path sweep (``method`` = its run name)."""
        reqs = self._requests(dataset, model, method, variant)
        sweep = self.sweeps.get(method)
        first = store_runs(self.c, method)[0] if sweep else method
        name, params = method_of(self.c, method) if sweep else self.methods[method]
        ex = self.c["explain"]
        return ExplainJob(
            method=name, params=params, model=self.model_spec(model),
            target=self._target[(dataset, model, first, variant)][0],
            max_images=tuple(reqs[k] for k in sorted(reqs)),
            split=self.split, seed=self.c["seed"], device=self.c["device"],
            batch_size=ex["batch_size"], memory_mb=ex["memory_mb"], dtype=ex["dtype"],
            keepbits=ex["keepbits"], precision=self.c["precision"],
            native_resolution=ex["native_resolution"], shard_size=ex["shard_size"],
            sweep=sweep,
            provenance={"dataset": dataset, "preprocess": self.preprocess_of(model),
                        "model": model, "method": method, "variant": variant,
                        "selections": [f"{f}@{on}" for f, on in sorted(reqs)]})

    def method_info(self, store_run: str) -> dict:
        """What the tables need to know of a store run: its method run, registered method,
        step count (None where it has none) and whether it is IDGI; for mask methods the init
        and setting, for methods with re-calibration its estimator."""
        run, _ = split_store_run(store_run)
        name, params = self.methods[store_run]
        out = {"method_run": run, "method_name": name, "steps": getattr(params, "steps", None),
               "idgi": bool(getattr(params, "idgi", False))}
        from ..explain import get_method
        declared = get_method(name).params
        if "init" in declared:          # mask methods: the StartGrad report groups by them
            from ..explain.masks.params import init_label, run_setting
            out["init"] = init_label(params, declared)
            out["setting"] = run_setting(params, declared)
            out["history_every"] = params.history_every
        if "recalibrate" in declared:   # the re-calibration table pairs runs by it
            out["recalibrate"] = params.recalibrate
        return out

    # -- metrics -------------------------------------------------------------------------
    def score_inputs(self, dataset, model, metric, method, variant) -> dict:
        mt = self.metrics[metric]
        reqs = self._score[(dataset, model, metric, method, variant)]
        out = {"saliency": self.saliency(dataset, model, method, variant),
               "selections": [self.selection(dataset, model, f, on) for f, on in sorted(reqs)]}
        if {"images", "masks", "boxes"} & set(mt.needs):
            out["images"] = self.model_images(model, variant)
        other = mt.other_variant()
        if "other_images" in mt.needs:
            out["other_images"] = self.model_images(model, other)
        if "other_maps" in mt.needs:
            out["other_maps"] = self.saliency(dataset, model, method, other)
        if "model" in mt.needs:
            out["model"] = self.model_inputs(model)
        if "attribute" in mt.needs:     # the method reruns: its references (if any) too
            refs = self.explain_references(dataset, model, method, variant)
            if refs:
                out["references"] = refs
        return out

    def score_job(self, dataset, model, metric, method, variant) -> ScoreJob:
        mt = self.metrics[metric]
        reqs = self._score[(dataset, model, metric, method, variant)]
        sc = self.c["score"]
        return ScoreJob(
            metric=mt.name, params=mt.hparams,
            model=self.model_spec(model) if "model" in mt.needs else None,
            max_images=tuple(reqs[k] for k in sorted(reqs)), split=self.split,
            device=self.c["device"], batch_size=sc["batch_size"], scheduler=sc["scheduler"],
            dashboard=sc["dashboard"], shard_size=self.c["explain"]["shard_size"],
            precision=self.c["precision"] if "model" in mt.needs else "float32",
            provenance={"dataset": dataset, "preprocess": self.preprocess_of(model),
                        "model": model, "metric": metric, "method": method,
                        "variant": variant, "method_name": self.methods[method][0],
                        "method_params": self.methods[method][1].as_dict()})

    # -- experiment outputs --------------------------------------------------------------
    def summary_inputs(self, experiment) -> dict[str, list[str]]:
        entries = self._entries[experiment]
        sels = sorted({self.selection(k[0], k[1], *sel) for k, sel, _ in entries})
        return {"scores": [self.scores(*k) for k, _, _ in entries], "selections": sels}

    def summary_job(self, experiment) -> SummaryJob:
        sels = self.summary_inputs(experiment)["selections"]
        entries = tuple(
            Entry(keys=dict(zip(("dataset", "model", "metric", "method", "variant"), k)),
                  metric=self.metrics[k[2]].name,
                  selection=sels.index(self.selection(k[0], k[1], *sel)), max_images=mx,
                  method=self.method_info(k[3]))
            for k, sel, mx in self._entries[experiment])
        sc = self.c["score"]
        return SummaryJob(experiment, entries, sc["bootstrap"], sc["level"], self.c["seed"])

    def figure_inputs(self, experiment, figure) -> dict:
        e = self.experiments[experiment]
        m, v = e.models[0], e.report_variant
        d = self.dataset_of(m)
        # one store per method run: a sweep's largest step count
        return {"summary": self.summary(experiment), "per_image": self.per_image(experiment),
                "stores": [self.saliency(d, m, store_runs(self.c, me)[-1], v)
                           for me in e.methods],
                "images": self.model_images(m, v)}

    def figure_job(self, experiment, figure) -> FigureJob:
        e = self.experiments[experiment]
        return FigureJob(experiment, figure, e.methods, self.split,
                         self.c["report"]["images"])
