"""DiffID: the difference of the insertion and deletion games of Yang, Akhtar, Wen, Mian,
*Local Path Integration for Attribution*, AAAI 2023 (also used by the attribution
re-calibration experiments of the same group); reference code ``ypeiyu/LPI`` @6ff4785 and
``ypeiyu/attribution_recalibration`` @5b745d4, ``evaluator.py`` (``Evaluator.DiffID``,
``normalize_saliency_map``).

Per image, with x the image in the model's normalised space ((x̃ − μ)/σ, the input of the
network behind the model's own normalisation), y the target and T = C·H·W elements:

1. **Saliency**: s = Σ_c |φ_c| (coarse maps upsampled bilinearly to H × W, as the insertion
   metric does), then min–max to [0, 1] per image, s ← (s − min s)/(max(s − min s) + 1e-10),
   replicated to the C channels. The T elements are ranked by a **stable** descending sort of
   the replicated map (ties: lower flat index of (c, h, w) first, so the C channels of a pixel
   tie and come in channel order).
2. **Ratios** r (default 0.1, 0.2, …, 0.9), n_r = ⌊r·T⌋ elements.
3. **Games**: the *insertion* game removes the n_r **least** important elements (keeps the
   top T − n_r); the *deletion* game removes the n_r **most** important ones.
4. **Substitution**: every removed element is replaced by the scalar mean of the kept elements
   of that image (all kept elements, all channels) in normalised space. The network is run on
   that normalised tensor directly (the model's ``net``), so the fill is exactly the mean the
   reference computes on its normalised inputs, not a pixel value mapped through μ and σ.
5. **Scores**: the fractional logit q(r) = z_y(x^(r))/z_y(x) on raw logits (no softmax) and
   the top-1 accuracy 1[argmax z(x^(r)) = y].
6. **Aggregates** (:meth:`DiffID.aggregate`): INS(r), DEL(r) = the means of q over images,
   DiffID(r) = INS(r) − DEL(r), the same for accuracy; the scalars are the mean of DiffID(r)
   over the ratios and its trapezoid over r (on the default grid
   0.1·(Σ_r v_r − (v_0.1 + v_0.9)/2)). The reference code prints the 9-value lists only; the
   LPI supplement calls its number the "AUC of the fractional output changes".

The reference divides by z_y(x) with no guard: an image with z_y(x) ≤ 0 keeps its raw ratio
(which may be huge, negative, or infinite at exactly 0) and is flagged ``logit_nonpositive``;
the summary reports every scalar over all images and again over the unflagged ones
(``*_positive``).

Clean differences from the reference, on purpose: the reference thresholds the map at a
``torch.quantile(..., interpolation='midpoint')`` and compares with ``<``, so ties at the
threshold move together and the number of removed elements is only approximately n_r; here
exactly n_r are removed, in the stable order. The reference's "mean of the kept elements" is
``sum / count_nonzero`` (a kept element that is exactly 0 is left out of the count); here it
is the plain mean.

Batching: a chunk of images and all their 2·R perturbed copies (and the originals) go through
one batched forward (split only when that exceeds ``batch_size``). The kept means come from a
float64 cumulative sum of each image's elements in ranked order, so every (image, ratio, game)
costs one lookup, not a pass over the image.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..params import Param
from .base import NONFINITE_PARAM, Metric, MetricInputs, as_target, register_metric, summary_row
from .perturbation import pixel_counts, rankable
from .statistics import column_seed

#: the reference's ratios, ``[step * 0.1 for step in range(1, 10)]`` (written exactly)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GAMES = ("insertion", "deletion")
EPS = 1e-10          # the reference's guard in the min-max denominator


def check_fractions(values, where: str, *, upper_open: bool = True) -> tuple[float, ...]:
    """``values`` as a tuple of floats, strictly ascending, in [0, 1) (``upper_open``) or
    (0, 1); a :class:`ConfigError` naming ``where`` otherwise."""
    try:
        v = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a list of numbers, got {values!r}") from None
    lo_ok = (lambda x: 0.0 <= x < 1.0) if upper_open else (lambda x: 0.0 < x < 1.0)
    if not v or not all(lo_ok(x) for x in v) or any(b <= a for a, b in zip(v, v[1:])):
        rng = "[0, 1)" if upper_open else "(0, 1)"
        raise ConfigError(f"{where}: expected strictly ascending values in {rng}, got "
                          f"{values!r}")
    return v


def split_model(model):
    """(normalise, net) of a model: a :class:`~xaipipe.models.NormalizedModel`'s own
    normalisation and its network; any other module reads its inputs as they are, so its
    "normalised space" is its input space (identity normalisation)."""
    if hasattr(model, "normalize") and hasattr(model, "net"):
        return model.normalize, model.net
    return (lambda x: x), model


def diffid_saliency(maps: torch.Tensor, size) -> torch.Tensor:
    """(N, C, h, w) maps -> (N, H, W) float32 saliency in [0, 1]: ``abs_sum``, bilinear
    upsampling to ``size`` when coarse, then per-image min–max with 1e-10 in the denominator
    (the reference's ``normalize_saliency_map``)."""
    s = rankable(maps, "abs_sum", size)
    s = s - s.flatten(1).amin(1).view(-1, 1, 1)
    return s / (s.flatten(1).amax(1).view(-1, 1, 1) + EPS)


def element_order(saliency: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C·H·W) flat element indices, most important first: a stable descending sort of the
    saliency (N, H, W) replicated to ``channels`` channels (ties: lower flat index first)."""
    rep = saliency.unsqueeze(1).expand(-1, channels, -1, -1).flatten(1)
    return torch.argsort(rep, dim=1, descending=True, stable=True)


def removed_masks(ranks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(N, 2, R, T) bool: the elements each game removes. ``ranks`` (N, T): each element's
    position in :func:`element_order`; ``counts`` (R,): n_r. Insertion (game 0) removes the
    n_r last-ranked elements, deletion (game 1) the n_r first-ranked."""
    t = ranks.shape[1]
    r = ranks[:, None, :]
    c = counts.view(1, -1, 1)
    return torch.stack([r >= t - c, r < c], dim=1)


def kept_means(values_in_order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(N, 2, R) float64: the mean of the kept elements per image, game and ratio, from the
    image's T elements in ranked order (N, T). Insertion keeps the first T − n_r, deletion the
    last T − n_r; computed from one float64 cumulative sum per image."""
    n, t = values_in_order.shape
    cs = torch.cat([values_in_order.new_zeros((n, 1), dtype=torch.float64),
                    torch.cumsum(values_in_order.double(), dim=1)], dim=1)
    kept = (t - counts).to(torch.float64)                          # (R,)
    ins = cs[:, t - counts] / kept
    dele = (cs[:, t:t + 1] - cs[:, counts]) / kept
    return torch.stack([ins, dele], dim=1)


@torch.no_grad()
def diffid_curves(model, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                  ratios=RATIOS, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-image games: ``ins_logit``, ``del_logit`` (fractional logits), ``ins_acc``,
    ``del_acc`` (top-1 correctness as 0/1), all (N, R) float64; ``logit_full`` z_y(x) (N,),
    ``logit_nonpositive`` (N,) bool and ``nonfinite`` (N,) bool (a logit of the image or of a
    perturbed copy is NaN/Inf). ``model`` is used as given (eval mode is the caller's job)."""
    ratios = check_fractions(ratios, "diffid.ratios")
    n, c, h, w = images.shape
    dev = images.device
    target = as_target(target, n, dev)
    normalise, net = split_model(model)
    t = c * h * w
    counts = torch.as_tensor(pixel_counts(ratios, t), device=dev)
    r = len(ratios)
    per = 2 * r + 1                                  # the original and its 2·R copies
    chunk = max(1, batch_size // per)
    logit_full = torch.empty(n, dtype=torch.float64, device=dev)
    q = torch.empty((n, 2, r), dtype=torch.float64, device=dev)
    acc = torch.empty((n, 2, r), dtype=torch.float64, device=dev)
    bad = torch.zeros(n, dtype=torch.bool, device=dev)
    maps = maps.to(dev)
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        x = normalise(images[sl])                                     # (k, C, H, W)
        k = x.shape[0]
        order = element_order(diffid_saliency(maps[sl], (h, w)), c)   # (k, T)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(t, device=dev).expand_as(order))
        means = kept_means(x.flatten(1).gather(1, order), counts)     # (k, 2, R)
        removed = removed_masks(ranks, counts)                        # (k, 2, R, T)
        flat = x.flatten(1)[:, None, None, :]
        pert = torch.where(removed, means.to(x.dtype)[..., None], flat)
        batch = torch.cat([x, pert.view(k * 2 * r, c, h, w)])
        logits = torch.cat([net(batch[b:b + batch_size])
                            for b in range(0, batch.shape[0], batch_size)])
        tgt = target[sl]
        full = logits[:k].gather(1, tgt[:, None])[:, 0].double()      # (k,)
        rest = logits[k:].view(k, 2, r, -1)
        zy = rest.gather(3, tgt.view(k, 1, 1, 1).expand(k, 2, r, 1))[..., 0].double()
        logit_full[sl] = full
        q[sl] = zy / full.view(k, 1, 1)
        acc[sl] = (rest.argmax(3) == tgt.view(k, 1, 1)).double()
        bad[sl] = ~torch.isfinite(logits[:k]).all(1) | \
            ~torch.isfinite(rest).flatten(1).all(1)
    q_np, acc_np = q.cpu().numpy(), acc.cpu().numpy()
    full_np = logit_full.cpu().numpy()
    return {"ins_logit": q_np[:, 0], "del_logit": q_np[:, 1],
            "ins_acc": acc_np[:, 0], "del_acc": acc_np[:, 1],
            "logit_full": full_np, "logit_nonpositive": full_np <= 0,
            "nonfinite": bad.cpu().numpy()}


def curve_scalars(diff: np.ndarray, ratios) -> tuple[np.ndarray, np.ndarray]:
    """(mean over the ratios, trapezoid over r) of difference curves (..., R)."""
    d = np.asarray(diff, np.float64)
    return d.mean(-1), np.trapezoid(d, np.asarray(ratios, np.float64), axis=-1)


def stack_column(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df or len(df) == 0:
        return np.zeros((0, 0))
    return np.stack([np.asarray(v, np.float64) for v in df[col]])


@register_metric
class DiffID(Metric):
    """DiffID (LPI). Per image: ``ratios`` (N, R: the grid, the same in every row),
    ``ins_logit``, ``del_logit`` (fractional logits z_y(x^(r))/z_y(x)), ``ins_acc``, ``del_acc``
    (top-1 correctness, 0/1) (N, R); the image's own ``diffid_logit_mean``,
    ``diffid_logit_auc``, ``diffid_acc_mean``, ``diffid_acc_auc`` (of its INS − DEL curve);
    ``logit_full`` z_y(x); ``logit_nonpositive`` (z_y(x) ≤ 0: the ratio is undefined, its raw
    value is kept). The summary (:meth:`aggregate`) gives DiffID(r) and the four scalars over
    all images and over the unflagged ones. Needs the model and the images."""
    name = "diffid"
    params = {
        "ratios": Param(RATIOS, (tuple, list),
                        doc="fractions r of the C·H·W elements removed, n_r = ⌊r·C·H·W⌋; "
                            "strictly ascending in [0, 1)"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("diffid_logit_mean", "diffid_logit_auc", "diffid_acc_mean", "diffid_acc_auc")
    needs = frozenset({"model", "images"})
    direction = "higher"
    excludes = {k: "logit_nonpositive" for k in (
        "ins_logit", "del_logit", "diffid_logit_mean", "diffid_logit_auc")}

    @classmethod
    def validate(cls, values: dict, where: str) -> dict:
        return {**values, "ratios": check_fractions(values["ratios"], f"{where}.ratios")}

    def compute(self, inputs: MetricInputs) -> dict[str, np.ndarray]:
        ratios = self.hparams.ratios
        out = diffid_curves(inputs.model, inputs.images, inputs.maps, inputs.target, ratios,
                            inputs.batch_size)
        n = len(inputs.ids)
        for kind in ("logit", "acc"):
            with np.errstate(invalid="ignore", over="ignore"):
                mean, auc = curve_scalars(out[f"ins_{kind}"] - out[f"del_{kind}"], ratios)
            out[f"diffid_{kind}_mean"], out[f"diffid_{kind}_auc"] = mean, auc
        out["ratios"] = np.broadcast_to(np.asarray(ratios, np.float64), (n, len(ratios))).copy()
        return out

    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """Rows, each the mean over images with a percentile bootstrap interval (images
        resampled, seeded by (seed, score)), and ``excluded`` the images left out:

        - ``diffid_{logit,acc}_{mean,auc}``: the mean over the R ratios and the trapezoid over
          r of DiffID(r) = INS(r) − DEL(r), over every image with finite curves;
        - the same with the suffix ``_positive``: over the images with z_y(x) > 0 only;
        - ``diffid_{logit,acc}@<r>``: DiffID(r) at each ratio, over every image with finite
          curves (the reference's printed lists).

        Both scalars are linear in the curve, so the scalar of the resampled images' mean
        difference curve is the mean of the per-image scalars over the same resample: each
        interval is computed as that mean, with the bounded-memory bootstrap of
        :func:`~xaipipe.metrics.statistics.bootstrap_ci`."""
        flag = (df["logit_nonpositive"].to_numpy(bool) if "logit_nonpositive" in df
                else np.zeros(len(df), bool))
        ratios = stack_column(df, "ratios")
        if len(ratios) and not (ratios == ratios[:1]).all():
            raise ValueError("diffid.aggregate: the rows have different ratio grids "
                             "(scores of different 'ratios' cannot be pooled)")
        grid = ratios[0] if len(ratios) else np.zeros(0)

        def row(score, values):
            return summary_row(cls, score, values, n_boot=n_boot, level=level,
                               seed=column_seed(seed, score))

        rows, per_ratio = [], []
        for kind in ("logit", "acc"):
            diff = stack_column(df, f"ins_{kind}") - stack_column(df, f"del_{kind}")  # (n, R)
            with np.errstate(invalid="ignore", over="ignore"):
                finite = np.isfinite(diff).all(1)
                mean, auc = (curve_scalars(diff, grid) if len(diff)
                             else (np.zeros(0), np.zeros(0)))
            for suffix, keep in (("", finite), ("_positive", finite & ~flag)):
                for stat, v in (("mean", mean), ("auc", auc)):
                    rows.append(row(f"diffid_{kind}_{stat}{suffix}", np.where(keep, v, np.nan)))
            for j, r in enumerate(grid):
                per_ratio.append(row(f"diffid_{kind}@{r:g}", np.where(finite, diff[:, j],
                                                                      np.nan)))
        return rows + per_ratio


def diffid(model, images, maps, target, ratios=RATIOS, batch_size: int = 256,
           **params) -> dict:
    """DiffID of ``maps`` (N, C, h, w) for ``images`` (N, C, H, W) in [0, 1] and ``target``
    ((N,) classes or one class). Returns ``ratios`` (R,); the per-image ``ins_logit``,
    ``del_logit``, ``ins_acc``, ``del_acc`` (N, R) and ``logit_nonpositive`` (N,); the
    DiffID curves ``diffid_logit``, ``diffid_acc`` (R,) = INS(r) − DEL(r) averaged over the
    images (all of them, as the reference; images with non-finite curves, possible only with
    ``on_nonfinite="record"`` or z_y(x) = 0, are left out); and the scalars
    ``diffid_logit_mean``, ``diffid_logit_auc``, ``diffid_acc_mean``, ``diffid_acc_auc``
    (floats: mean over the ratios and trapezoid over r of those curves). ``params``: see
    :class:`DiffID` (``on_nonfinite``)."""
    metric = DiffID(ratios=ratios, **params)
    n = images.shape[0]
    out = metric(MetricInputs(ids=np.arange(n), target=as_target(target, n, images.device),
                              maps=torch.as_tensor(maps), model=model, images=images,
                              batch_size=batch_size))
    grid = np.asarray(metric.hparams.ratios, np.float64)
    res = {"ratios": grid, **{k: out[k] for k in ("ins_logit", "del_logit", "ins_acc",
                                                    "del_acc", "logit_nonpositive")}}
    for kind in ("logit", "acc"):
        diff = out[f"ins_{kind}"] - out[f"del_{kind}"]
        with np.errstate(invalid="ignore", over="ignore"):
            keep = np.isfinite(diff).all(1)
            curve = diff[keep].mean(0) if keep.any() else np.full(len(grid), np.nan)
        mean, auc = curve_scalars(curve, grid)
        res[f"diffid_{kind}"] = curve
        res[f"diffid_{kind}_mean"], res[f"diffid_{kind}_auc"] = float(mean), float(auc)
    if "nonfinite" in out:
        res["nonfinite"] = out["nonfinite"]
    return res
