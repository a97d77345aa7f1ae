"""Aggregate per-image scores: mean with a percentile bootstrap interval."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..utils import atomic_path, derive_seed

KEYS = ["dataset", "model", "metric", "method", "variant"]


def bootstrap_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """(mean, low, high): the mean and the percentile bootstrap interval of the mean.
    NaN values are dropped; an empty input gives NaNs."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summarize(entries, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """``entries``: iterable of (keys dict with KEYS, per-image DataFrame, scalar columns).
    One row per (keys, column) with n, mean, ci_low, ci_high."""
    rows = []
    for keys, df, columns in entries:
        for col in columns:
            vals = df[col].to_numpy(np.float64) if col in df else np.zeros(0)
            mean, lo, hi = bootstrap_ci(vals, n_boot, level,
                                        derive_seed(seed, *[keys[k] for k in KEYS], col))
            rows.append({**{k: keys[k] for k in KEYS}, "score": col,
                         "n": int(np.isfinite(vals).sum()), "mean": mean,
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=KEYS + ["score", "n", "mean", "ci_low", "ci_high"])


def to_markdown(summary: pd.DataFrame, digits: int = 4) -> str:
    if summary.empty:
        return "(no results)\n"
    t = summary.copy()
    t["mean [95% CI]"] = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                          for m, lo, hi in zip(t["mean"], t["ci_low"], t["ci_high"])]
    t = t.drop(columns=["mean", "ci_low", "ci_high"])
    return t.to_markdown(index=False) + "\n"


def write_tables(summary: pd.DataFrame, csv_path, md_path) -> None:
    with atomic_path(csv_path) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(summary))
