"""The PAIR `saliency` package (0.2.1) as an oracle, isolated (`attribution-methods.md` §12).

The package calls two NumPy functions removed in NumPy 2.4 (``np.trapz`` in
``saliency.metrics.pic``, ``np.quantile(..., interpolation=...)`` in ``GuidedIG``). Instead of
a second environment with an older NumPy, :func:`pair_saliency` restores exactly those two for
the duration of a ``with`` block (NumPy's own ``trapezoid`` and ``quantile(method=...)``, which
compute the same thing) and puts NumPy back as it was afterwards, so nothing outside the oracle
tests ever sees the shims. Tests that need the package skip when it is not installed.
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest


@contextlib.contextmanager
def pair_saliency():
    """``with pair_saliency() as (core, pic):`` the ``saliency.core`` and
    ``saliency.metrics.pic`` modules with the NumPy shims active."""
    pytest.importorskip("saliency.core")
    had_trapz = hasattr(np, "trapz")
    old_trapz = getattr(np, "trapz", None)
    old_quantile = np.quantile

    def quantile(a, q, *args, interpolation=None, **kw):
        if interpolation is not None:
            kw["method"] = interpolation
        return old_quantile(a, q, *args, **kw)

    np.trapz = np.trapezoid
    np.quantile = quantile
    try:
        core = importlib.import_module("saliency.core")
        pic = importlib.import_module("saliency.metrics.pic")
        yield core, pic
    finally:
        np.quantile = old_quantile
        if had_trapz:
            np.trapz = old_trapz
        else:
            del np.trapz
