"""The attribution re-calibration study's table (Yang et al., ICLR 2023): every method with and
without re-calibration, side by side.

Table ``by_recalibration`` reads the experiment's long-form summary with the column the plan
adds for methods that have the option (:meth:`xaipipe.config.plan.Plan.method_info`):
``recalibrate`` (``none``, ``valid_ref`` or ``valid_ip``; empty for a method without it).
One block per (model, variant, metric, score), headed ``model / variant: metric score ↑`` (or
``↓``) with ``(n = …)`` when every cell has the same number of images; one row per method
(``method_name``, in order of first appearance); one column per estimator present anywhere in
the summary, in the order none, valid_ref, valid_ip; cells ``mean [ci_low, ci_high]``. A
method without the option (the random control, Grad-CAM, FullGrad) has one value, shown under
``none``, and its row says ``(no re-calibration)``; the random map's row says ``(control)``.
Two runs of one method with the same estimator in one block are an error naming them.

Scores of one ratio (DiffID's ``diffid_logit@0.3``: a point of a curve) are left out of the
table: figure ``diffid_curves`` draws them.

Formats: csv (the summary rows of the table, in table order), md, tex, html
(:mod:`xaipipe.report.render`), every format rendered before any file is written.

Figure ``diffid_curves``: DiffID(r) = INS(r) − DEL(r) against the ratio r (the
``diffid_{logit,acc}@r`` rows of the summary), one panel per (model, variant) and kind
(logit ratio, top-1 accuracy), one line per method run with its CI as a band; one colour per
method, solid for runs with re-calibration, dashed without, dotted for a method without the
option; the legend on the right.

Figure ``randomisation_curves``: the model-randomisation check (metric
``model_randomisation``): the similarity of each method run's maps to its maps on the trained
model against the cascade's stages (the ``similarity@<layer>`` rows, in cascade order, the
layers re-initialised cumulatively from the output down), drawn as ``diffid_curves``; a
method passes when its curve falls.
"""
from __future__ import annotations

import pandas as pd

import numpy as np

from ..errors import DataError
from . import render
from .figures import FIGURES, FigureInputs, plt, save_figure
from .inputs import check_summary
from .render import MISSING, ci_cell
from .tables import TABLES

ESTIMATORS = ("none", "valid_ref", "valid_ip")
CONTROLS = ("random",)


def recal_frame(summary: pd.DataFrame, where: str = "by_recalibration") -> pd.DataFrame:
    """The summary checked, with ``recalibrate`` as str ('' for a method without it) and
    ``method_name`` filled in from ``method`` where absent."""
    df = check_summary(summary, where=where)
    if "recalibrate" not in df:
        df["recalibrate"] = ""
    rc = df["recalibrate"].astype(object)
    df["recalibrate"] = rc.where(rc.notna(), "").astype(str).replace({"nan": "", "None": ""})
    bad = sorted(set(df["recalibrate"]) - set(ESTIMATORS) - {""})
    if bad:
        raise DataError(f"{where}: column 'recalibrate' holds {bad}; allowed: "
                        f"{', '.join(ESTIMATORS)} or empty")
    if "method_name" not in df:
        df["method_name"] = df["method"]
    name = df["method_name"].astype(object)
    df["method_name"] = name.where(name.notna() & (name.astype(str) != ""), df["method"])
    return df


