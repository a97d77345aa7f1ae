"""The ShearletX study's report (Kolek et al., CVPR 2023): figure ``cp_hs_scatter``, the paper's 3 CP measures × 3
smooth-mask areas × 3 models = 27 scatter panels in one figure. Rows: model × smooth-mask run
(registered method ``smooth_mask``, ordered by target area a, read from the saliency stores'
parameters where available, and labelled with it); columns: CP measure (``cp_l1_pixel``,
``cp_l1``, ``cp_entropy``). Each panel shows every other method run (ShearletX, WaveletX, the
pixel mask) plus that row's smooth mask only; an experiment with fewer areas gets only the rows
present, one without smooth masks one row per model (rows also split by variant where there
are several). In each panel every image is a point (CP, HS) on log axes coloured by method run
(the smooth mask in one colour in every row), the per-method mean as a large ★ with its
bootstrap interval (from the summary), marginal densities (Gaussian KDE of log10 values) on
top (CP) and right (HS), and the dashed HS = 0.2 line of the paper's plots. The CP axis is
fixed to the paper's 0.1–2000 (``CP_LIMITS``); nothing is hidden: a point beyond it is drawn
at the edge as ◀ / ▶ (black-edged) and the panel notes how many, a mean beyond it is drawn at
the edge without its CP interval (the KDEs use all values). 1e-10 is added before taking logs
(as the reference plots). The per-method means with CIs are also in the ``summary`` table.
The figure is 3.7 inches high per row (33.9 for the preset's 9 rows), the legend below it.

It reads the experiment's per-image scores (``per_image.parquet``; the metrics ``cp`` and
``hallucination_score``).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import DataError
from .figures import FIGURES, FigureInputs, plt, save_figure
from .inputs import metric_rows, read_per_image

CP_MEASURES = ("cp_l1_pixel", "cp_l1", "cp_entropy")
EPS = 1e-10
CP_LIMITS = (0.1, 2000.0)   # the CP axis of the ShearletX plots (code/scatterplot.py)
SMOOTH = "smooth_mask"


def cp_hs_frame(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, variant, method, image) with the CP measures and ``hs``, plus
    ``method_name`` (the registered method; the run name where the per-image scores lack it)."""
    cp = metric_rows(per_image, "cp")
    hs = metric_rows(per_image, "hallucination_score")
    if cp.empty or hs.empty:
        raise DataError("cp_hs_scatter needs the metrics 'cp' and 'hallucination_score' in "
                        f"the experiment (per-image metrics found: "
                        f"{sorted(set(per_image.get('metric_name', [])))})")
    keys = ["model", "variant", "method", "image_id"]
    extra = ["method_name"] if "method_name" in cp else []
    cp = cp[keys + extra + [c for c in CP_MEASURES if c in cp]]
    out = cp.merge(hs[keys + ["hs"]], on=keys, how="inner")
    if "method_name" not in out:
        out["method_name"] = out["method"]
    out["method_name"] = out["method_name"].fillna(out["method"]).astype(str)
    return out


def _kde(ax, values: np.ndarray, color, vertical: bool) -> None:
    from scipy.stats import gaussian_kde
    v = np.log10(values[np.isfinite(values)] + EPS)
    if len(v) < 2 or np.ptp(v) == 0:
        return
    grid = np.linspace(v.min() - 0.3, v.max() + 0.3, 200)
    dens = gaussian_kde(v)(grid)
    if vertical:
        ax.plot(dens, 10 ** grid, color=color, lw=1)
    else:
        ax.plot(10 ** grid, dens, color=color, lw=1)


def _is_smooth(frame: pd.DataFrame) -> pd.Series:
    """Rows of smooth-mask runs (registered method ``smooth_mask``)."""
    return frame["method_name"].astype(str) == SMOOTH if "method_name" in frame else \
        frame["method"].astype(str).str.startswith(SMOOTH)


