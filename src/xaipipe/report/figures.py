"""Report figures, registered by name (config: ``figures: [saliency_grid, auc_bars]``).

A figure builder is ``builder(inputs: FigureInputs, paths: list[str])``: it draws from
``inputs`` (the experiment's summary, the saliency stores of the report variant, that variant's
image store) and saves the same figure to every path, the format taken from the extension
(``.png``, ``.pdf``), each written atomically.

The drawing functions underneath (:func:`saliency_grid`, :func:`bar_panels`,
:func:`display_map`) take arrays and frames, not paths, and can be used on their own.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import DataError  # noqa: E402
from ..registry import Registry  # noqa: E402
from ..utils import atomic_path  # noqa: E402
from .inputs import FigureInputs, check_summary  # noqa: E402

FIGURES = Registry("figure", package="xaipipe.report")

BETTER = {"higher": "higher is better", "lower": "lower is better"}

__all__ = ["FIGURES", "FigureInputs", "auc_bars_figure", "bar_panels",
           "display_map", "saliency_grid", "saliency_grid_figure"]


def save_figure(fig, paths) -> None:
    try:
        for p in paths:
            fmt = str(p).rsplit(".", 1)[-1].lower()
            if fmt not in ("png", "pdf", "svg"):
                raise ValueError(f"{p}: figure paths end in .png, .pdf or .svg")
            with atomic_path(p) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)


def display_map(saliency: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) in [0, 1] for display: Σ_c|φ|, clipped at the 99th percentile."""
    m = np.abs(np.asarray(saliency, np.float64)).sum(0)
    hi = np.quantile(m, 0.99)
    return np.clip(m / hi, 0, 1) if hi > 0 else np.zeros_like(m)


def saliency_grid(images: np.ndarray | None, maps: dict[str, np.ndarray], paths, *,
                  masks: np.ndarray | None = None, titles: list[str] | None = None,
                  suptitle: str | None = None) -> None:
    """Rows: images (uint8 (N, 3, H, W)); columns: the image, then each method's map
    ((N, C, H, W) per method). The ground-truth mask, if given, is outlined on the image.
    ``images=None`` draws the maps only."""
    names = list(maps)
    if not names:
        raise DataError("saliency grid: no maps to draw")
    n = len(images) if images is not None else len(maps[names[0]])
    lead = 0 if images is None else 1
    fig, axes = plt.subplots(n, lead + len(names),
                             figsize=(1.6 * (lead + len(names)), 1.6 * n), squeeze=False)
    for i in range(n):
        if images is not None:
            ax = axes[i, 0]
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
            if masks is not None:
                ax.contour(np.asarray(masks[i]).astype(float), levels=[0.5], colors="white",
                           linewidths=0.6)
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
        for j, name in enumerate(names):
            axes[i, lead + j].imshow(display_map(maps[name][i]), cmap="inferno", vmin=0, vmax=1)
    for j, title in enumerate((["image"] if images is not None else []) + names):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, paths)


_BAR_COLUMNS = ["model", "metric", "score", "method", "variant", "mean", "ci_low", "ci_high"]


