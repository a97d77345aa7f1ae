"""An experiment's scores: the per-image rows of exactly its images (its selections, capped
at its ``max_images``), long form, and the summary each metric's ``aggregate`` hook makes of
them (mean with a bootstrap interval by default)."""
from __future__ import annotations

import pandas as pd

from ..data.filters import selected_ids
from ..metrics.base import get_metric


def experiment_scores(scores, selections, job):
    """(entry, per-image frame) of each score file of a summary job, restricted to exactly
    the experiment's images (its selection and ``max_images``)."""
    sel_frames = [pd.read_parquet(p) for p in selections]
    for path, entry in zip(scores, job.entries):
        df = pd.read_parquet(path)
        ids = selected_ids(sel_frames[entry.selection], entry.max_images)["image_id"]
        yield entry, df[df["image_id"].isin(ids)].reset_index(drop=True)


def per_image_frame(scores, selections, job) -> pd.DataFrame:
    """Every per-image score of the experiment's own images, long form: the key columns
    (experiment, dataset, model, metric, method, variant), the metric's registered name
    (``metric_name``), what the plan knows of the method run (``method_run``,
    ``method_name``, ``steps``, …), then each score file's columns (``image_id``, ``target``,
    scalars, curves as arrays; a column a metric does not have is missing in its rows).
    The report builders that need single images (scatter plots, convergence curves, paired
    tests) read it (:func:`xaipipe.report.inputs.read_per_image`)."""
    frames = []
    for entry, df in experiment_scores(scores, selections, job):
        keys = {"experiment": job.experiment, **entry.keys, "metric_name": entry.metric,
                **{k: v for k, v in entry.method.items() if k != "method"}}
        head = pd.DataFrame({k: [v] * len(df) for k, v in keys.items()}, index=df.index)
        frames.append(pd.concat([head, df], axis=1))
    if not frames:
        return pd.DataFrame({"experiment": [], "image_id": []})
    return pd.concat(frames, ignore_index=True)


def summarize_experiment(scores, selections, job) -> pd.DataFrame:
    """The experiment's summary, long form: one row per (model, variant, method, metric,
    score) over exactly the experiment's images, aggregated by the metric's own hook."""
    rows = []
    for entry, df in experiment_scores(scores, selections, job):
        k = entry.keys
        seed = (job.seed, k["dataset"], k["model"], k["metric"], k["method"], k["variant"])
        for row in get_metric(entry.metric).aggregate(df, n_boot=job.n_boot, level=job.level,
                                                      seed=seed):
            rows.append({"experiment": job.experiment, **k, **row, **entry.method})
    cols = ["experiment", "dataset", "model", "metric", "method", "variant", "score", "n",
            "mean", "ci_low", "ci_high", "direction", "excluded"]
    out = pd.DataFrame(rows)
    for c in cols:
        if c not in out:
            out[c] = 0 if c == "excluded" else None
    return out[cols + [c for c in out.columns if c not in cols]]
