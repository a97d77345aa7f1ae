"""Insertion and deletion curves (Petsiuk et al., RISE, BMVC 2018), shared by the two metrics.

π ranks the H·W pixels of the reduced map, most important first, with a stable descending sort
(ties: lower flat index first). For a fraction q, n(q) = ⌊q·H·W⌋ pixels (all channels) are
- insertion: taken from x̃, the rest from the fill b
- deletion: taken from b, the rest from x̃.
The score is the softmax probability (or logit) of the target; the AUC is the trapezoid over
q ∈ [0, 1]; the normalised AUC divides the curve by the score of the full image (the
reference). A reference close to 0 makes that ratio explode (an image the model gets wrong on
a JPEG variant: p ≈ 1e-4 turns an AUC of 0.01 into 100), so images with |reference| <
``norm_min`` get ``auc_norm`` = NaN and ``norm_excluded`` = True, and the summary leaves them
out and counts them. For ``score: logit`` the reference may be negative: the rule is the same
(|logit| < norm_min is excluded; a negative reference is kept, the curve divided by it is 1 at
the full image as always).

Maps with NaN/Inf (checked before ranking: a NaN map has no order) and non-finite model scores
(a curve from a model with NaN weights) raise a NonFiniteError naming the image ids; with
``on_nonfinite: record`` those images get NaN columns and ``nonfinite`` = True
(:meth:`~xaipipe.metrics.base.Metric.run`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..maths.objectives import objective
from ..maths.imageops import REDUCTIONS, reduce_channels
from ..params import Param
from .base import NONFINITE_PARAM, as_target

FILLS = ("black", "normzero", "blur")
SCORES = ("prob", "logit")
PROTOCOLS = ("rise", "gradmask", "gradmask_clean")
#: the GradMask protocol's points, in percent of the pixels (``GradMask.py``)
GRADMASK_PERCENT = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
#: protocols that upsample coarse maps with ``nearest`` (GradMask's patch maps), else bilinear
NEAREST_PROTOCOLS = ("gradmask", "gradmask_clean")

PERTURBATION_PARAMS = {
    "steps": Param(21, int, min=2, doc="number of fractions q, evenly spaced over [0, 1]"),
    "fill": Param("black", str, FILLS,
                  doc="black (pixel 0), normzero (the model's mean colour) or blur (the blur "
                      "variant of the same images)"),
    "score": Param("prob", str, SCORES, doc="softmax probability or logit of the target"),
    "reduction": Param("abs_sum", str, REDUCTIONS, doc="channel reduction of the map"),
    "compat": Param(None, (str, type(None)), ("tmlr", "gradmask"),
                    doc="tmlr: the TMLR code's ranking (float16 maps, unstable argsort); "
                        "gradmask: NumPy's default argsort of the float32 map"),
    "protocol": Param("rise", str, PROTOCOLS, omit_default=True,
                      doc="rise: steps fractions over [0, 1], AUC on [0, 1]; gradmask: 1, 5, "
                          "10, 20, ..., 100 % of the pixels, AUC over the percentages (0-100), "
                          "deletion from the point (0, 0), coarse maps nearest-upsampled; "
                          "gradmask_clean: the same points plus q = 0 (the true endpoints), AUC "
                          "on [0, 1]"),
    "norm_min": Param(0.05, float, min=0.0,
                      doc="auc_norm is NaN (and norm_excluded True) where |score of the full "
                          "image| < norm_min; 0 excludes only a zero reference"),
    "on_nonfinite": NONFINITE_PARAM,
}


def rankable(maps: torch.Tensor, reduction: str, size, mode: str = "bilinear") -> torch.Tensor:
    """(N, C, h, w) map -> (N, H, W) scores to rank: channel reduction, then upsampling of
    coarse maps (e.g. CAMs computed at lower resolution): bilinear, or ``nearest`` (the GradMask
    protocol)."""
    red = reduce_channels(maps.float(), reduction)
    if tuple(red.shape[-2:]) != tuple(size):
        kw = {"align_corners": False} if mode == "bilinear" else {}
        red = F.interpolate(red[:, None], size=size, mode=mode, **kw)[:, 0]
    return red


COMPATS = (None, "tmlr", "gradmask")


def pixel_order(scores: torch.Tensor, compat: str | None = None) -> torch.Tensor:
    """Flat pixel indices (N, H·W), most important first (ties: the lower index first).

    Clean: a stable descending sort of the float32 scores (ties: lower flat index first).
    ``compat="tmlr"``: the TMLR code's order, i.e. the scores rounded to float16 and
    ``torch.argsort(descending=True)`` on the CPU (not stable, so ties come in whatever order
    that sort leaves them; done on the CPU even when the model runs on a GPU)."""
    flat = scores.flatten(1)
    if compat is None:
        return torch.argsort(flat.float(), dim=1, descending=True, stable=True)
    if compat == "tmlr":
        half = flat.detach().float().cpu().half()
        return torch.argsort(half, dim=1, descending=True).to(flat.device)
    if compat == "gradmask":   # the top n are the last n of NumPy's default (quicksort) argsort
        a = np.argsort(flat.detach().float().cpu().numpy(), axis=1)[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(a)).to(flat.device)
    raise ValueError(f"unknown compat {compat!r}; allowed: None, 'tmlr', 'gradmask'")


def pixel_ranks(scores: torch.Tensor, compat: str | None = None) -> torch.Tensor:
    """rank[n, p] = position of pixel p in the descending order of scores[n] (N, H, W)
    (:func:`pixel_order`)."""
    flat = scores.flatten(1)
    order = pixel_order(scores, compat)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(scores)


def fractions(steps: int, protocol: str = "rise") -> np.ndarray:
    """The fractions q of the curve's points: ``steps`` over [0, 1] (``rise``), the GradMask
    protocol's 1, 5, 10, ..., 100 % (``gradmask``), or those with q = 0 first
    (``gradmask_clean``: insertion starts at the pure fill, deletion at the full image);
    ``steps`` is unused by the GradMask protocols."""
    if protocol == "gradmask":
        return np.asarray(GRADMASK_PERCENT, np.float64) / 100
    if protocol == "gradmask_clean":
        return np.asarray((0, *GRADMASK_PERCENT), np.float64) / 100
    return np.linspace(0.0, 1.0, steps)


def curve_auc(curve: np.ndarray, qs: np.ndarray, mode: str, protocol: str) -> np.ndarray:
    """Trapezoid AUC of curves (N, K) at ``qs``: over [0, 1] (``rise``, ``gradmask_clean``);
    ``gradmask``: over the percentages 100·q (0-100), deletion with the point (0, 0)
    prepended, as ``sklearn.metrics.auc`` in ``GradMask.py``."""
    if protocol != "gradmask":
        return np.trapezoid(curve, qs, axis=1)
    x = 100 * np.asarray(qs, np.float64)
    if mode == "deletion":
        x = np.concatenate([[0.0], x])
        curve = np.concatenate([np.zeros((curve.shape[0], 1)), curve], 1)
    return np.trapezoid(curve, x, axis=1)


def pixel_counts(fracs, n_pixels: int) -> np.ndarray:
    """n(q) = ⌊q·H·W⌋, robust to the float error of linspace (e.g. 0.3·100 = 30.000000000000004)."""
    return np.floor(np.asarray(fracs, np.float64) * n_pixels + 1e-9).astype(np.int64)


def make_fill(kind: str, images: torch.Tensor, model, fill: torch.Tensor | None) -> torch.Tensor:
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "normzero":
        return model.normalize.mean.to(images.dtype).expand_as(images)
    if fill is None:
        raise ValueError("fill 'blur' needs the blurred images (fill=...)")
    return fill.to(images.device, images.dtype)


@torch.no_grad()
def perturbation_curves(model, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                        mode: str, steps: int = 21, fill: str = "black",
                        fill_images: torch.Tensor | None = None, score: str = "prob",
                        reduction: str = "abs_sum", batch_size: int = 256,
                        norm_min: float = 0.05, compat: str | None = None,
                        protocol: str = "rise") -> dict[str, np.ndarray]:
    """Per-image curves and AUCs: ``curve`` (N, K) at :func:`fractions`, ``auc``,
    ``auc_norm`` (NaN where ``norm_excluded``), ``norm_excluded`` and ``score_full`` (the score
    of the unperturbed image); AUCs by :func:`curve_auc`. ``model`` is used as given (eval
    mode is the caller's job)."""
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be insertion or deletion, got {mode!r}")
    n, _, h, w = images.shape
    target = as_target(target, n, images.device)
    base = make_fill(fill, images, model, fill_images)
    up = "nearest" if protocol in NEAREST_PROTOCOLS else "bilinear"
    ranks = pixel_ranks(rankable(maps.to(images.device), reduction, (h, w), up), compat)
    qs = fractions(steps, protocol)
    counts = torch.as_tensor(pixel_counts(qs, h * w), device=images.device)
    k = len(qs)
    obj = "prob" if score == "prob" else "logit"

    def scores_of(x, t):
        out = []
        for s in range(0, x.shape[0], batch_size):
            out.append(objective(model(x[s:s + batch_size]), t[s:s + batch_size], obj))
        return torch.cat(out)

    curve = torch.empty((n, k), device=images.device)
    flat = torch.arange(n * k, device=images.device)
    for s in range(0, n * k, batch_size):
        idx = flat[s:s + batch_size]
        img_i, q_i = idx // k, idx % k
        top = (ranks[img_i] < counts[q_i].view(-1, 1, 1)).unsqueeze(1)    # (B, 1, H, W)
        if mode == "insertion":
            x = torch.where(top, images[img_i], base[img_i])
        else:
            x = torch.where(top, base[img_i], images[img_i])
        curve.view(-1)[idx] = objective(model(x), target[img_i], obj).float()
    full = scores_of(images, target).float()
    curve_np = curve.cpu().numpy().astype(np.float64)
    full_np = full.cpu().numpy().astype(np.float64)
    auc = curve_auc(curve_np, qs, mode, protocol)
    excluded = norm_excluded(full_np, norm_min)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_norm = curve_auc(curve_np / full_np[:, None], qs, mode, protocol)
    auc_norm[excluded] = np.nan
    return {"curve": curve_np, "auc": auc, "auc_norm": auc_norm, "norm_excluded": excluded,
            "score_full": full_np}


def norm_excluded(reference: np.ndarray, norm_min: float) -> np.ndarray:
    """Images whose reference score is too close to 0 to divide by: |ref| < norm_min, or
    ref = 0, or ref not finite."""
    ref = np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.abs(ref) >= norm_min) | (ref == 0)
