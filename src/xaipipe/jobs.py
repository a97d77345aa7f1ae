"""Typed jobs: what each rule's script gets besides its input and output paths.

Jobs hold plain data only (names, validated parameters with their defaults filled in,
settings). Snakemake cannot represent a dataclass parameter, so it never compares the job
itself; each rule also passes :func:`signature` (a dict of every field that changes the
result), and Snakemake's parameter trigger reruns a job exactly when that changes: writing a
default out explicitly changes nothing, and neither do execution settings (fields marked
:func:`execution`: device, batch sizes, memory budget, scheduler), which never change results.
Paths come from the rule's ``input``/``output``, never from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .params import ParamSet


def execution(default=None):
    """A field that says how a job runs, not what it computes (no rerun when it changes)."""
    return field(default=default, metadata={"execution": True})


def signature(job) -> dict:
    """The fields of ``job`` that its result depends on, as plain data (Snakemake's params)."""
    return {f.name: _plain(getattr(job, f.name)) for f in fields(job)
            if not f.metadata.get("execution")
            and not (f.metadata.get("omit_default") and getattr(job, f.name) == f.default)}


def _plain(v):
    if isinstance(v, ParamSet):
        return v.signature()
    if hasattr(v, "__dataclass_fields__"):
        return asdict(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class ModelSpec:
    """Arguments of :func:`xaipipe.models.load_model`: ``arch``, ``weights`` (an enum name,
    ``random``, or None when the weights file is the job's ``model`` input), constructor
    keyword arguments."""
    arch: str
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)

    def load_args(self, weights_path: str | None = None) -> dict:
        """``load_model`` keyword arguments; ``weights_path`` (the rule's input) wins."""
        return {"name": self.arch, "weights": weights_path or self.weights, **self.kwargs}


@dataclass(frozen=True)
class ImageStoreJob:
    dataset: str
    source: dict                     # the data set's validated parameters (with its kind)
    preprocess: dict                 # validated preprocessing parameters
    variant: str
    variant_params: dict
    splits: tuple | None             # None: every split of the data set


@dataclass(frozen=True)
class TrainJob:
    arch: str
    params: dict                     # validated training parameters
    device: str = execution("auto")


@dataclass(frozen=True)
class PredictJob:
    model: ModelSpec
    split: str
    device: str = execution("auto")
    batch_size: int = execution(256)


@dataclass(frozen=True)
class SelectJob:
    filter: str
    params: dict


@dataclass(frozen=True)
class ExplainJob:
    """Attribution maps of the union of the requested selections (each capped at its
    ``max_images``, aligned with the rule's ``selections`` input)."""
    method: str                      # registered name
    params: ParamSet                 # the method's checked Params (get_method(method).check)
    model: ModelSpec
    target: str                      # label | pred
    max_images: tuple                # one per selection input (None: all)
    split: str
    seed: int
    dtype: str
    provenance: dict                 # dataset, preprocess, model, method run, variant, filters
    device: str = execution("auto")
    batch_size: int = execution(32)
    memory_mb: float | None = execution(None)
    sweep: tuple | None = None       # step counts of one path evaluation, one store each
    # the layout, not the values read back: GradCAM's h x w map as computed (upsampled on
    # read), and shards of images (the unit of resume, xaipipe.shards)
    native_resolution: bool = execution(True)
    shard_size: int | None = execution(None)
    # float16 mantissa bits kept (None: all 10); in the signature only when set, so stores
    # written before the option existed keep theirs
    keepbits: int | None = field(default=None, metadata={"omit_default": True})
    precision: str = field(default="float32", metadata={"omit_default": True})


@dataclass(frozen=True)
class ReferenceSetJob:
    """LPI's reference set of one model from its data set's training split
    (:func:`xaipipe.explain.lpi_references`)."""
    model: ModelSpec
    n_references: int
    n_clusters: int
    seed: int
    offset: int = 0                  # compat ypeiyu_lpi: 200 (the reference code's sets)
    split: str = "train"
    device: str = execution("auto")
    batch_size: int = execution(200)


@dataclass(frozen=True)
class ScoreJob:
    """Per-image scores of one saliency store by one metric; the images scored are the union
    of the requested selections (aligned with the rule's ``selections`` input) present in the
    store (and in the other variant's store, where the metric compares two)."""
    metric: str                      # registered name
    params: ParamSet                 # the metric's checked Params (get_metric(metric).check)
    model: ModelSpec | None          # None: the metric needs no model
    max_images: tuple
    split: str
    provenance: dict
    device: str = execution("auto")
    batch_size: int = execution(256)
    scheduler: str = execution("local")
    dashboard: bool = execution(False)
    shard_size: int | None = execution(None)
    # mixed precision of the metric's model calls (in the signature only when not float32)
    precision: str = field(default="float32", metadata={"omit_default": True})


@dataclass(frozen=True)
class Entry:
    """One per-image score file of an experiment and the images the experiment reads from it:
    those of selection input ``selection`` (an index into the rule's ``selections``), first
    ``max_images`` by id."""
    keys: dict                       # dataset, model, metric, method, variant
    metric: str                      # registered name
    selection: int
    max_images: int | None
    method: dict = field(default_factory=dict)   # method_run, method_name, steps, idgi


@dataclass(frozen=True)
class SummaryJob:
    experiment: str
    entries: tuple                   # Entry per ``scores`` input, aligned
    n_boot: int
    level: float
    seed: int


@dataclass(frozen=True)
class FigureJob:
    experiment: str
    figure: str
    methods: tuple                   # aligned with the rule's ``stores`` input
    split: str
    n_images: int
