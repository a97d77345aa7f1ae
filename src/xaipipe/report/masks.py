"""Report builders of the mask-method papers, registered by name.

ShearletX (`metrics.md` §8-9): figure ``cp_hs_scatter``: one row of panels per model, one
column per CP measure (``cp_l1_pixel``, ``cp_l1``, ``cp_entropy``), each image a point (CP,
HS) on log axes coloured by method run, the per-method mean as a large marker with its
bootstrap interval (from the summary), marginal densities (Gaussian KDE of log10 values) on
top (CP) and right (HS), and the dashed HS = 0.2 line of the paper's plots. 1e-10 is added
before taking logs (as the reference plots). The per-method means with CIs are also in the
``summary`` table.

StartGrad (`metrics.md` §10): figure ``convergence_curves``: rows = host method
(``method_name``), columns = retained probability, retained ℓ1 information, CP-ℓ1, CP-pixel;
per init (``ones``, ``uniform``, ``startgrad``) the median over images and the interquartile
band at every recorded step (x = step, from ``history_every``). Tables ``startgrad_speedup``,
``startgrad_iqm`` and ``startgrad_wilcoxon`` are in :mod:`xaipipe.report.startgrad`.

All read the experiment's per-image scores (``per_image.parquet``; the metrics ``cp``,
``hallucination_score`` and ``convergence``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from ..metrics.convergence import CURVES as HISTORIES, OPTIONAL_CURVES
from .figures import FIGURES, FigureInputs, _save, plt
from .inputs import read_per_image

CP_MEASURES = ("cp_l1_pixel", "cp_l1", "cp_entropy")
CURVES = (("retained_probability", "retained probability"),
          ("retained_l1", "retained ℓ1 information"),
          ("cp_l1", "CP-ℓ1"), ("cp_pixel", "CP-pixel"))
INIT_ORDER = ("ones", "uniform", "startgrad")
EPS = 1e-10


def _metric_rows(df: pd.DataFrame, metric_name: str) -> pd.DataFrame:
    return df[df["metric_name"] == metric_name] if "metric_name" in df else df.iloc[:0]


def cp_hs_frame(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, variant, method, image) with the CP measures and ``hs``."""
    cp = _metric_rows(per_image, "cp")
    hs = _metric_rows(per_image, "hallucination_score")
    if cp.empty or hs.empty:
        raise DataError("cp_hs_scatter needs the metrics 'cp' and 'hallucination_score' in "
                        f"the experiment (per-image metrics found: "
                        f"{sorted(set(per_image.get('metric_name', [])))})")
    keys = ["model", "variant", "method", "image_id"]
    cp = cp[keys + [c for c in CP_MEASURES if c in cp]]
    return cp.merge(hs[keys + ["hs"]], on=keys, how="inner")


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


def cp_hs_scatter(frame: pd.DataFrame, paths, *, summary: pd.DataFrame | None = None,
                  suptitle: str | None = None) -> None:
    """Draw :func:`cp_hs_frame`'s rows (see the module docstring)."""
    models = list(dict.fromkeys(frame["model"]))
    methods = list(dict.fromkeys(frame["method"]))
    measures = [c for c in CP_MEASURES if c in frame]
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig = plt.figure(figsize=(4.2 * len(measures), 3.9 * len(models)))
    outer = fig.add_gridspec(len(models), len(measures), wspace=0.35, hspace=0.45)
    for r, model in enumerate(models):
        for c, col in enumerate(measures):
            g = outer[r, c].subgridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4),
                                        wspace=0.05, hspace=0.05)
            ax = fig.add_subplot(g[1, 0])
            top = fig.add_subplot(g[0, 0], sharex=ax)
            right = fig.add_subplot(g[1, 1], sharey=ax)
            d = frame[frame["model"] == model]
            for m in methods:
                dm = d[d["method"] == m]
                if dm.empty:
                    continue
                x, y = dm[col].to_numpy(float) + EPS, dm["hs"].to_numpy(float) + EPS
                ax.scatter(x, y, s=10, alpha=0.6, color=colors[m], label=m)
                _mean_marker(ax, summary, model, m, col, colors[m])
                _kde(top, dm[col].to_numpy(float), colors[m], vertical=False)
                _kde(right, dm["hs"].to_numpy(float), colors[m], vertical=True)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.axhline(0.2, ls="--", color="0.4", lw=0.8)
            ax.set_xlabel(f"{col} (higher is better)", fontsize=8)
            ax.set_ylabel("hallucination score (lower is better)", fontsize=8)
            top.set_title(f"{model}: {col}", fontsize=9)
            for a in (top, right):
                a.tick_params(labelbottom=False, labelleft=False, labelsize=6)
            ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 6), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    _save(fig, paths)


