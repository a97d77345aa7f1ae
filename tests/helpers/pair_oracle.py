"""The PAIR `saliency` package (0.2.1) as an oracle, isolated (`attribution-methods.md` §12).

The package calls two NumPy functions removed in NumPy 2.4 (``np.trapz`` in
``saliency.metrics.pic``, ``np.quantile(..., interpolation=...)`` in ``GuidedIG``). Instead of
a second environment with an older NumPy, :func:`pair_saliency` restores exactly those two for
the duration of a ``with`` block (NumPy's own ``trapezoid`` and ``quantile(method=...)``, which
compute the same thing) and puts NumPy back as it was afterwards, so nothing outside the oracle
tests ever sees the shims. Tests that need the package skip when it is not installed (fail
under ``XAIPIPE_REQUIRE_ORACLES=1``, ``tests/helpers/oracles.py``).
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np

from helpers import oracles


@contextlib.contextmanager
def pair_saliency():
    """``with pair_saliency() as (core, pic):`` the ``saliency.core`` and
    ``saliency.metrics.pic`` modules with the NumPy shims active."""
    oracles.require("saliency.core", "PAIR saliency 0.2.1, the oracle of Guided IG, Blur IG "
                    "and PIC (pip install saliency==0.2.1 scikit-image)")
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


def pair_pic(model, x, maps, target, masks, thresholds, min_pred=0.8):
    """PAIR's ``compute_pic_metric`` per image, SIC and AIC, as its notebook calls it: uint8
    HWC images round(255 x), the ``abs_of_sum`` map, softmax probabilities (SIC) and top-1
    correctness (AIC) of ``model`` (on the images' device), at ``thresholds``. Returns one dict per image,
    ``{"sic": PicMetricResult or None, "aic": ...}`` (None: PAIR excluded the image)."""
    import torch

    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sal = maps.sum(1).abs().float().cpu().numpy()

    def logits(batch):
        b = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).to(x.device)
        with torch.no_grad():
            return model(b).float().cpu()

    out = []
    with pair_saliency() as (_, pic):
        for i in range(len(u8)):
            t = int(target[i])
            fns = {"sic": lambda b: torch.softmax(logits(b), 1)[:, t].double().numpy(),
                   "aic": lambda b: (logits(b).argmax(1) == t).double().numpy()}
            row = {}
            for score, f in fns.items():
                try:
                    row[score] = pic.compute_pic_metric(u8[i], sal[i], masks[i], f,
                                                        list(thresholds),
                                                        min_pred_value=min_pred)
                except pic.ComputePicMetricError:
                    row[score] = None
            out.append(row)
    return out
