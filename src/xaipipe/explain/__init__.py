"""Attribution methods: a registry of one class per method.

>>> maps = explain("integrated_gradients", model, images, target, steps=32, baseline="black")

Maps with NaN/Inf raise :class:`~xaipipe.errors.NonFiniteError` naming the batch positions
(and image ids); ``on_nonfinite="record"`` keeps them, flagged in ``extras["nonfinite"]``.
"""
from .base import (Attribution, Method, available_methods, check_finite, explain, explain_sweep,
                   get_method, register_method, run_method)

__all__ = ["Attribution", "Method", "available_methods", "check_finite", "explain",
           "explain_sweep", "get_method", "register_method", "run_method"]