def cp_hs_rows(frame: pd.DataFrame, areas: dict | None = None) -> list[tuple]:
    """The figure's rows, ``(model, variant, smooth-mask run or None)``: per model (and
    variant, where there are several) one row per smooth-mask run present for it, ordered by
    target area (``areas``: run -> a, where known) and then as they come; one row with
    ``None`` where the model has no smooth-mask run."""
    areas = areas or {}
    rows = []
    for (model, variant), d in frame.groupby(["model", "variant"], sort=False, dropna=False):
        runs = list(dict.fromkeys(d.loc[_is_smooth(d), "method"]))
        runs.sort(key=lambda r: (areas.get(r) is None, areas.get(r) or 0.0))
        rows += [(model, variant, r) for r in runs] or [(model, variant, None)]
    return rows


def _clipped_scatter(ax, x, y, color, label, lo, hi) -> int:
    """Points inside [lo, hi] as dots, those beyond drawn at the edge as ◀ / ▶ (edged in
    black); returns how many were beyond."""
    below, above = x < lo, x > hi
    inside = ~(below | above)
    ax.scatter(x[inside], y[inside], s=10, alpha=0.6, color=color, label=label)
    for mask, edge, marker in ((below, lo, "<"), (above, hi, ">")):
        if mask.any():
            ax.scatter(np.full(mask.sum(), edge), y[mask], s=28, marker=marker, color=color,
                       edgecolors="k", linewidths=0.5, alpha=0.9, clip_on=False, zorder=3)
    return int(below.sum() + above.sum())


def cp_hs_scatter(frame: pd.DataFrame, paths, *, summary: pd.DataFrame | None = None,
                  suptitle: str | None = None, areas: dict | None = None,
                  cp_limits: tuple[float, float] = CP_LIMITS):
    """Draw :func:`cp_hs_frame`'s rows (see the module docstring): one row per
    :func:`cp_hs_rows` entry, one column per CP measure. ``areas`` (smooth-mask run -> target
    area) orders and labels the rows. Saves to ``paths`` and returns the (closed) Figure;
    its scatter axes carry the label ``"cp_hs_scatter"``, the marginals ``"cp_hs_kde"``."""
    areas = areas or {}
    lo, hi = cp_limits
    rows = cp_hs_rows(frame, areas)
    measures = [c for c in CP_MEASURES if c in frame]
    if not measures:
        raise DataError(f"cp_hs_scatter: none of the CP measures {list(CP_MEASURES)} found")
    smooth = _is_smooth(frame)
    others = list(dict.fromkeys(frame.loc[~smooth, "method"]))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(others)}
    smooth_color = plt.cm.tab10(len(others) % 10)
    several_variants = frame["variant"].nunique() > 1
    height = 3.7 * len(rows) + 0.6
    fig = plt.figure(figsize=(4.2 * len(measures), height))
    outer = fig.add_gridspec(len(rows), len(measures), wspace=0.35, hspace=0.5,
                             top=1 - 0.9 / height, bottom=0.75 / height)
    for r, (model, variant, run) in enumerate(rows):
        d = frame[(frame["model"] == model) & (frame["variant"] == variant)]
        drawn = [(m, colors[m], m) for m in others] + \
            ([(run, smooth_color, _area_label(run, areas))] if run is not None else [])
        name = f"{model}" + (f" ({variant})" if several_variants else "") + \
            (f" · {_area_label(run, areas)}" if run is not None else "")
        for c, col in enumerate(measures):
            g = outer[r, c].subgridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4),
                                        wspace=0.05, hspace=0.05)
            ax = fig.add_subplot(g[1, 0], label="cp_hs_scatter")
            top = fig.add_subplot(g[0, 0], sharex=ax, label="cp_hs_kde")
            right = fig.add_subplot(g[1, 1], sharey=ax, label="cp_hs_kde")
            beyond = n = 0
            for m, color, label in drawn:
                dm = d[d["method"] == m]
                if dm.empty:
                    continue
                x, y = dm[col].to_numpy(float) + EPS, dm["hs"].to_numpy(float) + EPS
                beyond += _clipped_scatter(ax, x, y, color, label, lo, hi)
                n += int(np.isfinite(x).sum())
                _mean_marker(ax, summary, model, variant, m, col, color, (lo, hi))
                _kde(top, dm[col].to_numpy(float), color, vertical=False)
                _kde(right, dm["hs"].to_numpy(float), color, vertical=True)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.axhline(0.2, ls="--", color="0.4", lw=0.8)
            if beyond:
                ax.text(0.02, 0.02, f"{beyond} of {n} beyond [{lo:g}, {hi:g}]: at the edge",
                        transform=ax.transAxes, fontsize=6, color="0.2", va="bottom")
            ax.set_xlabel(f"{col} (higher is better)", fontsize=8)
            ax.set_ylabel("hallucination score (lower is better)", fontsize=8)
            top.set_title(f"{name}\n{col}", fontsize=9)
            for a in (top, right):
                a.tick_params(labelbottom=False, labelleft=False, labelsize=6)
            ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in others]
    if any(run is not None for _, _, run in rows):
        handles.append(plt.Line2D([], [], marker="o", ls="", color=smooth_color,
                                  label="smooth mask (the row's area)"))
    handles += [plt.Line2D([], [], marker=">", ls="", color="0.5", mec="k", mew=0.5,
                           label=f"CP beyond [{lo:g}, {hi:g}], drawn at the edge"),
                plt.Line2D([], [], marker="*", ls="", ms=10, color="0.5", mec="k", mew=0.6,
                           label="mean (bootstrap CI)")]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1 - 0.15 / height, va="top")
    save_figure(fig, paths)
    return fig


