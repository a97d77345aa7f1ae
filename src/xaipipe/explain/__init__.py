"""Attribution methods: a registry of one class per method.

>>> maps = explain("integrated_gradients", model, images, target, steps=32, baseline="black")
"""
from .base import (Attribution, Method, available_methods, explain, explain_sweep, get_method,
                   register_method, run_method)

__all__ = ["Attribution", "Method", "available_methods", "explain", "explain_sweep", "get_method",
           "register_method", "run_method"]
