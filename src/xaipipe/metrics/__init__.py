"""Metrics: one function per metric, per-image scores; a registry for the pipeline.

Adding a metric: a file here with a :class:`~xaipipe.metrics.base.Metric` subclass decorated
with ``@register_metric`` and a plain function, imported below.
"""
from .base import Metric, available_metrics, get_metric, register_metric
from .deletion import deletion
from .insertion import insertion

__all__ = ["Metric", "available_metrics", "deletion", "get_metric", "insertion",
           "register_metric"]
