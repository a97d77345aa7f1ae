"""Statistics of per-image scores.

**Summary intervals**: the mean with a percentile bootstrap interval (:func:`bootstrap_ci`,
drawn in bounded blocks by :func:`bootstrap_means`), seeded per summary column
(:func:`column_seed`); every metric's default ``aggregate`` uses it.

**Per-iteration curves** of the mask methods and the StartGrad statistics (Uendes et al., ICLR 2025).

The mask methods record, with ``history_every``, per-image histories (N_img, T) such as the
retained class probability or CP-ℓ1_t (extras of ``xaipipe.explain.masks``). This module
turns them into what the StartGrad paper reports:

- :func:`iqm` / :func:`step_curve`: the per-step statistic over images: the
  interquartile mean (values with Q25 ≤ v ≤ Q75, linear-interpolation quantiles, inclusive
  bounds, then their mean), the median, the mean, or the 1 %/99 % trimmed mean that the
  reference calls "mean";
- :func:`step_curve_ci`: that statistic per step with paired bootstrap confidence
  intervals, for each init and for the difference of one init to the others;
- :func:`speedup`: the convergence speed-up of one initialisation over another with a paired
  bootstrap over images;
- :func:`wilcoxon_per_step`: the one-sided Wilcoxon signed-rank test at every step;
- :func:`histories_from_long`: a long table (``step``, ``lineKey``, ``lineVal``, the layout of
  the StartGrad CSVs) as an (N_img, T) array.

Sources: `BuelentUendes/StartGrad:experiments/vision/convergence_calculations.py` (the per-step
statistics, the bootstrap over image columns seeded by the replicate index, the reference
step, the first step reaching it, the speed-up and its verification; L242-303) and
`experiments/vision/run_statistical_analysis.py` (Wilcoxon on the paired per-image
differences, ``alternative='greater'``, ``correction=True``). No code is copied.

Differences from the reference, on purpose: the reference's per-step statistic is itself the
mean of 500 unseeded bootstrap means of the filtered values; that is about the plain statistic,
which is what :func:`step_curve` computes, so results are deterministic. The clean
speed-up is the ratio of iteration counts (t_ref + 1)/(t* + 1); ``compat=True`` gives the
reference's t_ref/t* (infinite when t* = 0, NaN when both are 0) and its bootstrap indices.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..utils import derive_seed

#: at most this many resampled values are held at once: the replicates are drawn in blocks of
#: ⌊BLOCK_ELEMENTS / n⌋ rows (at least one), so memory stays bounded whatever n and n_boot
BLOCK_ELEMENTS = 1 << 20


def bootstrap_index_blocks(n: int, n_boot: int, rng: np.random.Generator):
    """(start, indices) of consecutive blocks of the ``n_boot`` resamples (with replacement,
    n of n): ``indices`` is (rows, n), drawn from ``rng``. NumPy's ``Generator.integers``
    draws the same stream whether a (n_boot, n) array is asked for at once or in consecutive
    blocks of rows, so a statistic computed per row is bit for bit that of one (n_boot, n)
    draw, with at most :data:`BLOCK_ELEMENTS` indices in memory."""
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, rows):
        yield start, rng.integers(0, n, size=(min(rows, n_boot - start), n))


def bootstrap_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The means of ``n_boot`` resamples of ``v`` (:func:`bootstrap_index_blocks`)."""
    means = np.empty(n_boot, np.float64)
    for start, idx in bootstrap_index_blocks(v.size, n_boot, rng):
        means[start:start + len(idx)] = v[idx].mean(1)
    return means


