"""Attribution methods: one class per method, one file per method, grouped by family:

- :mod:`.gradients`: saliency, input × gradient, SmoothGrad
- :mod:`.paths`: path methods (integrated gradients, Guided IG, Blur IG; IDGI, baselines and
  the Riemann rules they share)
- :mod:`.cams`: GradCAM
- :mod:`.masks`: mask optimisation (ShearletX, WaveletX, pixel mask, smooth mask; StartGrad)
- :mod:`.controls`: the random control

Each registers itself in :data:`~.base.METHODS` with ``@register_method``.

>>> maps = explain("integrated_gradients", model, images, target, steps=32, baseline="black")

Maps with NaN/Inf raise :class:`~xaipipe.errors.NonFiniteError` naming the batch positions
(and image ids); ``on_nonfinite="record"`` keeps them, flagged in ``extras["nonfinite"]``.
"""
from .base import (Attribution, Method, available_methods, check_finite, explain, explain_sweep,
                   get_method, register_method, run_method)
from .paths.lpi_references import lpi_references

__all__ = ["Attribution", "Method", "available_methods", "check_finite", "explain",
           "explain_sweep", "get_method", "lpi_references", "register_method", "run_method"]