def _bars_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The full summary is checked; an older frame without ``direction`` (or ``experiment``,
    ``excluded``, ``dataset``) is drawn without the better-direction in the titles."""
    if all(c in summary.columns for c in ("direction", "experiment", "excluded", "dataset")):
        return check_summary(summary, where="bar chart")
    missing = [c for c in _BAR_COLUMNS if c not in summary.columns]
    if missing:
        raise DataError(f"bar chart: the summary lacks the column(s) {missing}")
    df = summary.copy()
    if "direction" not in df:
        df["direction"] = ""
    return df


MAX_PANELS_PER_ROW = 4


def bar_panels(summary: pd.DataFrame, paths, *, suptitle: str | None = None) -> None:
    """One panel per (metric, score) of a long-form summary (rows of at most four panels, per
    model when there are several): bars of the mean per method (in first-seen order), one colour per
    variant, CI whiskers. Each panel title names the metric and score and, from the summary's
    ``direction`` column, whether higher or lower is better."""
    df = _bars_frame(summary)
    panels = list(dict.fromkeys(zip(df["metric"], df["score"])))
    models = list(dict.fromkeys(df["model"])) or [""]
    variants = list(dict.fromkeys(df["variant"]))
    colours = {v: f"C{k % 10}" for k, v in enumerate(variants)}
    ncol = max(1, min(MAX_PANELS_PER_ROW, len(panels)))
    per_model = max(1, -(-len(panels) // ncol))          # panel rows per model
    fig, axes = plt.subplots(len(models) * per_model, ncol,
                             figsize=(4.2 * ncol, 3.4 * len(models) * per_model), squeeze=False)
    used = [(row * per_model + k // ncol, k % ncol)
            for row in range(len(models)) for k in range(len(panels))]
    for i, j in set(np.ndindex(axes.shape)) - set(used):
        axes[i, j].set_visible(False)
    for row, model in enumerate(models):
        for k, (metric, score) in enumerate(panels):
            ax = axes[row * per_model + k // ncol, k % ncol]
            d = df[(df["model"] == model) & (df["metric"] == metric) & (df["score"] == score)]
            methods = list(dict.fromkeys(d["method"]))
            vs = [v for v in variants if v in set(d["variant"])]
            width = 0.8 / max(1, len(vs))
            for k, v in enumerate(vs):
                dv = d[d["variant"] == v].set_index("method").reindex(methods)
                x = np.arange(len(methods)) + (k - (len(vs) - 1) / 2) * width
                err = np.vstack([dv["mean"] - dv["ci_low"], dv["ci_high"] - dv["mean"]])
                ax.bar(x, dv["mean"].to_numpy(float), width,
                       yerr=np.nan_to_num(np.clip(err.astype(float), 0, None)), capsize=2,
                       color=colours[v], label=v)
            ax.set_xticks(np.arange(len(methods)))
            ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
            dirs = list(dict.fromkeys(d["direction"]))
            better = BETTER.get(dirs[0], "") if len(dirs) == 1 else ""
            title = f"{metric} {score}" + (f" ({better})" if better else "")
            if len(models) > 1:
                title = f"{model}: {title}"
            ax.set_title(title, fontsize=9)
            ax.axhline(0, color="black", linewidth=0.5)
            if vs:
                ax.legend(fontsize=7, title="variant", title_fontsize=7)
    if not panels:
        axes[0, 0].set_title("(no results)", fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)


@FIGURES.register(name="auc_bars")
def auc_bars_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Every (metric, score) of the summary as a bar panel (see :func:`bar_panels`)."""
    bar_panels(inputs.summary, paths, suptitle=inputs.experiment or None)


def _grid_data(inputs: FigureInputs):
    """(images, maps, masks, titles) of the first ``n_images`` ids that every store has."""
    from ..data.image_store import open_images
    from ..store import open_saliency

    if not inputs.stores:
        raise DataError(f"saliency_grid{' of ' + inputs.experiment if inputs.experiment else ''}"
                        ": no saliency stores given")
    opened = {m: open_saliency(p) for m, p in inputs.stores.items()}
    common = None
    for s in opened.values():
        ids = set(np.asarray(s.index).tolist())
        common = ids if common is None else common & ids
    ids = np.array(sorted(common or []), dtype=np.int64)[: max(0, int(inputs.n_images))]
    if len(ids) == 0:
        raise DataError("saliency_grid: the saliency stores share no image: "
                        + ", ".join(f"{m}={p}" for m, p in inputs.stores.items()))
    maps = {m: np.asarray(s.saliency[pd.Index(s.index).get_indexer(ids)].compute())
            for m, s in opened.items()}
    if inputs.images is None:
        return None, maps, None, [f"#{i}" for i in ids]
    images = open_images(inputs.images, inputs.split)
    pos = images.positions(ids)
    names = images.classes
    labels = images.labels[pos]
    titles = [f"#{i} {names[y] if names and 0 <= y < len(names) else y}"
              for i, y in zip(ids.tolist(), labels.tolist())]
    return images.read(pos), maps, images.read_masks(pos), titles


@FIGURES.register(name="saliency_grid")
def saliency_grid_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Images (rows) x methods (columns) of the first ``n_images`` image ids common to every
    store, the ground-truth mask outlined, each row titled with its id and class."""
    images, maps, masks, titles = _grid_data(inputs)
    saliency_grid(images, maps, paths, masks=masks, titles=titles)
