"""Shared base of the metrics and their registry (the contract: ``docs/metrics.md``).

A metric is a class with declared ``params``, the inputs it ``needs`` (a subset of
:data:`NEEDS`), the ``direction`` that is better, and a :meth:`Metric.compute` that scores a
batch given as :class:`MetricInputs`, returning per-image columns (scalars (N,) or curves
(N, K)). :meth:`Metric.__call__` checks the inputs, runs the model in eval mode and leaves it
as it found it. :meth:`Metric.aggregate` turns a table of per-image columns
into summary rows (default: mean with a seeded percentile bootstrap interval).

Each metric file also exposes a plain function (``insertion(model, images, maps, target, ...)``)
and is imported in ``metrics/__init__.py``, which registers it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ON_NONFINITE, NonFiniteError
from ..params import Param, Parametrised, ParamSet, params_class
from ..registry import Registry
from ..utils import eval_mode, nonfinite_rows
from .statistics import bootstrap_ci, column_seed

NEEDS = ("model", "images", "other_images", "other_maps", "masks", "boxes", "extras",
         "attribute")
DIRECTIONS = ("higher", "lower")

#: Declared by the metrics that take it (``params = {..., "on_nonfinite": NONFINITE_PARAM}``);
#: the others always raise. See :meth:`Metric.run`.
NONFINITE_PARAM = Param("raise", str, ON_NONFINITE,
                        doc="NaN/Inf in a map or in the model's scores: raise (NonFiniteError "
                            "naming the image ids) or record (that image's float columns NaN, "
                            "flagged in the bool column nonfinite)")

#: every metric of the package: each module registers its class (``@register_metric``)
METRICS = Registry("metric", package="xaipipe.metrics")
register_metric = METRICS.register


def available_metrics() -> list[str]:
    return METRICS.names()


def get_metric(name: str, where: str | None = None) -> type["Metric"]:
    return METRICS.get(name, where)


def extras_as_numpy(extras: dict | None) -> dict[str, np.ndarray]:
    """A method's extras as NumPy arrays on the host (tensors, on any device, are copied
    there, bfloat16 as float32, which NumPy lacks; arrays are left as they are)."""
    def host(v):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return {k: host(v) if isinstance(v, torch.Tensor) else v for k, v in (extras or {}).items()}


@dataclass
class MetricInputs:
    """One batch of images for a metric. Only ``ids``, ``target`` and ``maps`` are always
    given; the rest is filled only where the metric declares it in ``needs``."""
    ids: np.ndarray                              # (N,) image ids
    target: torch.Tensor                         # (N,) long
    maps: torch.Tensor                           # (N, C, H, W) maps of the explained variant
    model: nn.Module | None = None
    images: torch.Tensor | None = None           # (N, 3, H, W) float32 in [0, 1]
    other_images: torch.Tensor | None = None     # same ids, variant metric.other_variant()
    other_maps: torch.Tensor | None = None       # same method and ids, that variant
    masks: torch.Tensor | None = None            # (N, H, W) bool ground-truth object masks
    boxes: list | None = None                    # reserved
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # the method's extras
    batch_size: int = 256                        # model inputs per forward
    method: str | None = None                    # registered name of the method that made the
    #                                              maps (store attribute ``method_name``)
    #: ``attribute(model, images, target, ids) -> maps``: the method that made the maps, with
    #: its parameters and seed, to run on another model (the model-randomisation check); the
    #: runner builds it from the store, so a metric never imports a method
    attribute: object | None = None

    def __post_init__(self):
        # extras straight from a method (``Attribution.extras``) may be tensors on its device
        self.extras = extras_as_numpy(self.extras)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index) -> "MetricInputs":
        """The inputs of the images ``index`` (a slice or an index array)."""
        rows = np.arange(len(self.ids))[index]
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("model", "batch_size", "method", "attribute") or v is None:
                out[f.name] = v
            elif f.name == "extras":
                out[f.name] = {k: np.asarray(a)[rows] for k, a in v.items()}
            elif isinstance(v, torch.Tensor):
                out[f.name] = v[torch.as_tensor(rows, device=v.device)]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in rows]
            else:
                out[f.name] = np.asarray(v)[rows]
        return MetricInputs(**out)


def as_target(target, n: int, device=None) -> torch.Tensor:
    """``target`` as an (n,) long tensor; a scalar or a 1-element list/array/tensor is
    broadcast to all n images."""
    t = torch.as_tensor(target, device=device).long().reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for {n} images")
    return t


class Metric(Parametrised):
    """Base class. Subclasses set ``name``, ``params``, ``scalars`` (the per-image columns the
    summary aggregates), ``needs``, ``direction`` and implement :meth:`compute`.

    ``excludes`` maps a scalar column to the boolean per-image column that says which images
    were left out of it (their value is NaN): the only NaN a metric may return (besides the
    images flagged ``nonfinite`` with ``on_nonfinite: record``, see :meth:`run`).
    An instance may widen ``needs`` (insertion with ``fill: blur`` needs the other images).
    """

    kind = "metric"
    scalars: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset({"model", "images"})
    direction: ClassVar[str] = "higher"
    excludes: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        bad = set(cls.needs) - set(NEEDS)
        if bad:
            raise TypeError(f"metric {cls.name!r}: unknown needs {sorted(bad)}; allowed: {NEEDS}")
        if cls.direction not in DIRECTIONS:
            raise TypeError(f"metric {cls.name!r}: direction must be one of {DIRECTIONS}")

    def __init__(self, params: ParamSet | dict | None = None, **kwargs):
        """``params``: the checked ``Params`` (what a job carries) or a mapping; or the
        parameters as keyword arguments, not both."""
        self.set_params(params, kwargs)

    def other_variant(self) -> str | None:
        """The variant of ``other_images`` / ``other_maps``, if the metric needs one."""
        return None

    def applies_to(self, variant: str) -> bool:
        """Whether the metric scores maps of ``variant`` (stability skips its reference)."""
        return True

    def applies_to_method(self, method: str, params: dict) -> bool:
        """Whether the metric scores the maps of registered method ``method`` run with
        ``params`` (its validated parameters, defaults filled in; the plan leaves other pairs out of an experiment, as it leaves out
        variants :meth:`applies_to` rejects; ``convergence`` needs recorded histories)."""
        return True

    # -- to implement ---------------------------------------------------------------------
    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------
    def __call__(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        """:meth:`run` with the metric's own :meth:`compute`."""
        return self.run(inputs)

    def run(self, inputs: MetricInputs, **compute_kw) -> dict[str, np.ndarray]:
        """Check the inputs, run :meth:`compute` (with ``compute_kw``) with the model in eval
        mode and without gradients (a metric that needs them uses ``torch.enable_grad()``),
        restore every module's training mode, and return the per-image columns as arrays.

        Non-finite values never pass silently. Before :meth:`compute`: maps (and other maps)
        holding NaN/Inf. After it: a float column that is not finite where the metric does not
        exclude the image (``excludes``; e.g. a curve from a model with NaN weights), or where
        :meth:`compute` flags it in an optional bool column ``nonfinite`` (PIC: model scores
        of a level). With ``on_nonfinite: raise`` (the default, and for metrics that do not
        declare it) that raises :class:`~xaipipe.errors.NonFiniteError` naming the image ids;
        with ``record`` the bad maps are scored as zeros, then every float column of the
        flagged images is set to NaN and the bool column ``nonfinite`` (N,) is returned
        (in every batch, all False where nothing was wrong)."""
        inputs = self._check_inputs(inputs)
        record = getattr(self.hparams, "on_nonfinite", "raise") == "record"
        inputs, bad_maps = self._nonfinite_maps(inputs, record)
        with eval_mode(inputs.model), torch.no_grad():
            out = self.compute(inputs, **compute_kw)
        n = len(inputs.ids)
        cols = {}
        for k, v in out.items():
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if v.ndim == 0 or v.shape[0] != n:
                raise RuntimeError(f"metric {self.name!r}: column {k!r} has shape {v.shape}, "
                                   f"expected a leading dimension of {n} images")
            cols[k] = v
        bad = np.asarray(cols.pop("nonfinite", np.zeros(n, bool)), bool) | \
            self._unexcluded_nonfinite(cols)
        if not record:
            if bad.any():
                raise NonFiniteError(
                    f"metric {self.name!r}: the model's scores of image ids "
                    f"{np.asarray(inputs.ids)[bad].tolist()} are NaN/Inf (broken weights or "
                    "an overflow); set on_nonfinite: record to keep going with NaN scores "
                    "flagged in the column nonfinite", np.asarray(inputs.ids)[bad].tolist())
            return cols
        return self.record_nonfinite(cols, bad | bad_maps)

    def record_nonfinite(self, cols: dict[str, np.ndarray],
                         bad: np.ndarray) -> dict[str, np.ndarray]:
        """``on_nonfinite: record``: the float columns of the ``bad`` images NaN and the bool
        column ``nonfinite``. A metric with its own validity flags (PIC) updates them too."""
        for k, v in cols.items():
            if v.dtype.kind in "fc" and bad.any():
                cols[k] = v.copy()
                cols[k][bad] = np.nan
        cols["nonfinite"] = bad
        return cols

    def excluded_by(self, column: str) -> str | None:
        """The bool column that flags the images left out of ``column`` (``excludes``; a
        metric with columns named at run time, one per stage, overrides it)."""
        return self.excludes.get(column)

    def _unexcluded_nonfinite(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: images with a non-finite float value the metric does not exclude."""
        n = len(next(iter(cols.values()))) if cols else 0
        bad = np.zeros(n, bool)
        for k, v in cols.items():
            if v.dtype.kind in "fc":
                rows = nonfinite_rows(v)
                flag = self.excluded_by(k)
                if flag in cols:
                    rows &= ~cols[flag].astype(bool)
                bad |= rows
        return bad

    def _nonfinite_maps(self, inputs: MetricInputs, record: bool):
        """Raise :class:`~xaipipe.errors.NonFiniteError` naming the ids of images whose maps
        (or other maps) hold NaN/Inf, or (``record``) return the inputs with those maps zeroed
        and the (N,) bool flags. One ``isfinite`` reduction per map tensor."""
        bad = np.zeros(len(inputs.ids), bool)
        for k in ("maps", "other_maps"):
            v = getattr(inputs, k)
            if v is None:
                continue
            rows = nonfinite_rows(v)
            if not bool(rows.any()):
                continue
            rows_np = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows
            if not record:
                ids = np.asarray(inputs.ids)[rows_np].tolist()
                raise NonFiniteError(f"metric {self.name!r}: {k} of image ids {ids} hold "
                                     "NaN/Inf (the attribution method produced them; a map "
                                     "with NaN cannot be ranked)", ids)
            keep = ~rows.view(-1, *([1] * (v.ndim - 1)))
            inputs = replace(inputs, **{k: torch.where(keep, v, torch.zeros_like(v))})
            bad |= rows_np
        return inputs, bad

    def _check_inputs(self, inputs: MetricInputs) -> MetricInputs:
        """The declared needs are present and every per-image input has N rows; returns the
        inputs with ``target`` as an (N,) long tensor (a scalar is broadcast). Finiteness is
        :meth:`run`'s job."""
        missing = [k for k in NEEDS if k in self.needs and getattr(inputs, k) is None]
        if missing:
            raise ValueError(f"metric {self.name!r} needs {', '.join(missing)}, which the "
                             f"inputs do not have (MetricInputs.{missing[0]} is None)")
        n = len(inputs.ids)
        ref = inputs.images if inputs.images is not None else inputs.maps
        inputs = replace(inputs, target=as_target(inputs.target, n, ref.device))
        for k in ("maps", "images", "other_images", "other_maps", "masks"):
            v = getattr(inputs, k)
            if v is not None and v.shape[0] != n:
                raise ValueError(f"metric {self.name!r}: {k} has {v.shape[0]} images, "
                                 f"ids has {n}")
        return inputs

    # -- aggregation ----------------------------------------------------------------------
    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """One summary row per column of ``scalars``: the mean over the images with a finite
        value (``n`` of them) and its percentile bootstrap interval, seeded by (seed, column);
        ``excluded`` counts the images left out (NaN, e.g. ``auc_norm`` of an image whose
        reference score is below ``norm_min``)."""
        return [summary_row(cls, col, df[col] if col in df else np.zeros(0), n_boot=n_boot,
                            level=level, seed=column_seed(seed, col))
                for col in cls.scalars]


Metric.Params = params_class(Metric, {})


def summary_row(cls, column: str, values, *, n_boot: int, level: float, seed: int) -> dict:
    """Mean and bootstrap interval of the finite ``values`` as a summary row of ``cls``."""
    v = np.asarray(values, np.float64)
    finite = int(np.isfinite(v).sum())
    mean, lo, hi = bootstrap_ci(v, n_boot, level, seed)
    return {"score": column, "n": finite, "mean": mean, "ci_low": lo, "ci_high": hi,
            "direction": cls.direction, "excluded": int(v.size - finite)}
