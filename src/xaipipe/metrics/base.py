"""Shared base of the metrics and their registry (DESIGN.md "Contracts inside the package").

A metric is a class with declared ``params``, the inputs it ``needs`` (a subset of
:data:`NEEDS`), the ``direction`` that is better, and a :meth:`Metric.compute` that scores a
batch given as :class:`MetricInputs`, returning per-image columns (scalars (N,) or curves
(N, K)). :meth:`Metric.__call__` checks the inputs, runs the model in eval mode and leaves it
as it found it (`metrics.md` §1). :meth:`Metric.aggregate` turns a table of per-image columns
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

from ..params import Param, check_params
from ..registry import Registry
from ..utils import eval_mode
from .aggregate import bootstrap_ci, column_seed

NEEDS = ("model", "images", "other_images", "other_maps", "masks", "boxes", "extras")
DIRECTIONS = ("higher", "lower")

# Metrics are registered by the imports in ``metrics/__init__.py`` (importing this module
# imports the package first), not by scanning the package: that would import the Dask runner.
METRICS = Registry("metric")
register_metric = METRICS.register


def available_metrics() -> list[str]:
    return METRICS.names()


def get_metric(name: str, where: str | None = None) -> type["Metric"]:
    return METRICS.get(name, where)


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

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index) -> "MetricInputs":
        """The inputs of the images ``index`` (a slice or an index array)."""
        rows = np.arange(len(self.ids))[index]
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("model", "batch_size") or v is None:
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


class Metric:
    """Base class. Subclasses set ``name``, ``params``, ``scalars`` (the per-image columns the
    summary aggregates), ``needs``, ``direction`` and implement :meth:`compute`.

    ``excludes`` maps a scalar column to the boolean per-image column that says which images
    were left out of it (their value is NaN): the only NaN a metric may return.
    An instance may widen ``needs`` (insertion with ``fill: blur`` needs the other images).
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
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

    def __init__(self, **params):
        self.hparams = self.check(params)

    @classmethod
    def check(cls, params: dict, where: str | None = None) -> dict:
        return check_params(cls.params, params, where or f"metric {cls.name!r}")

    def other_variant(self) -> str | None:
        """The variant of ``other_images`` / ``other_maps``, if the metric needs one."""
        return None

    def applies_to(self, variant: str) -> bool:
        """Whether the metric scores maps of ``variant`` (stability skips its reference)."""
        return True

    # -- to implement ---------------------------------------------------------------------
    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------
    def __call__(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        """Check the inputs, run :meth:`compute` with the model in eval mode and without
        gradients (a metric that needs them uses ``torch.enable_grad()``), restore every
        module's training mode, and return the per-image columns as arrays."""
        inputs = self._check_inputs(inputs)
        with eval_mode(inputs.model), torch.no_grad():
            out = self.compute(inputs)
        n = len(inputs.ids)
        cols = {}
        for k, v in out.items():
            v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if v.ndim == 0 or v.shape[0] != n:
                raise RuntimeError(f"metric {self.name!r}: column {k!r} has shape {v.shape}, "
                                   f"expected a leading dimension of {n} images")
            cols[k] = v
        return cols

    def _check_inputs(self, inputs: MetricInputs) -> MetricInputs:
        """The declared needs are present, every per-image input has N rows, maps are finite;
        returns the inputs with ``target`` as an (N,) long tensor (a scalar is broadcast)."""
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
        for k in ("maps", "other_maps"):
            v = getattr(inputs, k)
            if v is not None and v.is_floating_point() and not torch.isfinite(v).all():
                bad = torch.nonzero(~torch.isfinite(v.flatten(1)).all(1)).flatten().cpu()
                raise ValueError(f"metric {self.name!r}: {k} of image ids "
                                 f"{np.asarray(inputs.ids)[bad.numpy()].tolist()} hold NaN/inf")
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


def summary_row(cls, column: str, values, *, n_boot: int, level: float, seed: int) -> dict:
    """Mean and bootstrap interval of the finite ``values`` as a summary row of ``cls``."""
    v = np.asarray(values, np.float64)
    finite = int(np.isfinite(v).sum())
    mean, lo, hi = bootstrap_ci(v, n_boot, level, seed)
    return {"score": column, "n": finite, "mean": mean, "ci_low": lo, "ci_high": hi,
            "direction": cls.direction, "excluded": int(v.size - finite)}
