"""What the report builders read: the experiment's summary (long form) and the figure inputs.

The summary has one row per (model, variant, method, metric, score)::

    experiment, dataset, model, metric, method, variant, score,   keys (str)
    n, mean, ci_low, ci_high,                                     the aggregate
    direction ("higher" | "lower": which is better), excluded (images left out, int >= 0)

Tables write it to CSV as is; figures read it back with :func:`read_summary`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import DataError

KEY_COLUMNS = ["experiment", "dataset", "model", "metric", "method", "variant", "score"]
VALUE_COLUMNS = ["n", "mean", "ci_low", "ci_high", "direction", "excluded"]
SUMMARY_COLUMNS = KEY_COLUMNS + VALUE_COLUMNS
DIRECTIONS = ("higher", "lower")


def check_summary(summary: pd.DataFrame, where: str = "summary") -> pd.DataFrame:
    """The summary with its columns checked and typed (keys and direction as str, n and
    excluded as int, the aggregate as float). ``where`` names the file or caller in errors."""
    if not isinstance(summary, pd.DataFrame):
        raise DataError(f"{where}: expected a pandas DataFrame, got {type(summary).__name__}")
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise DataError(f"{where}: the summary lacks the column(s) {missing}; "
                        f"expected {SUMMARY_COLUMNS}")
    df = summary.copy()
    for c in KEY_COLUMNS + ["direction"]:
        df[c] = df[c].astype(str)
    bad = sorted(set(df["direction"]) - set(DIRECTIONS))
    if bad:
        raise DataError(f"{where}: direction must be one of {list(DIRECTIONS)}, got {bad}")
    for c in ("n", "excluded"):
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any():
            raise DataError(f"{where}: column {c!r} must be integers (found missing values)")
        df[c] = v.astype("int64")
    for c in ("mean", "ci_low", "ci_high"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


def read_summary(path) -> pd.DataFrame:
    """Read a summary CSV written by the ``summary`` table (keys stay strings)."""
    try:
        df = pd.read_csv(path, dtype={c: str for c in KEY_COLUMNS + ["direction"]},
                         keep_default_na=False, na_values={c: ["", "NaN", "nan"]
                                                           for c in ("mean", "ci_low",
                                                                     "ci_high")})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: cannot read the summary CSV ({e})") from None
    return check_summary(df, where=str(path))


def read_per_image(path) -> pd.DataFrame:
    """The experiment's per-image scores (``per_image.parquet``, written with the summary:
    :func:`xaipipe.pipeline.summary.per_image_frame`)."""
    if path is None:
        raise DataError("this table or figure needs the experiment's per-image scores "
                        "(per_image.parquet), which were not given")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the per-image scores ({e})") from None


@dataclass
class FigureInputs:
    """Everything a registered figure may use."""
    summary: pd.DataFrame          # the experiment's summary (long form above)
    stores: dict[str, str]         # method run name -> saliency store path (first model,
    #                                report variant); a value may be a list of shards
    images: str | None             # that variant's image store path (open_images)
    split: str = "val"
    n_images: int = 6
    experiment: str = ""
    per_image: str | None = None   # the experiment's per-image scores (read_per_image)


def metric_rows(df: pd.DataFrame, metric_name: str) -> pd.DataFrame:
    """The rows of a per-image frame scored by the registered metric ``metric_name``."""
    return df[df["metric_name"] == metric_name] if "metric_name" in df else df.iloc[:0]
