"""JPEG-stability MSE (the TMLR study of IDGI, ``ShreeSinghi/TMLR-IDGI:script_lossy.py``), clean
form.

s is the map of an image in the reference variant (``original``) and s′ the map of the same
method recomputed on another variant (``jpeg``), for the same target. Both are reduced with
the signed channel sum to H×W and divided by their own signed sum over pixels, ŝ = s/Σs; the
per-image score is the mean over pixels of (ŝ − ŝ′)², so the mean over images is the paper's
Σ_images Σ_pixels (ŝ − ŝ′)² / (N·H·W). Computed in float64.

The normalisation is ill-conditioned where the signed sum nearly cancels: images with
|Σs| < 1e-3·Σ|s| (or likewise for s′) are flagged (``ill_conditioned``), and
``mse_well_conditioned`` is the MSE over the others (NaN on flagged images). An exactly
zero sum leaves ŝ undefined: ``mse`` is NaN there too (such an image is always flagged).
"""
from __future__ import annotations

import numpy as np
import torch

from ..maths.imageops import REDUCTIONS, reduce_channels
from ..params import Param
from .base import NONFINITE_PARAM, Metric, MetricInputs, register_metric

ILL_CONDITIONED = 1e-3   # flag |Σs| < ILL_CONDITIONED · Σ|s| (docs/metrics.md, Stability)


def _normalised(maps: torch.Tensor, reduction: str):
    """(N, C, H, W) -> (ŝ (N, H·W) float64, ill-conditioned (N,) bool)."""
    s = reduce_channels(maps.double(), reduction).flatten(1)
    total, mass = s.sum(1), s.abs().sum(1)
    ill = ~(total.abs() >= ILL_CONDITIONED * mass) | (total == 0)
    safe = torch.where(total == 0, torch.ones_like(total), total)
    shat = s / safe[:, None]
    shat[total == 0] = torch.nan
    return shat, ill


def stability(maps_a: torch.Tensor, maps_b: torch.Tensor, reduction: str = "sum",
              on_nonfinite: str = "raise") -> dict:
    """Per-image JPEG-stability MSE between two sets of maps of the same images.

    Returns ``mse`` (N,), ``ill_conditioned`` (N,) bool and ``mse_well_conditioned`` (the MSE,
    NaN where flagged). Maps may differ in channels but not in H×W; the score is symmetric.
    Maps with NaN/Inf raise a NonFiniteError naming their positions, or with
    ``on_nonfinite="record"`` give NaN scores flagged in ``nonfinite``."""
    a, b = torch.as_tensor(maps_a), torch.as_tensor(maps_b)
    n = a.shape[0] if a.ndim else 0
    return Stability(reduction=reduction, on_nonfinite=on_nonfinite)(MetricInputs(
        ids=np.arange(n), target=torch.zeros(n, dtype=torch.long), maps=b, other_maps=a))


def _stability(a: torch.Tensor, b: torch.Tensor, reduction: str) -> dict:
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(f"maps must be (N, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"stability compares maps of the same images and size, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    sa, ill_a = _normalised(a, reduction)
    sb, ill_b = _normalised(b.to(a.device), reduction)
    mse = ((sa - sb) ** 2).mean(1).cpu().numpy()
    ill = (ill_a | ill_b).cpu().numpy()
    return {"mse": mse, "ill_conditioned": ill,
            "mse_well_conditioned": np.where(ill, np.nan, mse)}


@register_metric
class Stability(Metric):
    """Maps of the explained variant against those of ``reference`` (same method, ids and
    targets). No model and no images are needed; the reference variant itself is skipped."""
    name = "stability"
    params = {
        "reference": Param("original", str, doc="variant whose maps are the reference s"),
        "reduction": Param("sum", str, REDUCTIONS,
                           doc="channel reduction (the TMLR study: signed sum)"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("mse", "mse_well_conditioned")
    needs = frozenset({"other_maps"})
    direction = "lower"
    excludes = {"mse": "ill_conditioned", "mse_well_conditioned": "ill_conditioned"}

    def other_variant(self) -> str:
        return self.hparams.reference

    def applies_to(self, variant: str) -> bool:
        return variant != self.hparams.reference

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        return _stability(inputs.other_maps, inputs.maps, self.hparams.reduction)