def _area_label(run: str, areas: dict) -> str:
    a = areas.get(run)
    return f"{run} (a = {a:g})" if a is not None else str(run)


def _mean_marker(ax, summary, model, variant, method, col, color, limits) -> None:
    """The summary's mean (CP, HS) of one method with its bootstrap CI; a mean beyond the
    CP limits is drawn at the edge without its CP interval."""
    if summary is None or summary.empty:
        return
    s = summary[(summary["model"] == model) & (summary["method"] == method)]
    if "variant" in s and (s["variant"] == variant).any():
        s = s[s["variant"] == variant]
    x = s[s["score"] == col]
    y = s[s["score"] == "hs"]
    if x.empty or y.empty:
        return
    x, y = x.iloc[0], y.iloc[0]
    lo, hi = limits
    mx = x["mean"] + EPS
    xerr = [[max(x["mean"] - x["ci_low"], 0)], [max(x["ci_high"] - x["mean"], 0)]]
    if not lo <= mx <= hi:
        mx, xerr = min(max(mx, lo), hi), None
    my = y["mean"] + EPS
    ax.errorbar([mx], [my], xerr=xerr,
                yerr=[[max(y["mean"] - y["ci_low"], 0)], [max(y["ci_high"] - y["mean"], 0)]],
                ls="none", color=color, elinewidth=1, zorder=4)
    ax.plot([mx], [my], marker="*", ms=13, ls="none", color=color, mec="k", mew=0.6,
            clip_on=False, zorder=5)


def smooth_mask_areas(stores: dict | None) -> dict:
    """{smooth-mask run: target area} from the saliency stores' ``parameters`` (the figure's
    stores: run -> store path or shards); runs whose store cannot be read are left out."""
    from ..shards import read_manifest
    from ..zarrio import open_group
    out = {}
    for run, paths in (stores or {}).items():
        try:
            paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
            first = (read_manifest(paths[0]) or paths)[0]
            attrs = dict(open_group(first).attrs)
            if attrs.get("method_name") == SMOOTH:
                out[run] = float(attrs["parameters"]["area"])
        except Exception:  # noqa: BLE001 - labels only: the run name stands in
            continue
    return out


@FIGURES.register(name="cp_hs_scatter")
def cp_hs_scatter_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """CP against the Hallucination Score per model × smooth-mask area and CP measure
    (module docstring)."""
    frame = cp_hs_frame(read_per_image(inputs.per_image))
    cp_hs_scatter(frame, paths, summary=inputs.summary, suptitle=inputs.experiment or None,
                  areas=smooth_mask_areas(inputs.stores))