def bootstrap_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """(mean, low, high): the mean and the percentile bootstrap interval of the mean
    (Efron & Tibshirani 1993, ch. 13; ``scipy.stats.bootstrap(method="percentile")`` with the
    same generator gives the same interval). NaN values are dropped; an empty input gives
    NaNs."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    means = bootstrap_means(v, int(n_boot), np.random.default_rng(seed))
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def column_seed(seed, column: str) -> int:
    """The bootstrap seed of one summary column: from ``seed`` (an int, or a tuple of seed
    parts such as (global seed, dataset, model, metric, method, variant)) and the column."""
    parts = seed if isinstance(seed, (tuple, list)) else (seed,)
    return derive_seed(*parts, column)

STATS = ("iqm", "median", "mean", "trimmed_mean")
TRIM = (0.01, 0.99)       # the reference's "mean": values between the 1 % and 99 % quantiles


def nanquantiles(values, qs, axis=0) -> np.ndarray:
    """Quantiles ``qs`` of ``values`` along ``axis`` ignoring NaN, with linear interpolation
    (NumPy's default, pandas' ``quantile``): the result has a leading len(qs) axis and keeps
    ``axis`` as a singleton. Vectorised (one sort), unlike ``np.nanquantile``; a slice without
    values gives NaN."""
    v = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    srt = np.sort(v, -1)                                       # NaN last
    k = (~np.isnan(srt)).sum(-1, keepdims=True)
    out = []
    for q in qs:
        pos = q * np.maximum(k - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
        a, b = np.take_along_axis(srt, lo, -1), np.take_along_axis(srt, hi, -1)
        r = a + (b - a) * (pos - lo)
        r = np.where(pos == lo, a, r)                          # exact at the sample points
        out.append(np.moveaxis(np.where(k > 0, r, np.nan), -1, axis))
    return np.stack(out)


def quantile_mean(values, lower: float, upper: float, axis=0) -> np.ndarray:
    """The mean of the values v with Q_lower ≤ v ≤ Q_upper along ``axis`` (quantiles with linear
    interpolation, as pandas; bounds inclusive). NaN values are ignored; a slice without
    finite values gives NaN."""
    v = np.asarray(values, np.float64)
    lo, hi = nanquantiles(v, (lower, upper), axis)
    keep = (v >= lo) & (v <= hi)                              # NaN compares False
    count = keep.sum(axis)
    total = np.where(keep, v, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def iqm(values, axis=0) -> np.ndarray:
    """Interquartile mean along ``axis``: the mean of the values with
    Q25 ≤ v ≤ Q75 (linear-interpolation quantiles, inclusive). NaN-safe (NaN values are
    dropped first). A 1-D input gives a 0-d array (use ``float()``)."""
    return quantile_mean(values, 0.25, 0.75, axis)


def trimmed_mean(values, axis=0, lower: float = TRIM[0], upper: float = TRIM[1]) -> np.ndarray:
    """The mean of the values between the ``lower`` and ``upper`` quantiles (inclusive): the
    statistic the StartGrad scripts call "mean" (1 %/99 % trimming)."""
    return quantile_mean(values, lower, upper, axis)


def step_curve(histories, stat: str = "iqm") -> np.ndarray:
    """(N_img, T) per-image histories -> (T,) the per-step statistic over images: ``iqm``,
    ``median``, ``mean`` (plain) or ``trimmed_mean`` (1 %/99 %, the reference's "mean").
    NaN values (an image without a value at a step) are ignored."""
    h = np.asarray(histories, np.float64)
    if h.ndim != 2:
        raise ValueError(f"histories must be (N_img, T), got shape {h.shape}")
    if stat == "iqm":
        return iqm(h, 0)
    if stat == "trimmed_mean":
        return trimmed_mean(h, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if stat == "median":
            return np.nanmedian(h, 0)
        if stat == "mean":
            return np.nanmean(h, 0)
    raise ValueError(f"unknown statistic {stat!r}; allowed: {', '.join(STATS)}")


def bootstrap_indices(n_images: int, b: int, *, seed: int = 0,
                      compat: bool = False) -> np.ndarray:
    """The image indices (n_images,) of bootstrap replicate ``b``, drawn with replacement and
    shared by every initialisation (paired bootstrap).

    Clean: ``np.random.default_rng([seed, b])``. ``compat=True``: the reference's draw,
    ``np.random.seed(b)`` then ``np.random.randint(0, n, n)`` (through a private
    ``RandomState(b)``, so the global NumPy state is not touched; ``seed`` is unused)."""
    if n_images < 1:
        raise ValueError("the bootstrap needs at least one image")
    if compat:
        return np.random.RandomState(int(b)).randint(0, n_images, size=n_images)
    return np.random.default_rng([int(seed), int(b)]).integers(0, n_images, size=n_images)


def paired_resample(curves: dict, b: int, *, seed: int = 0,
                    compat: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(indices, {init: histories[indices]}): replicate ``b`` of the paired bootstrap, the same
    rows (images) for every initialisation."""
    arrays = _check_curves(curves)
    n = next(iter(arrays.values())).shape[0]
    idx = bootstrap_indices(n, b, seed=seed, compat=compat)
    return idx, {k: v[idx] for k, v in arrays.items()}


def step_curve_ci(curves: dict, *, stat: str = "iqm", n_boot: int = 250, level: float = 0.95,
                  candidate: str | None = None, seed: int = 0, compat: bool = False) -> dict:
    """Per-step statistic over images with paired bootstrap confidence intervals.

    ``curves``: init name -> (N_img, T) histories of the same images in the same order. Each
    replicate b = 0..n_boot−1 resamples the images with the indices of
    :func:`bootstrap_indices` (the same for every init, as :func:`speedup` does) and takes the
    per-step ``stat`` (:func:`step_curve`) of each init. The interval is the percentile
    interval of the replicates, ((1 − level)/2, (1 + level)/2) quantiles with linear
    interpolation, around the statistic of all the images (``curve``).

    With ``candidate`` (e.g. ``"startgrad"``), also the paired differences: for every other
    init o, the per-step ``stat`` curve of ``candidate`` minus that of o within each replicate,
    so that image-to-image spread common to both inits cancels.

    Returns ``{"curve": {init: (T,)}, "lo": {...}, "hi": {...}}`` plus ``"diff"``,
    ``"diff_lo"``, ``"diff_hi"`` ({o: (T,)}) with ``candidate``, and ``n_boot``, ``level``,
    ``stat``, ``n_images``."""
    arrays = _check_curves(curves)
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r}; allowed: {', '.join(STATS)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    if candidate is not None and candidate not in arrays:
        raise ValueError(f"no curves for init {candidate!r}; given: {', '.join(arrays)}")
    n_img = next(iter(arrays.values())).shape[0]
    idx = np.stack([bootstrap_indices(n_img, b, seed=seed, compat=compat)
                    for b in range(n_boot)])                        # (B, N_img)
    reps = {k: np.stack([step_curve(v[i], stat) for i in idx]) for k, v in arrays.items()}
    qs = ((1 - level) / 2, (1 + level) / 2)
    out: dict = {"curve": {}, "lo": {}, "hi": {}, "n_boot": int(n_boot), "level": level,
                 "stat": stat, "n_images": int(n_img)}
    for k, r in reps.items():
        out["curve"][k] = step_curve(arrays[k], stat)
        out["lo"][k], out["hi"][k] = nanquantiles(r, qs, 0)[:, 0]
    if candidate is not None:
        out.update(diff={}, diff_lo={}, diff_hi={})
        for k in arrays:
            if k == candidate:
                continue
            out["diff"][k] = out["curve"][candidate] - out["curve"][k]
            out["diff_lo"][k], out["diff_hi"][k] = nanquantiles(
                reps[candidate] - reps[k], qs, 0)[:, 0]
    return out


def reference_point(curve, reference_step: float = 1.0,
                    use_reference_step_max: bool = False) -> tuple[int, float]:
    """(t_ref, v_ref) of a reference curve (T,): t_ref = max(0, int(ρ·T) − 1) with ρ =
    ``reference_step`` (ρ = 1: the last step), or the first arg-max of the curve with
    ``use_reference_step_max``; v_ref = curve[t_ref]."""
    c = np.asarray(curve, np.float64)
    if use_reference_step_max:
        if not np.isfinite(c).any():
            return 0, float(c[0])
        t = int(np.nanargmax(np.where(np.isnan(c), -np.inf, c)))
    else:
        if not 0 < reference_step <= 1:
            raise ValueError(f"reference_step must be in (0, 1], got {reference_step!r}")
        t = max(0, int(reference_step * len(c)) - 1)
    return t, float(c[t])


def first_reaching(curve, value: float) -> int:
    """The first step at which ``curve`` ≥ ``value``, or T − 1 if it never does (as
    ``convergence_calculations.py``)."""
    c = np.asarray(curve, np.float64)
    hit = np.flatnonzero(c >= value)
    return int(hit[0]) if hit.size else len(c) - 1


def speedup_ratio(t_ref: int, t_star: int, compat: bool = False) -> float:
    """Clean: (t_ref + 1)/(t* + 1), a ratio of iteration counts. ``compat``: t_ref/t*, inf when
    t* = 0 < t_ref and NaN when both are 0 (the reference's division)."""
    if not compat:
        return (t_ref + 1) / (t_star + 1)
    if t_star == 0:
        return np.inf if t_ref > 0 else np.nan
    return t_ref / t_star


def _check_curves(curves: dict) -> dict[str, np.ndarray]:
    arrays = {k: np.asarray(v, np.float64) for k, v in curves.items()}
    if not arrays:
        raise ValueError("no curves given")
    shapes = {k: v.shape for k, v in arrays.items()}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"the curves of every initialisation must be (N_img, T) arrays of the "
                         f"same images and steps (a paired comparison), got {shapes}")
    return arrays


