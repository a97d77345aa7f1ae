"""Sensitivity-n (Ancona, Ceolini, Öztireli, Gross, *Towards better understanding of
gradient-based attribution methods for deep neural networks*, ICLR 2018), in the form of the
attribution re-calibration experiments of Yang, Akhtar, Wen, Mian (the group of *Local Path
Integration for Attribution*, AAAI 2023): ``ypeiyu/attribution_recalibration`` @5b745d4 and
``ypeiyu/LPI`` @6ff4785, ``evaluator.py`` (the sensitivity-n loop, ``converge_exp``).

Per image x (in the model's normalised space, the input of the network behind the model's own
normalisation), target y and fraction q (default 0.1, …, 0.9), ``samples`` (10) pixel masks
M_s ~ Bernoulli(q) are drawn (one per sample, shared by the C channels of a pixel). The masked
pixels are replaced by U[0, 1) noise drawn per element in normalised space (``fill: rand``)
or by normalised 0 (``fill: zero``, the model's mean colour). For each sample:

- the attribution of the masked pixels, A_s = Σ_{p ∈ M_s} r(φ)_p, with r(φ) = Σ_c |φ_c|
  (``reduction: abs``) or Σ_c φ_c (``sum``) (coarse maps upsampled bilinearly first);
- the drop of the target logit, D_s = z_y(x) − z_y(x with M_s filled).

The score of (image, q) is the Pearson correlation of (A_s) and (D_s) over the samples; it is
undefined (NaN) when either is constant. The reference prints, per q, the mean and the
population std over images of the defined correlations (NaN dropped).

The masks and the noise of (image, q) are drawn from (seed, image id, q) alone, masks first:
they do not depend on the batch, the device or the other images, and ``fill: rand`` and
``fill: zero`` see the same masks. The reference draws them from the global generator per
batch. All (image, q, sample) copies of a chunk of images go through batched forwards.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..params import Param
from ..utils import generator
from .base import NONFINITE_PARAM, Metric, MetricInputs, as_target, register_metric, summary_row
from .diffid import stack_column, check_fractions, split_model
from .perturbation import rankable
from .statistics import column_seed

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FILLS = ("rand", "zero")
REDUCTION = {"abs": "abs_sum", "sum": "sum"}


def draws(image_id, q: float, samples: int, shape, fill: str, seed: int = 0):
    """(masks (S, H, W) bool, noise (S, C, H, W) float32 or None) of one image and fraction,
    drawn on the CPU from (seed, image id, q): masks first, then (``fill: rand``) the noise."""
    c, h, w = shape
    g = generator(seed, "sensitivity_n", int(image_id), float(q))
    masks = torch.rand((samples, h, w), generator=g) < q
    noise = torch.rand((samples, c, h, w), generator=g) if fill == "rand" else None
    return masks, noise


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (float64); NaN where either side is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


@torch.no_grad()
def sensitivity_samples(model, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                        ids, fractions=FRACTIONS, samples: int = 10, fill: str = "rand",
                        reduction: str = "abs", seed: int = 0, batch_size: int = 256):
    """(attribution sums A, logit drops D, nonfinite): A and D (N, Q, S) float64, nonfinite
    (N,) bool (a logit of the image or of a masked copy is NaN/Inf)."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; allowed: {', '.join(FILLS)}")
    if reduction not in REDUCTION:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(REDUCTION)}")
    fractions = check_fractions(fractions, "sensitivity_n.fractions", upper_open=False)
    n, c, h, w = images.shape
    dev = images.device
    target = as_target(target, n, dev)
    ids = np.asarray(ids)
    normalise, net = split_model(model)
    nq, s_ = len(fractions), int(samples)
    red = rankable(maps.to(dev), REDUCTION[reduction], (h, w)).double()     # (N, H, W)
    per = nq * s_ + 1
    chunk = max(1, batch_size // per)
    attr = np.empty((n, nq, s_))
    drop = np.empty((n, nq, s_))
    bad = np.zeros(n, bool)
    for s0 in range(0, n, chunk):
        rows = range(s0, min(n, s0 + chunk))
        x = normalise(images[s0:rows.stop])                                # (k, C, H, W)
        k = x.shape[0]
        masks = torch.empty((k, nq, s_, h, w), dtype=torch.bool)
        fills = torch.zeros((k, nq, s_, c, h, w)) if fill == "rand" else None
        for j, i in enumerate(rows):
            for a, q in enumerate(fractions):
                m, u = draws(ids[i], q, s_, (c, h, w), fill, seed)
                masks[j, a] = m
                if fills is not None:
                    fills[j, a] = u
        masks = masks.to(dev)
        base = (fills.to(dev, x.dtype) if fills is not None
                else x.new_zeros(()).expand(k, nq, s_, c, h, w))
        pert = torch.where(masks[:, :, :, None], base, x[:, None, None])
        batch = torch.cat([x, pert.reshape(k * nq * s_, c, h, w)])
        logits = torch.cat([net(batch[b:b + batch_size])
                            for b in range(0, batch.shape[0], batch_size)])
        tgt = target[s0:rows.stop]
        full = logits[:k].gather(1, tgt[:, None])[:, 0].double()
        rest = logits[k:].view(k, nq, s_, -1)
        zy = rest.gather(3, tgt.view(k, 1, 1, 1).expand(k, nq, s_, 1))[..., 0].double()
        drop[s0:rows.stop] = (full.view(k, 1, 1) - zy).cpu().numpy()
        attr[s0:rows.stop] = (masks * red[s0:rows.stop, None, None]).sum((-2, -1)).cpu().numpy()
        bad[s0:rows.stop] = (~torch.isfinite(logits[:k]).all(1)
                             | ~torch.isfinite(rest).flatten(1).all(1)).cpu().numpy()
    return attr, drop, bad


@register_metric
class SensitivityN(Metric):
    """Sensitivity-n. Per image: ``fractions`` (N, Q: the grid, the same in every row),
    ``correlation`` (N, Q: Pearson over the samples, NaN where undefined),
    ``correlation_mean`` (the image's mean over the defined q), ``undefined_count`` (the q
    without a correlation) and ``correlation_undefined`` (at least one). The summary
    (:meth:`aggregate`) gives, per q, the mean and std over images of the defined
    correlations. Needs the model and the images."""
    name = "sensitivity_n"
    params = {
        "fractions": Param(FRACTIONS, (tuple, list),
                           doc="q: the probabilities of the Bernoulli pixel masks; strictly "
                               "ascending in (0, 1)"),
        "samples": Param(10, int, min=2, doc="masks per image and q (Pearson over them)"),
        "fill": Param("rand", str, FILLS,
                      doc="masked pixels: rand (U[0, 1) per element in normalised space) or "
                          "zero (normalised 0)"),
        "reduction": Param("abs", str, tuple(REDUCTION),
                           doc="attribution of a pixel: abs (Σ_c |φ|) or sum (Σ_c φ)"),
        "seed": Param(0, int, doc="seed of the masks and the noise, with the image id and q"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("correlation_mean",)
    needs = frozenset({"model", "images"})
    direction = "higher"
    excludes = {"correlation": "correlation_undefined",
                "correlation_mean": "correlation_undefined"}

    @classmethod
    def validate(cls, values: dict, where: str) -> dict:
        return {**values, "fractions": check_fractions(values["fractions"],
                                                       f"{where}.fractions", upper_open=False)}

    def compute(self, inputs: MetricInputs,
                keep_samples: bool = False) -> dict[str, np.ndarray]:
        """The per-image columns; ``keep_samples`` adds ``attribution_sums`` and
        ``logit_drops`` (N, Q, S) (the plain function's)."""
        p = self.hparams
        attr, drop, bad = sensitivity_samples(
            inputs.model, inputs.images, inputs.maps, inputs.target, inputs.ids, p.fractions,
            p.samples, p.fill, p.reduction, p.seed, inputs.batch_size)
        out = correlation_columns(attr, drop, p.fractions) | {"nonfinite": bad}
        if keep_samples:
            out.update(attribution_sums=attr, logit_drops=drop)
        return out

    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """``correlation_mean``: the mean over images of their mean correlation; then, per q,
        ``correlation@<q>``: the mean over the images whose correlation at q is defined, with
        ``std_over_images`` their population std (the reference's ``np.std``). Each with a
        percentile bootstrap interval (images resampled, seeded by (seed, score));
        ``excluded`` counts the images without a value."""
        def row(score, values):
            r = summary_row(cls, score, values, n_boot=n_boot, level=level,
                            seed=column_seed(seed, score))
            v = np.asarray(values, np.float64)
            v = v[np.isfinite(v)]
            return {**r, "std_over_images": float(v.std()) if v.size else np.nan}

        mean = df["correlation_mean"] if "correlation_mean" in df else np.zeros(0)
        rows = [row("correlation_mean", mean)]
        corr, qs = stack_column(df, "correlation"), stack_column(df, "fractions")
        if len(qs) and not (qs == qs[:1]).all():
            raise ValueError("sensitivity_n.aggregate: the rows have different fractions "
                             "(scores of different 'fractions' cannot be pooled)")
        for j, q in enumerate(qs[0] if len(qs) else ()):
            rows.append(row(f"correlation@{q:g}", corr[:, j]))
        return rows


def correlation_columns(attr: np.ndarray, drop: np.ndarray, fractions) -> dict:
    """The per-image columns of :class:`SensitivityN` from the samples (N, Q, S)."""
    corr = pearson(attr, drop)
    undefined = np.isnan(corr)
    count = undefined.sum(1)
    with np.errstate(invalid="ignore"):
        mean = np.where(count < corr.shape[1],
                        np.nansum(corr, 1) / np.maximum(corr.shape[1] - count, 1), np.nan)
    n = corr.shape[0]
    return {"fractions": np.broadcast_to(np.asarray(fractions, np.float64),
                                         (n, len(fractions))).copy(),
            "correlation": corr, "correlation_mean": mean, "undefined_count": count,
            "correlation_undefined": count > 0}


def sensitivity_n(model, images, maps, target, fractions=FRACTIONS, samples: int = 10,
                  fill: str = "rand", reduction: str = "abs", seed: int = 0, *, ids=None,
                  batch_size: int = 256, **params) -> dict:
    """Sensitivity-n of ``maps`` (N, C, h, w) for ``images`` (N, C, H, W) in [0, 1] and
    ``target`` ((N,) classes or one class); the draws of image i come from (``seed``,
    ``ids[i]``, q), ids = ``ids`` or 0..N−1. Returns ``fractions`` (Q,), the per-image
    ``correlation`` (N, Q), ``correlation_mean``, ``undefined_count``,
    ``correlation_undefined`` (N,), the samples ``attribution_sums`` and ``logit_drops``
    (N, Q, S), and ``mean``, ``std`` (Q,): the mean and population std over images of the
    defined correlations (NaN dropped, as the reference). ``params``: ``on_nonfinite``."""
    metric = SensitivityN(fractions=fractions, samples=samples, fill=fill,
                          reduction=reduction, seed=seed, **params)
    p = metric.hparams
    n = images.shape[0]
    ids = np.arange(n) if ids is None else np.asarray(ids)
    target = as_target(target, n, images.device)
    maps = torch.as_tensor(maps)
    out = metric.run(MetricInputs(ids=ids, target=target, maps=maps, model=model,
                                  images=images, batch_size=batch_size), keep_samples=True)
    corr = out["correlation"]
    ok = np.isfinite(corr)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = ok.sum(0)
        mean = np.where(cnt > 0, np.where(ok, corr, 0).sum(0) / np.maximum(cnt, 1), np.nan)
        var = np.where(ok, (corr - mean) ** 2, 0).sum(0) / np.maximum(cnt, 1)
    return {"fractions": np.asarray(p.fractions, np.float64), **{k: out[k] for k in (
        "correlation", "correlation_mean", "undefined_count", "correlation_undefined")},
        "attribution_sums": out["attribution_sums"], "logit_drops": out["logit_drops"],
        "mean": mean,
        "std": np.where(cnt > 0, np.sqrt(var), np.nan),
        **({"nonfinite": out["nonfinite"]} if "nonfinite" in out else {})}
