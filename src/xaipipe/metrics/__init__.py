"""Metrics: one function per metric, per-image scores; a registry for the pipeline.

Adding a metric: a file here with a :class:`~xaipipe.metrics.base.Metric` subclass decorated
with ``@register_metric`` (:data:`METRICS` imports every module of this package the first time
it is asked for a name) and a plain function of the same name, listed below as the public API.
"""
from .base import (METRICS, NEEDS, Metric, MetricInputs, available_metrics, get_metric,
                   register_metric)
from .convergence import convergence
from .cp import cp_scores
from .deletion import deletion
from .diffid import diffid
from .faithfulness import faithfulness
from .hallucination import hallucination_score
from .insertion import insertion
from .model_randomisation import model_randomisation
from .pic import pic
from .pointing_game import pointing_game
from .sensitivity_n import sensitivity_n
from .stability import stability

__all__ = ["METRICS", "NEEDS", "Metric", "MetricInputs", "available_metrics", "convergence",
           "cp_scores", "deletion", "diffid", "faithfulness", "get_metric",
           "hallucination_score", "insertion", "model_randomisation", "pic", "pointing_game",
           "register_metric", "sensitivity_n", "stability"]