def _mean_marker(ax, summary, model, method, col, color) -> None:
    if summary is None or summary.empty:
        return
    s = summary[(summary["model"] == model) & (summary["method"] == method)]
    x = s[s["score"] == col]
    y = s[s["score"] == "hs"]
    if x.empty or y.empty:
        return
    x, y = x.iloc[0], y.iloc[0]
    ax.errorbar([x["mean"] + EPS], [y["mean"] + EPS],
                xerr=[[max(x["mean"] - x["ci_low"], 0)], [max(x["ci_high"] - x["mean"], 0)]],
                yerr=[[max(y["mean"] - y["ci_low"], 0)], [max(y["ci_high"] - y["mean"], 0)]],
                marker="*", ms=13, color=color, mec="k", mew=0.6, elinewidth=1)


@FIGURES.register(name="cp_hs_scatter")
def cp_hs_scatter_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """CP against the Hallucination Score per model and CP measure (module docstring)."""
    frame = cp_hs_frame(read_per_image(inputs.per_image))
    cp_hs_scatter(frame, paths, summary=inputs.summary, suptitle=inputs.experiment or None)


# -- StartGrad ---------------------------------------------------------------------------
def history_curves(per_image: pd.DataFrame) -> dict:
    """{(model, variant, method_name, init): {quantity: (images, T) array, "image_id": ids,
    "every": history_every}} from the ``convergence`` metric's rows, images sorted by id."""
    conv = _metric_rows(per_image, "convergence")
    if conv.empty:
        raise DataError("the StartGrad report needs the metric 'convergence' (the histories of "
                        "mask methods run with history_every) in the experiment")
    out = {}
    for key, d in conv.groupby(["model", "variant", "method_name", "init"], sort=False):
        d = d.sort_values("image_id")
        entry = {q: np.stack([np.asarray(v, np.float64) for v in d[q]])
                 for q in (*HISTORIES, *OPTIONAL_CURVES)
                 if q in d and d[q].map(lambda v: isinstance(v, np.ndarray)).all()}
        entry["image_id"] = d["image_id"].to_numpy()
        every = d["history_every"].iloc[0] if "history_every" in d else 1
        entry["every"] = int(every) if pd.notna(every) and every else 1
        out[key] = entry
    return out


def convergence_figure(curves: dict, paths, *, suptitle: str | None = None) -> None:
    """Median and interquartile band over images per init (module docstring)."""
    rows = list(dict.fromkeys((m, v, h) for m, v, h, _ in curves))
    fig, axes = plt.subplots(len(rows), len(CURVES), figsize=(3.6 * len(CURVES),
                                                            2.8 * len(rows)), squeeze=False)
    colors = {"ones": "tab:blue", "uniform": "tab:orange", "startgrad": "tab:green"}
    for r, (model, variant, host) in enumerate(rows):
        inits = [i for i in INIT_ORDER if (model, variant, host, i) in curves] + \
            [i for (m, v, h, i) in curves if (m, v, h) == (model, variant, host)
             and i not in INIT_ORDER]
        for c, (q, label) in enumerate(CURVES):
            ax = axes[r, c]
            for init in inits:
                e = curves[(model, variant, host, init)]
                if q not in e:
                    continue
                a = e[q]
                x = np.arange(a.shape[1]) * e["every"]
                lo, med, hi = np.nanpercentile(a, [25, 50, 75], axis=0)
                ax.plot(x, med, color=colors.get(init), label=init, lw=1.2)
                ax.fill_between(x, lo, hi, color=colors.get(init), alpha=0.2, lw=0)
            ax.set_title(f"{model} / {host}: {label}", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
            if q.startswith("cp_"):
                ax.set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.03), title="init (median, IQR band over images)",
               title_fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    _save(fig, paths)


@FIGURES.register(name="convergence_curves")
def convergence_curves_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Convergence curves of ones / uniform / StartGrad inits per mask method."""
    convergence_figure(history_curves(read_per_image(inputs.per_image)), paths,
                       suptitle=inputs.experiment or None)
