"""PIC metrics: the Softmax and Accuracy Information Curves, SIC and AIC (Kapishnikov et al.,
XRAI, ICCV 2019), in the two published variants.

Common structure. The most salient pixels of x̃ are revealed on top of a "fully blurred"
image, giving bokeh images at increasing levels. For each bokeh image b the information
content H(b) (the byte length of a lossless encoding) and the model score p(b) are measured,
and normalised to the blurred image and the original:
x = clip((H − H_blur)/(H_orig − H_blur), 0, 1), y = clip((p − p_blur)/(p_orig − p_blur), 0, 1);
with ``keep_monotonous`` y is its running max over the levels. The points, plus anchors, are
sorted stably by x and interpolated linearly on a fixed grid x ∈ {0, 1/K, …, (K−1)/K} plus the
point (1, 1). SIC: p = softmax probability of the target; AIC: p = 1[top-1 class = target].
Both come from the same forward pass, and each distinct bokeh image is encoded once.

An image is excluded from a curve (its per-image columns are NaN, ``*_valid`` False and
``*_reason`` its first failure) when, checked in this order,
``min_pred``: p_orig < ``min_pred_value``; ``blur_pred``: p_blur ≥ p_orig;
``blur_entropy``: H_blur ≥ H_orig. (PAIR's own code checks the entropy before ``blur_pred``;
only the reported reason can differ, never whether the image is excluded.)

``variant="pair"`` (``PAIR-code/saliency``: ``saliency.metrics.pic``, notebook settings):
  images are uint8 (round(255·x)) and the model sees uint8/255. The blurred image is a linear
  interpolation (``scipy.interpolate.griddata`` semantics: Delaunay triangulation of the known
  pixels, the four corners always known, the image's mean colour outside the hull) from a
  random mask of ⌊fraction·H·W⌋ pixels, drawn per image from (seed, image id) so a result never
  depends on the batch. At threshold t the pixels with saliency ≥ quantile(1 − t) are known
  too. H = byte length of lossless WebP (quality 100). Anchors (0, 0) and (1, 1); 1000 grid
  points; SIC and AIC exclude images separately. Defaults: the notebook's thresholds and
  ``abs_of_sum`` reduction; ``min_pred_value`` = 0.8, the default of PAIR's
  ``compute_pic_metric`` (the notebook passes 0.5).
  The interpolation uses one triangulation per bokeh image for all three channels, with the
  same points in the same order as ``griddata``, so the images equal PAIR's bit for bit.

``variant="tmlr"`` (``ShreeSinghi/TMLR-IDGI``): the fill is the precomputed blurred image
(``fill_images``); level k reveals the ``linspace(0, H·W, 25).astype(int)[k]`` first pixels
of the signed channel-sum ranking (level 0 = the blurred image, the last = the original);
H = byte length of the PNG (Pillow defaults) of ``(x·255).to(uint8)`` (truncation, as the
study's ``ToPILImage``); only the anchor (0, 0) is added; 100 grid points. An image is kept only
if SIC and AIC both pass (the study computes both in one ``try``): ``sic_valid == aic_valid``,
while each ``*_reason`` is that curve's own first failure ('' where the curve itself passes and
the image is dropped for the other curve). ``compat="tmlr"`` ranks as the study did
(float16 maps, non-stable argsort); the default ranks float32 stably.

Aggregation (:meth:`Pic.aggregate`): SIC is the trapezoid AUC of the per-point **median** curve
over the valid images, AIC that of the **mean** curve, each with a percentile bootstrap
interval over images (resample images, recompute the aggregated curve and its AUC).
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..maths.imageops import REDUCTIONS
from ..params import Param
from ..utils import generator
from .statistics import column_seed
from .base import NONFINITE_PARAM, Metric, MetricInputs, as_target, register_metric
from .perturbation import pixel_ranks, rankable

VARIANTS = ("pair", "tmlr")
REASONS = ("", "min_pred", "blur_pred", "blur_entropy")
PAIR_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
DEFAULT_REDUCTION = {"pair": "abs_of_sum", "tmlr": "sum"}
DEFAULT_POINTS = {"pair": 1000, "tmlr": 100}


# -- pieces -----------------------------------------------------------------------------------
def curve_grid(n_points: int) -> np.ndarray:
    """The x grid of a PIC curve: ``linspace(0, 1, n_points, endpoint=False)`` and 1.0
    (n_points + 1 values)."""
    return np.append(np.linspace(0.0, 1.0, n_points, endpoint=False), 1.0)


def random_mask(height: int, width: int, seed: int = 0, image_id=0,
                fraction: float = 0.01) -> np.ndarray:
    """A bool (H, W) mask with ⌊fraction·H·W⌋ pixels set (PAIR's ``generate_random_mask``),
    drawn from (seed, image id) alone."""
    k = int(height * width * fraction)
    g = generator(seed, "pic_random_mask", int(image_id))
    flat = np.zeros(height * width, bool)
    flat[torch.randperm(height * width, generator=g)[:k].numpy()] = True
    return flat.reshape(height, width)


def interpolated_image(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """PAIR's "blurred" image: each channel of the uint8 (H, W, C) ``image`` interpolated
    linearly from the pixels where ``known`` (the four corners are always added); pixels outside
    the triangulation get the image's mean colour; rounded back to uint8.

    Same result as ``griddata(..., method='linear')`` per channel: the same Delaunay
    triangulation (same points, same order) and the same barycentric evaluation, done once for
    all channels instead of once per channel."""
    h, w = known.shape
    known = known.copy()
    known[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if known.all():
        return image.copy()
    mean = image.mean(axis=(0, 1))
    out = image.astype(np.float32) * known[..., None].astype(np.float32)
    points, unknown = np.argwhere(known), np.argwhere(~known)
    from scipy.interpolate import LinearNDInterpolator   # here: 0.5 s of every job's start-up
    from scipy.spatial import Delaunay

    tri = Delaunay(points.astype(np.float64))
    values = LinearNDInterpolator(tri, image[known].astype(np.float64),
                                  fill_value=np.nan)(unknown.astype(np.float64))
    outside = np.isnan(values)
    if outside.any():
        values = np.where(outside, mean[None, :], values)
    out[unknown[:, 0], unknown[:, 1]] = values
    return np.round(out).astype(image.dtype)


def webp_size(image: np.ndarray) -> int:
    """Byte length of the lossless WebP (quality 100) encoding of a uint8 image (PAIR)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="webp", lossless=True, quality=100)
    return buf.tell()