def speedup(curves: dict, *, reference: str = "ones", candidate: str = "startgrad",
            reference_step: float = 1.0, use_reference_step_max: bool = False,
            n_boot: int = 250, stat: str = "iqm", compat: bool = False, seed: int = 0,
            every: int = 1) -> dict:
    """Convergence speed-up of ``candidate`` over ``reference`` (StartGrad's statistic).

    ``curves``: init name -> (N_img, T) per-image histories of the same images in the same
    order (e.g. CP-ℓ1_t for ``ones``, ``uniform`` and ``startgrad``). For each replicate
    b = 0..n_boot−1 the images are resampled with the same indices for every init
    (:func:`bootstrap_indices`), the per-step curve (``stat``, :func:`step_curve`) of each is
    taken, (t_ref, v_ref) is read off the reference curve (:func:`reference_point`), t* is the
    first step at which the candidate curve is ≥ v_ref (T − 1 if never), the speed-up is
    (t_ref + 1)/(t* + 1) (``compat``: t_ref/t*), and ``verified`` says whether the candidate
    is > v_ref at every step ≥ t*. ``n_boot=0`` computes one replicate on all the images, not
    resampled. With ``compat``, ``stat="mean"`` is the reference's trimmed mean.

    Returns per-replicate arrays ``t_ref``, ``v_ref``, ``t_star``, ``speedup``, ``verified``
    (n_boot,) and the summary ``speedup_mean``, ``speedup_std``, ``t_star_mean``,
    ``t_star_std`` (population std, as the reference), ``verified_fraction``, ``n_boot``,
    ``n_images``, ``steps``. A replicate whose v_ref is NaN (the reference's statistic
    undefined at t_ref: every resampled image's CP NaN there, a mask gone to zero) has NaN
    t* and speed-up; the summaries are over the other replicates (NaN if none), and
    ``undefined_fraction`` says how many were left out.

    ``every``: the optimisation steps between two recorded entries (``history_every``). Entry
    j is step j·every, and ``t_ref``, ``t_star``, ``steps`` and the speed-up are in
    optimisation steps: (t_ref·every + 1)/(t*·every + 1), not a ratio of entry indices."""
    if int(every) != every or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    every = int(every)
    arrays = _check_curves(curves)
    for name in (reference, candidate):
        if name not in arrays:
            raise ValueError(f"no curves for init {name!r}; given: {', '.join(arrays)}")
    if compat and stat == "mean":
        stat = "trimmed_mean"
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r}; allowed: {', '.join(STATS)}")
    n_img, steps = arrays[reference].shape
    pair = {reference: arrays[reference], candidate: arrays[candidate]}
    reps = range(n_boot) if n_boot > 0 else [None]
    cols = {k: [] for k in ("t_ref", "v_ref", "t_star", "speedup", "verified")}
    for b in reps:
        sample = pair if b is None else paired_resample(pair, b, seed=seed, compat=compat)[1]
        ref_curve = step_curve(sample[reference], stat)
        cand_curve = step_curve(sample[candidate], stat)
        j_ref, v_ref = reference_point(ref_curve, reference_step, use_reference_step_max)
        t_ref = j_ref * every
        cols["t_ref"].append(t_ref)
        cols["v_ref"].append(v_ref)
        if np.isnan(v_ref):             # the reference's value is undefined (every image's
            cols["t_star"].append(np.nan)       # CP NaN there): nothing to reach
            cols["speedup"].append(np.nan)
            cols["verified"].append(False)
            continue
        j_star = first_reaching(cand_curve, v_ref)
        t_star = j_star * every
        cols["t_star"].append(t_star)
        cols["speedup"].append(speedup_ratio(t_ref, t_star, compat))
        cols["verified"].append(bool((cand_curve[j_star:] > v_ref).all()))
    out = {"t_ref": np.asarray(cols["t_ref"], np.int64),
           "v_ref": np.asarray(cols["v_ref"], np.float64),
           "t_star": np.asarray(cols["t_star"], np.float64),
           "speedup": np.asarray(cols["speedup"], np.float64),
           "verified": np.asarray(cols["verified"], bool)}
    undefined = np.isnan(out["v_ref"])
    defined = ~undefined

    def over_defined(f, v):
        return float(f(v[defined])) if defined.any() else float("nan")

    with np.errstate(invalid="ignore"):
        out.update(speedup_mean=over_defined(np.mean, out["speedup"]),
                   speedup_std=over_defined(np.std, out["speedup"]),
                   t_star_mean=over_defined(np.mean, out["t_star"]),
                   t_star_std=over_defined(np.std, out["t_star"]),
                   verified_fraction=over_defined(np.mean, out["verified"]),
                   undefined_fraction=float(np.mean(undefined)),
                   n_boot=int(n_boot), n_images=int(n_img), steps=int(steps) * every,
                   every=every,
                   reference=reference, candidate=candidate, stat=stat, compat=bool(compat))
    return out


