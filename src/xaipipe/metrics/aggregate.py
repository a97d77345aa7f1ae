"""Aggregation of per-image scores: mean with a percentile bootstrap interval."""
from __future__ import annotations

import numpy as np

from ..utils import derive_seed

#: at most this many resampled values are held at once: the replicates are drawn in blocks of
#: ⌊BLOCK_ELEMENTS / n⌋ rows (at least one), so memory stays bounded whatever n and n_boot
BLOCK_ELEMENTS = 1 << 20


def bootstrap_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The means of ``n_boot`` resamples (with replacement, n of n) of ``v``, drawn from
    ``rng`` in blocks of replicates. NumPy's ``Generator.integers`` draws the same stream of
    indices whether a (n_boot, n) array is asked for at once or in consecutive blocks of rows,
    and each row's mean does not depend on the other rows, so the result is bit for bit that
    of one (n_boot, n) draw, with at most :data:`BLOCK_ELEMENTS` indices in memory."""
    n = v.size
    means = np.empty(n_boot, np.float64)
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        means[start:start + b] = v[rng.integers(0, n, size=(b, n))].mean(1)
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