def png_size(image: np.ndarray) -> int:
    """Byte length of the PNG encoding (Pillow defaults) of a uint8 image (TMLR)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png")
    return buf.tell()


def normalise(entropy, pred):
    """(x, y) of the levels: (v − v_blur)/(v_orig − v_blur) clipped to [0, 1], where
    ``entropy`` and ``pred`` (L,) run from the blurred image (first) to the original (last)."""
    e, p = np.asarray(entropy, np.float64), np.asarray(pred, np.float64)
    x = np.clip((e - e[0]) / (e[-1] - e[0]), 0.0, 1.0)
    y = np.clip((p - p[0]) / (p[-1] - p[0]), 0.0, 1.0)
    return x, y


def interpolate_curve(x, y, anchors, n_points: int, keep_monotonous: bool = True) -> np.ndarray:
    """One image's curve on :func:`curve_grid`: y replaced by its running max (from 0) if
    ``keep_monotonous``, the ``anchors`` appended after the levels, the points sorted stably by
    x, linear interpolation on the grid, then the point (1, 1)."""
    y = np.asarray(y, np.float64)
    if keep_monotonous:
        y = np.maximum.accumulate(np.maximum(y, 0.0))
    xs = np.concatenate([np.asarray(x, np.float64), [a[0] for a in anchors]])
    ys = np.concatenate([y, [a[1] for a in anchors]])
    order = np.argsort(xs, kind="stable")
    grid = curve_grid(n_points)
    return np.append(np.interp(grid[:-1], xs[order], ys[order]), 1.0)


def failure(p_orig: float, p_blur: float, h_orig: float, h_blur: float,
            min_pred_value: float) -> str:
    """The first exclusion condition an image meets ('' if none), in the order min_pred,
    blur_pred, blur_entropy."""
    if p_orig < min_pred_value:
        return "min_pred"
    if p_blur >= p_orig:
        return "blur_pred"
    if h_blur >= h_orig:
        return "blur_entropy"
    return ""


# -- the metric -------------------------------------------------------------------------------
@register_metric
class Pic(Metric):
    """SIC and AIC. Per image: ``sic``, ``aic`` (the image's own curve AUC, NaN where
    excluded), ``sic_curve``, ``aic_curve`` (N, K) on :func:`curve_grid` (NaN rows where
    excluded), ``sic_valid``, ``aic_valid``, ``sic_excluded``, ``aic_excluded`` (bool) and
    ``sic_reason``, ``aic_reason`` (str: '', 'min_pred', 'blur_pred', 'blur_entropy').
    The summary scores ``sic``/``aic`` are the AUCs of the median/mean curve (:meth:`aggregate`).
    Needs the model and the images, and for ``variant: tmlr`` the blur variant
    (``other_images``)."""
    name = "pic"
    params = {
        "variant": Param("pair", str, VARIANTS, doc="pair (PAIR saliency) or tmlr (the study)"),
        "reduction": Param(None, str, REDUCTIONS,
                           doc="channel reduction of the map; default abs_of_sum for pair "
                               "(the notebook), sum for tmlr"),
        "min_pred_value": Param(0.8, float, min=0.0,
                                doc="exclude images whose score on the original is below it "
                                    "(PAIR's default 0.8; the PAIR notebook uses 0.5)"),
        "keep_monotonous": Param(True, bool, doc="y is its running max over the levels"),
        "points": Param(None, int, min=1,
                        doc="grid points before (1, 1); default 1000 (pair), 100 (tmlr)"),
        "thresholds": Param(PAIR_THRESHOLDS, (tuple, list),
                            doc="pair: fractions of the most salient pixels revealed"),
        "mask_fraction": Param(0.01, float, min=0.0, max=1.0,
                               doc="pair: fraction of random-mask pixels"),
        "levels": Param(25, int, min=2, doc="tmlr: number of levels, linspace(0, H·W, levels)"),
        "seed": Param(0, int, doc="pair: seed of the random masks, with the image id"),
        "compat": Param(None, str, ("tmlr",),
                        doc="tmlr: the study's ranking (float16 maps, non-stable argsort)"),
        "on_nonfinite": NONFINITE_PARAM,
    }
    scalars = ("sic", "aic")
    needs = frozenset({"model", "images"})
    direction = "higher"
    excludes = {"sic": "sic_excluded", "sic_curve": "sic_excluded",
                "aic": "aic_excluded", "aic_curve": "aic_excluded"}

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        p = self.hparams
        if p.variant == "tmlr":
            self.needs = type(self).needs | {"other_images"}
        elif p.compat is not None:
            raise ValueError("pic: compat 'tmlr' applies to variant 'tmlr' only (the pair "
                             "variant reveals by quantile, it does not rank)")
        t = np.asarray(p.thresholds, np.float64)
        if t.ndim != 1 or not ((t > 0) & (t <= 1)).all() or (np.diff(t) < 0).any():
            raise ValueError(f"pic: thresholds must be ascending fractions in (0, 1], "
                             f"got {p.thresholds!r}")

    def other_variant(self):
        return "blur" if self.hparams.variant == "tmlr" else None

    @property
    def reduction(self) -> str:
        return self.hparams.reduction or DEFAULT_REDUCTION[self.hparams.variant]

    @property
    def n_points(self) -> int:
        return self.hparams.points or DEFAULT_POINTS[self.hparams.variant]

    def compute(self, inputs: MetricInputs, random_masks=None) -> dict[str, np.ndarray]:
        """Two passes over the bokeh images: first the blurred image and the original of every
        image (they decide the exclusions), then the intermediate levels of the images that
        keep at least one curve (an excluded image costs no interpolation or encoding)."""
        n, _, h, w = inputs.images.shape
        scores = rankable(inputs.maps.to(inputs.images.device), self.reduction, (h, w))
        if self.hparams.variant == "pair":
            n_lv, build = self._pair_builder(inputs, scores, random_masks)
        else:
            n_lv, build = self._tmlr_builder(inputs, scores)
        probs, correct = np.full((2, n, n_lv), np.nan)
        entropy = np.full((n, n_lv), np.nan)
        ends = [(i, k) for i in range(n) for k in (0, n_lv - 1)]
        self._measure(inputs, ends, build, probs, correct, entropy)
        reasons = self._reasons(probs, correct, entropy)
        valid = self._valid(reasons)
        need = np.flatnonzero(valid["sic"] | valid["aic"])
        middle = [(int(i), k) for i in need for k in range(1, n_lv - 1)]
        self._measure(inputs, middle, build, probs, correct, entropy)
        measured = np.zeros(probs.shape, bool)
        measured[:, [0, -1]] = True
        measured[need, 1:-1] = True
        # NaN model scores could hide behind an exclusion: flag them (Metric.run decides)
        return {**self._curves(probs, correct, entropy, reasons, valid),
                "nonfinite": (measured & ~np.isfinite(probs)).any(1)}

    def record_nonfinite(self, cols, bad):
        """Also mark the flagged images invalid for both curves, with reason 'nonfinite'."""
        cols = super().record_nonfinite(cols, bad)
        for name in ("sic", "aic"):
            cols[f"{name}_valid"] = cols[f"{name}_valid"] & ~bad
            cols[f"{name}_excluded"] = cols[f"{name}_excluded"] | bad
            cols[f"{name}_reason"] = np.where(bad, "nonfinite", cols[f"{name}_reason"])
        return cols

    # -- bokeh images and their measurements --------------------------------------------------
    def _pair_builder(self, inputs, scores, random_masks):
        """PAIR's levels [blurred, thresholds…, original] of each image: ``build(pairs)`` gives
        the model inputs (uint8/255) of the (image, level) pairs and their WebP sizes. Each
        distinct mask of an image is interpolated and encoded once."""
        p = self.hparams
        n, _, h, w = inputs.images.shape
        u8 = (inputs.images.detach() * 255).round().clamp(0, 255).to(torch.uint8)
        u8 = u8.permute(0, 2, 3, 1).cpu().numpy()                         # (N, H, W, 3)
        sal = scores.detach().float().cpu().numpy()
        if random_masks is None:
            random_masks = np.zeros((n, h, w), bool)
            for j, i in enumerate(np.asarray(inputs.ids).tolist()):
                random_masks[j] = random_mask(h, w, p.seed, i, p.mask_fraction)
        elif isinstance(random_masks, torch.Tensor):
            random_masks = random_masks.detach().cpu().numpy()
        random_masks = np.asarray(random_masks, bool)
        if random_masks.shape != (n, h, w):
            raise ValueError(f"pic: random_mask must be (N, H, W) = {(n, h, w)}, got "
                             f"{random_masks.shape}")
        thresholds = p.thresholds
        n_lv = len(thresholds) + 2
        cache = [{} for _ in range(n)]

        def level(i, k):
            rm = random_masks[i]
            if k == 0:
                mask = rm
            elif k == n_lv - 1:
                mask = np.ones((h, w), bool)
            else:
                mask = (sal[i] >= np.quantile(sal[i], 1 - thresholds[k - 1])) | rm
            key = mask.tobytes()
            if key not in cache[i]:
                img = u8[i] if mask.all() else interpolated_image(u8[i], mask)
                cache[i][key] = (img, webp_size(img))
            return cache[i][key]

        def build(pairs):
            got = [level(i, k) for i, k in pairs]
            batch = torch.from_numpy(np.stack([g[0] for g in got]))
            return batch.permute(0, 3, 1, 2).float() / 255, [g[1] for g in got]

        return n_lv, build

    def _tmlr_builder(self, inputs, scores):
        """TMLR's levels: the first ``counts[k]`` pixels of the ranking revealed on the blurred
        image; ``build(pairs)`` gives the float images and their PNG sizes."""
        p = self.hparams
        images = inputs.images
        _, _, h, w = images.shape
        fill = inputs.other_images.to(images.device, images.dtype)
        ranks = pixel_ranks(scores, p.compat)                             # (N, H, W)
        counts = torch.as_tensor(np.linspace(0, h * w, p.levels).astype(int),
                                 device=images.device)

        def build(pairs):
            img_i = torch.as_tensor([i for i, _ in pairs], device=images.device)
            lv = torch.as_tensor([k for _, k in pairs], device=images.device)
            top = (ranks[img_i] < counts[lv].view(-1, 1, 1)).unsqueeze(1)
            x = torch.where(top, images[img_i], fill[img_i])
            u8 = (x * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # truncation
            return x, [png_size(im) for im in u8]

        return p.levels, build

    def _measure(self, inputs, pairs, build, probs, correct, entropy):
        """Fill ``probs`` (softmax probability of the target), ``correct`` (top-1 = target) and
        ``entropy`` at the (image, level) ``pairs``, ``inputs.batch_size`` images a forward."""
        dev = inputs.images.device
        for s in range(0, len(pairs), inputs.batch_size):
            chunk = pairs[s:s + inputs.batch_size]
            x, sizes = build(chunk)
            rows = np.array([i for i, _ in chunk])
            cols = np.array([k for _, k in chunk])
            t = inputs.target.to(dev)[torch.as_tensor(rows, device=dev)]
            logits = inputs.model(x.to(dev)).float()
            probs[rows, cols] = torch.softmax(logits, 1).gather(1, t[:, None])[:, 0] \
                .cpu().numpy()
            correct[rows, cols] = (logits.argmax(1) == t).float().cpu().numpy()
            entropy[rows, cols] = sizes

    def _reasons(self, probs, correct, entropy) -> dict[str, np.ndarray]:
        """Each image's first failure per curve ('' = the curve passes), from its two end
        levels; each curve's own, in both variants."""
        return {name: np.array([failure(q[-1], q[0], e[-1], e[0],
                                        self.hparams.min_pred_value)
                                for q, e in zip(pred, entropy)],
                               dtype=f"<U{max(map(len, REASONS))}")
                for name, pred in (("sic", probs), ("aic", correct))}

    def _valid(self, reasons) -> dict[str, np.ndarray]:
        """Which images each curve keeps: PAIR, those its own checks pass; TMLR, those both
        curves' checks pass (the study computes SIC and AIC in one ``try``)."""
        valid = {name: r == "" for name, r in reasons.items()}
        if self.hparams.variant == "tmlr":
            both = valid["sic"] & valid["aic"]
            valid = {"sic": both, "aic": both.copy()}
        return valid

    # -- curves -------------------------------------------------------------------------------
    def _curves(self, probs, correct, entropy, reasons, valid) -> dict[str, np.ndarray]:
        p = self.hparams
        pair = p.variant == "pair"
        n = probs.shape[0]
        anchors = ((0.0, 0.0), (1.0, 1.0)) if pair else ((0.0, 0.0),)
        grid = curve_grid(self.n_points)
        cols = {}
        for name, pred in (("sic", probs), ("aic", correct)):
            kept = valid[name]
            curves = np.full((n, len(grid)), np.nan)
            for i in np.flatnonzero(kept):
                x, y = normalise(entropy[i], pred[i])
                if pair:                      # PAIR: the thresholds' levels only, TMLR: all
                    x, y = x[1:-1], y[1:-1]
                curves[i] = interpolate_curve(x, y, anchors, self.n_points,
                                              p.keep_monotonous)
            auc = np.full(n, np.nan)
            if kept.any():
                auc[kept] = np.trapezoid(curves[kept], grid, axis=1)
            cols.update({name: auc, f"{name}_curve": curves, f"{name}_valid": kept,
                         f"{name}_excluded": ~kept, f"{name}_reason": reasons[name]})
        return cols

    # -- aggregation --------------------------------------------------------------------------
    @classmethod
    def aggregate(cls, df: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> list[dict]:
        """``sic``: trapezoid AUC of the per-point median curve over the valid images;
        ``aic``: that of the mean curve. ``mean`` holds that AUC, ``ci_low``/``ci_high`` the
        percentile bootstrap interval (images resampled, the aggregated curve and its AUC
        recomputed; seeded by (seed, score)), ``n`` the valid images, ``excluded`` the others,
        ``excluded_<reason>`` the count per reason of the curve's own, and (TMLR)
        ``excluded_other_curve`` those it passes but drops because the other curve fails."""
        rows = []
        for score, how in (("sic", np.median), ("aic", np.mean)):
            curves, reasons, valid = valid_curves(df, score)
            n = curves.shape[0]
            grid = curve_grid(curves.shape[1] - 1) if n else None
            auc = lo = hi = np.nan
            if n:
                auc = float(np.trapezoid(how(curves, axis=0), grid))
                if n_boot > 0:
                    rng = np.random.default_rng(column_seed(seed, score))
                    boots = np.array([np.trapezoid(how(curves[rng.integers(0, n, n)], axis=0),
                                                   grid) for _ in range(n_boot)])
                    a = (1 - level) / 2
                    lo, hi = float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))
            row = {"score": score, "n": n, "mean": auc, "ci_low": lo, "ci_high": hi,
                   "direction": cls.direction, "excluded": int((~valid).sum())}
            for r in REASONS[1:]:
                row[f"excluded_{r}"] = int((~valid & (reasons == r)).sum())
            row["excluded_other_curve"] = int((~valid & (reasons == "")).sum())
            rows.append(row)
        return rows