def recal_table(summary: pd.DataFrame) -> render.Table:
    """The ``by_recalibration`` blocks (module docstring) as a render table."""
    df = recal_frame(summary)
    df = df[~df["score"].astype(str).str.contains("@", regex=False)]
    present = [e for e in ESTIMATORS if (df["recalibrate"] == e).any()]
    columns = present or ["none"]
    if "none" not in columns and (df["recalibrate"] == "").any():
        columns = ["none", *columns]
    methods = list(dict.fromkeys(df["method_name"]))
    blocks = []
    for (model, variant, metric, score), d in df.groupby(
            ["model", "variant", "metric", "score"], sort=False):
        dirs = list(dict.fromkeys(d["direction"]))
        ns = sorted({int(v) for v in d["n"]})
        rows = []
        for m in methods:
            dm = d[d["method_name"] == m]
            if dm.empty:
                continue
            dup = dm[dm.duplicated("recalibrate", keep=False)]
            if len(dup):
                raise DataError(f"by_recalibration: runs {sorted(dup['method'])} of method "
                                f"{m!r} have the same estimator in {model} / {variant}, "
                                f"{metric} {score}; give one experiment one run per estimator")
            without = (dm["recalibrate"] == "").all()
            cells = []
            for e in columns:
                r = dm[dm["recalibrate"] == ("" if without and e == "none" else e)]
                if r.empty:
                    cells.append(MISSING)
                    continue
                r = r.iloc[0]
                text = ci_cell(float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
                cells.append(text + (f" (n={int(r['n'])})" if len(ns) > 1 else ""))
            label = m + (" (control)" if m in CONTROLS else
                         " (no re-calibration)" if without else "")
            rows.append([label, *cells])
        heading = render.Heading(f"{model} / {variant}: {metric} {score}",
                                 dirs[0] if len(dirs) == 1 else "",
                                 f"(n = {ns[0]})" if len(ns) == 1 else "")
        blocks.append(render.Block(heading, rows))
    cols = [render.Column(render.Heading("method"), "l")] + \
        [render.Column(render.Heading(e)) for e in columns]
    experiment = ", ".join(dict.fromkeys(df["experiment"]))
    caption = (f"{experiment + ': ' if experiment else ''}mean [CI] per method and "
               f"re-calibration estimator ({render.LEGEND})")
    return render.Table("by_recalibration", caption, cols, blocks, "", experiment,
                        group=("re-calibration", 1, 1 + len(columns)))


@TABLES.register(name="by_recalibration")
def by_recalibration(summary: pd.DataFrame, out: dict[str, str]) -> None:
    """``out``: format -> path among csv (the summary rows), md, tex and html."""
    table = recal_table(summary) if set(out) - {"csv"} else None
    frame = recal_frame(summary) if "csv" in out else None
    render.write_table(table, out, csv=frame, name="by_recalibration")


def curve_rows(summary: pd.DataFrame, prefix: str = "diffid_",
               where: str = "diffid_curves") -> pd.DataFrame:
    """The per-point rows of a summary whose score is ``<name>@<x>`` with ``<name>`` starting
    with ``prefix`` (DiffID's ``diffid_logit@0.3``; other metrics' per-fraction rows,
    Sensitivity-n's ``correlation@q``, are left out), with ``curve`` (the name) and ``x``
    columns (the text after ``@``) and, where ``x`` is numeric, ``ratio`` (it as a float)."""
    df = recal_frame(summary, where=where)
    score = df["score"].astype(str)
    df = df[score.str.startswith(prefix) & score.str.contains("@", regex=False)].copy()
    parts = df["score"].astype(str).str.rsplit("@", n=1)
    df["curve"] = parts.str[0]
    df["x"] = parts.str[1]
    df["ratio"] = pd.to_numeric(df["x"], errors="coerce")
    return df


def curve_figure(df: pd.DataFrame, paths, *, xlabel: str, numeric: bool,
                 suptitle: str | None = None) -> None:
    """One panel per (model, variant) and curve, one line per method run with its CI as a
    band (one colour per method, solid with re-calibration, dashed without, dotted without
    the option), the legend on the right. ``numeric``: x is ``ratio``; otherwise the points
    are the ``x`` labels in their order of first appearance (a cascade's layers)."""
    panels = list(dict.fromkeys(zip(df["model"], df["variant"])))
    curves = list(dict.fromkeys(df["curve"]))
    fig, axes = plt.subplots(len(panels), len(curves), squeeze=False,
                             figsize=(4.6 * len(curves), 3.4 * len(panels)))
    runs = list(dict.fromkeys(df["method"]))
    # one colour per method (its vanilla and re-calibrated runs share it, told apart by the
    # line style); tab20 past 10 methods
    names = list(dict.fromkeys(df["method_name"]))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    first = df.drop_duplicates("method").set_index("method")["method_name"]
    colours = {m: cmap(names.index(first[m]) % cmap.N) for m in runs}
    for i, (model, variant) in enumerate(panels):
        for j, curve in enumerate(curves):
            ax = axes[i, j]
            d = df[(df["model"] == model) & (df["variant"] == variant) & (df["curve"] == curve)]
            labels = list(dict.fromkeys(d["x"]))
            for run in runs:
                dr = d[d["method"] == run]
                if dr.empty:
                    continue
                if numeric:
                    dr = dr.sort_values("ratio")
                    x = dr["ratio"].to_numpy(float)
                else:
                    x = np.array([labels.index(v) for v in dr["x"]], float)
                rc = dr["recalibrate"].iloc[0]
                style = ":" if rc == "" else "--" if rc == "none" else "-"
                ax.plot(x, dr["mean"].to_numpy(float), style, color=colours[run], label=run,
                        linewidth=1.2)
                ax.fill_between(x, dr["ci_low"].to_numpy(float), dr["ci_high"].to_numpy(float),
                                color=colours[run], alpha=0.15 if len(runs) <= 6 else 0.06,
                                linewidth=0)
            if not numeric:
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_xlabel(xlabel, fontsize=8)
            better = d["direction"].iloc[0] if len(d) else "higher"
            ax.set_title(f"{model} / {variant}: {curve} ({better} is better)", fontsize=9)
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout()
    # to the right of the panels, one column per 12 runs (bbox_inches="tight" keeps it)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               ncol=int(np.ceil(len(labels) / 12)), frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    save_figure(fig, paths)


def diffid_curves(summary: pd.DataFrame, paths, *, suptitle: str | None = None) -> None:
    """The figure ``diffid_curves`` (module docstring) of a long-form summary."""
    df = curve_rows(summary)
    if df.empty:
        raise DataError("diffid_curves: the summary has no per-ratio scores (the metric "
                        "diffid's diffid_logit@r rows)")
    if df["ratio"].isna().any():
        raise DataError("diffid_curves: per-ratio scores must end in @<ratio>, got "
                        f"{sorted(set(df.loc[df['ratio'].isna(), 'score']))[:3]}")
    curve_figure(df, paths, xlabel="ratio r", numeric=True, suptitle=suptitle)


def randomisation_curves(summary: pd.DataFrame, paths, *, suptitle: str | None = None) -> None:
    """The figure ``randomisation_curves`` (module docstring) of a long-form summary."""
    df = curve_rows(summary, "similarity", "randomisation_curves")
    if df.empty:
        raise DataError("randomisation_curves: the summary has no per-stage scores (the "
                        "metric model_randomisation's similarity@<layer> rows)")
    curve_figure(df, paths, xlabel="re-initialised down to (cumulative)", numeric=False,
                 suptitle=suptitle)


@FIGURES.register(name="diffid_curves")
def diffid_curves_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """DiffID against the ratio per method run (module docstring)."""
    diffid_curves(inputs.summary, paths, suptitle=inputs.experiment or None)


@FIGURES.register(name="randomisation_curves")
def randomisation_curves_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """The model-randomisation check per method run (module docstring)."""
    randomisation_curves(inputs.summary, paths, suptitle=inputs.experiment or None)
