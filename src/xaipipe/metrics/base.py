"""Shared base of the metrics and their registry.

A metric is a class with declared ``params`` and a :meth:`Metric.compute` that scores a batch
of images and maps, returning per-image columns (scalars (N,) or curves (N, K)). Each metric
file also exposes a plain function (``insertion(model, images, maps, target, ...)``).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..params import Param, check_params

_METRICS: dict[str, type["Metric"]] = {}


class Metric:
    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    scalars: ClassVar[tuple[str, ...]] = ()      # per-image scalar columns to aggregate

    def __init__(self, **params):
        self.hparams = self.check(params)

    @classmethod
    def check(cls, params: dict, where: str | None = None) -> dict:
        return check_params(cls.params, params, where or f"metric {cls.name!r}")

    def fill_variant(self) -> str | None:
        """Name of an image variant the metric needs besides the explained images, if any."""
        return None

    def compute(self, model, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                fill: torch.Tensor | None = None, batch_size: int = 256) -> dict[str, np.ndarray]:
        raise NotImplementedError


def register_metric(cls):
    if cls.name in _METRICS and _METRICS[cls.name] is not cls:
        raise ValueError(f"metric name {cls.name!r} is registered twice")
    _METRICS[cls.name] = cls
    return cls


def available_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> type[Metric]:
    if name not in _METRICS:
        raise ConfigError(f"unknown metric {name!r}; available: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]