def wilcoxon_per_step(candidate, baseline, alternative: str = "greater", *,
                      correction: bool = True, zero_method: str = "wilcox") -> np.ndarray:
    """(T,) p-values of the Wilcoxon signed-rank test at every step on the paired per-image
    differences candidate − baseline (both (N_img, T), same images in the same order), with
    H1 "candidate − baseline > 0" by default (as StartGrad;
    ``run_statistical_analysis.py`` uses ``alternative='greater'``, ``correction=True``).

    Pairs with a NaN are dropped per step. A step where every remaining difference is 0 has
    no evidence against H0: its p-value is 1.0 (scipy would fail or warn there); a step with
    no pair left is NaN."""
    from scipy import stats

    c, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    if c.shape != b.shape or c.ndim != 2:
        raise ValueError(f"candidate and baseline must be (N_img, T) of the same shape, got "
                         f"{c.shape} and {b.shape}")
    p = np.full(c.shape[1], np.nan)
    for t in range(c.shape[1]):
        d = c[:, t] - b[:, t]
        d = d[np.isfinite(d)]
        if d.size == 0:
            continue
        if not np.any(d != 0):
            p[t] = 1.0
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # exact -> normal approximation
            p[t] = stats.wilcoxon(d, alternative=alternative, correction=correction,
                                  zero_method=zero_method).pvalue
    return p


def histories_from_long(df: pd.DataFrame, *, step: str = "step", image: str = "lineKey",
                        value: str = "lineVal", images=None) -> tuple[np.ndarray, np.ndarray]:
    """A long table (one row per image and step, the StartGrad CSV layout ``step``,
    ``lineKey``, ``lineVal``) as ((N_img, T) float64 histories, (N_img,) image keys). Rows are
    the sorted keys, or ``images`` in that order (use the same list for every init to pair
    them); columns the sorted steps. A missing (image, step) is NaN; a duplicate raises."""
    if df.duplicated([image, step]).any():
        raise ValueError(f"the table has several {value!r} for one ({image!r}, {step!r})")
    wide = df.pivot(index=image, columns=step, values=value).sort_index(axis=1)
    if images is not None:
        missing = pd.Index(images).difference(wide.index)
        if len(missing):
            raise ValueError(f"images {list(missing)[:5]} are not in the table")
        wide = wide.reindex(list(images))
    return wide.to_numpy(np.float64), wide.index.to_numpy()