def valid_curves(df: pd.DataFrame, score: str):
    """(valid curves (n, K) float64, reasons (N,) str, valid (N,) bool) of one score from a
    per-image table."""
    if f"{score}_curve" not in df or len(df) == 0:
        return np.zeros((0, 0)), np.zeros(0, str), np.zeros(0, bool)
    reasons = df[f"{score}_reason"].fillna("").astype(str).to_numpy()
    valid = (df[f"{score}_valid"].to_numpy(bool) if f"{score}_valid" in df
             else reasons == "")
    rows = [np.asarray(c, np.float64) for c, v in zip(df[f"{score}_curve"], valid) if v]
    curves = np.stack(rows) if rows else np.zeros((0, 0))
    return curves, reasons, valid


# -- the plain function -----------------------------------------------------------------------
def pic(model, images, maps, target, variant: str = "pair", seed: int = 0, random_mask=None,
        fill_images=None, compat=None, *, ids=None, batch_size: int = 256, **params) -> dict:
    """Per-image SIC and AIC; aggregation is :meth:`Pic.aggregate`'s job.

    ``images``: (N, 3, H, W) in [0, 1] (the model normalises); ``maps``: raw (N, C, h, w)
    attributions; ``target``: (N,) or one class. ``variant="pair"``: ``random_mask`` (N, H, W)
    bool, else drawn from (``seed``, image id), ids = ``ids`` or 0..N−1. ``variant="tmlr"``:
    ``fill_images`` the blurred images (N, 3, H, W) in [0, 1]. Other ``params``: see
    :class:`Pic`. Returns ``sic_curve``, ``aic_curve`` (N, K), ``sic_auc``, ``aic_auc`` (N,,
    NaN where excluded), ``sic_valid``, ``aic_valid`` (N,) bool, ``sic_reason``,
    ``aic_reason`` (N,) str, and with ``on_nonfinite="record"`` ``nonfinite`` (N,) bool
    (reason 'nonfinite': NaN/Inf maps or model scores, which otherwise raise)."""
    metric = Pic(variant=variant, seed=seed, compat=compat, **params)
    if variant == "tmlr" and fill_images is None:
        raise ValueError("pic with variant 'tmlr' needs the blurred images (fill_images=...)")
    if variant == "pair" and fill_images is not None:
        raise ValueError("pic with variant 'pair' builds its own blurred image; "
                         "fill_images is for variant 'tmlr'")
    n = images.shape[0]
    ids = np.arange(n) if ids is None else np.asarray(ids)
    out = metric.run(MetricInputs(
        ids=ids, target=as_target(target, n, images.device), maps=torch.as_tensor(maps),
        model=model, images=images, other_images=fill_images, batch_size=batch_size),
        random_masks=random_mask)
    return {"sic_curve": out["sic_curve"], "aic_curve": out["aic_curve"],
            "sic_auc": out["sic"], "aic_auc": out["aic"],
            "sic_valid": out["sic_valid"], "aic_valid": out["aic_valid"],
            "sic_reason": out["sic_reason"], "aic_reason": out["aic_reason"],
            **({"nonfinite": out["nonfinite"]} if "nonfinite" in out else {})}
