"""Aggregation of per-image scores: mean with a percentile bootstrap interval."""
from __future__ import annotations

import numpy as np

from ..utils import derive_seed

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


def column_seed(seed, column: str) -> int:
    """The bootstrap seed of one summary column: from ``seed`` (an int, or a tuple of seed
    parts such as (global seed, dataset, model, metric, method, variant)) and the column."""
    parts = seed if isinstance(seed, (tuple, list)) else (seed,)
    return derive_seed(*parts, column)
