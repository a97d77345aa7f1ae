"""Results per step count (the IDGI study): the table ``by_steps`` and the figure ``vs_steps``.

Both read the experiment's long-form summary (:mod:`xaipipe.report.inputs`) with the columns
the method runs add (:meth:`xaipipe.config.plan.Plan.method_info`): ``method_run`` (the
configured run, e.g. ``ig`` or ``ig_idgi``), ``method_name`` (the registered method, e.g.
``integrated_gradients``), ``steps`` (the step count; empty for a method without steps, e.g.
``random``) and ``idgi`` (bool). A step sweep's stores (``method`` ``ig@8``, ``ig@16``, …)
share one ``method_run``; a run with one step count has ``method == method_run``. Only
``steps`` is required: without ``method_run`` the store name before ``@`` is used, without
``method_name`` the run, without ``idgi`` False. Other columns (a metric's
``excluded_<reason>`` counts, …) are carried along.

Table ``by_steps``: one block per (model, variant) and (metric, score), headed
``model / variant: metric score ↑`` (``↓`` where lower is better) and ``(n = …)`` when every
cell of the block has the same number of images (else each cell says ``(n=…)``). Rows: the
method runs, in the order they first appear in the summary; columns: ``IDGI`` (yes/no), then
one per step count present anywhere in the summary (ascending), cells ``mean [ci_low,
ci_high]`` (:func:`xaipipe.report.tables._cell`), ``–`` where a run lacks that count (a run
with one fixed count fills one column). A run without steps is a control (the random-map
baseline): one row labelled ``random (control)`` whose value stands in every step column, as
it does not depend on steps. Images left out of an aggregate are listed in a footnote, per
store (``ig@16``) or once per block when every store lost the same ones, with the per-reason
counts of the ``excluded_*`` columns where the metric gives them (PIC's ``min_pred``, …).

Formats: ``csv``: the summary rows in table order (block, row, step count), long form with
every column, ``steps`` written as an integer (empty for controls) and ``idgi`` as
True/False, so ``pd.read_csv(path)`` and e.g. ``df.pivot_table(index=["model", "metric",
"score", "method_run"], columns="steps", values="mean")`` give the wide view. ``md``: a
table per block; ``tex``: one booktabs ``tabular`` with a ``steps`` heading spanning the
step columns and a ``\\multicolumn`` heading per block; ``html``: one ASCII-only table (the
summary's ``xaipipe-summary`` style), a ``<tbody>`` per block. Each file is written
atomically, and only once every format has been rendered.

Figure ``vs_steps``: one row of panels per model, one column per (metric, score), titled
``metric score ↑``/``↓``. x: the number of steps on a log₂ axis with a tick at each step count;
y: the mean with its CI as a shaded band. One colour per method family (``method_name``),
solid for plain runs and dashed for IDGI ones; a run with a single step count is one point
with a CI whisker; a control is a dotted horizontal line over a light band. Variants: each
panel draws every variant it has (the IDGI preset scores insertion and PIC on ``original``
and stability on ``jpeg``, so a row per variant would leave half the panels empty); when the
summary has several variants, the markers tell them apart (legend ``variant …``) and a panel
with a single one names it in its title. One legend for the whole figure, below the panels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from ..errors import DataError
from . import figures as _figures
from . import render
from .figures import FIGURES, FigureInputs, plt
from .inputs import check_summary
from .render import ARROW, LEGEND, MISSING, ci_cell
from .tables import TABLES

__all__ = ["StepsBlock", "StepsFigure", "StepsTable", "by_steps", "steps_figure",
           "steps_frame", "steps_panels", "steps_table", "to_html", "to_latex", "to_markdown",
           "vs_steps_figure"]

_TRUE = {"true", "1", "yes", "1.0"}
_FALSE = {"false", "0", "no", "0.0", "", "nan", "none"}


# -- the frame -------------------------------------------------------------------------------
def _parse_steps(col: pd.Series, where: str) -> pd.Series:
    """Positive integers as Int64, <NA> for empty cells (controls); anything else an error."""
    raw = col.astype(object)
    empty = raw.isna() | raw.astype(str).str.strip().str.lower().isin(["", "nan", "none",
                                                                        "<na>"])
    num = pd.to_numeric(raw.where(~empty), errors="coerce")
    bad = (~empty & (num.isna() | (num <= 0) | (num % 1 != 0)))
    if bad.any():
        raise DataError(f"{where}: column 'steps' must hold positive integers or be empty "
                        f"(no steps), got {sorted(set(raw[bad].astype(str)))[:5]}")
    return num.astype("Int64")


def _parse_idgi(col: pd.Series, where: str) -> pd.Series:
    text = col.astype(object).where(col.notna(), "").astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise DataError(f"{where}: column 'idgi' must be true/false, got "
                        f"{sorted(set(col[bad].astype(str)))[:5]}")
    return text.isin(_TRUE)


def _filled(col: pd.Series, default: pd.Series) -> pd.Series:
    """``col`` as str, ``default`` where it is empty."""
    v = col.astype(object)
    empty = v.isna() | v.astype(str).str.strip().isin(["", "nan", "None"])
    return v.where(~empty, default).astype(str)


def steps_frame(summary: pd.DataFrame, where: str = "by_steps") -> pd.DataFrame:
    """The summary checked (:func:`check_summary`) with ``steps`` as Int64 (<NA>: a method
    without steps), ``idgi`` bool, ``method_run`` and ``method_name`` as str (filled in where
    absent, see the module docstring) and ``excluded_*`` numeric. Raises :class:`DataError`
    without a ``steps`` column, with a bad step count or IDGI flag, with a run that has rows
    with and without steps, or with two rows for one cell."""
    if isinstance(summary, pd.DataFrame) and "steps" not in summary.columns:
        raise DataError(f"{where}: the summary has no 'steps' column (the step count of each "
                        "method store, written by the experiment's summary since method runs "
                        "carry method_run, method_name, steps and idgi; rebuild the summary)")
    df = check_summary(summary, where=where)
    df["steps"] = _parse_steps(df["steps"], where)
    df["idgi"] = (_parse_idgi(df["idgi"], where) if "idgi" in df
                  else pd.Series(False, index=df.index))
    if "method_run" not in df:
        df["method_run"] = None
    df["method_run"] = _filled(df["method_run"], df["method"].str.split("@").str[0])
    if "method_name" not in df:
        df["method_name"] = None
    df["method_name"] = _filled(df["method_name"], df["method_run"])
    for c in df.columns:
        if c.startswith("excluded_"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    keys = ["model", "variant", "metric", "score", "method_run"]
    mixed = df.groupby(keys, sort=False)["steps"].agg(lambda s: 0 < s.isna().sum() < len(s))
    if mixed.any():
        k = dict(zip(keys, mixed[mixed].index[0]))
        raise DataError(f"{where}: method run {k['method_run']!r} has rows with and without "
                        f"a step count ({k})")
    cell = keys + ["steps"]
    dup = df.assign(steps=df["steps"].fillna(-1)).duplicated(cell, keep=False)
    if dup.any():
        first = df.loc[dup, cell].iloc[0].to_dict()
        raise DataError(f"{where}: several rows for the same cell {first} (one row per "
                        "model, variant, metric, score, method run and step count)")
    return df


# -- the table (format independent) ------------------------------------------------------------
@dataclass
class StepsBlock:
    model: str
    variant: str
    metric: str
    score: str
    direction: str
    rows: list[tuple[str, str, list[str]]] = field(default_factory=list)  # label, IDGI, cells
    n: int | None = None                  # one n for the whole block, else None

    def heading(self, arrows=ARROW) -> tuple[str, str, str]:
        """(text, arrow, n text): the parts of ``model / variant: metric score ↑ (n = 10)``,
        so that each format escapes the text and writes its own arrow."""
        n = f"(n = {self.n})" if self.n is not None else ""
        return (f"{self.model} / {self.variant}: {self.metric} {self.score}",
                arrows.get(self.direction, ""), n)

    def title(self, arrows=ARROW) -> str:
        return " ".join(x for x in self.heading(arrows) if x)


@dataclass
class StepsTable:
    experiment: str
    steps: list[int]                      # the step columns, ascending
    blocks: list[StepsBlock]
    excluded: list[str]                   # footnote items

    @property
    def footnote(self) -> str:
        if not self.excluded:
            return ""
        return "Images excluded (left out of the mean): " + "; ".join(self.excluded) + "."


def _reasons(r: dict, columns) -> str:
    why = [f"{c[len('excluded_'):]} {int(r[c])}" for c in columns
           if c.startswith("excluded_") and pd.notna(r[c]) and int(r[c])]
    return f" ({', '.join(why)})" if why else ""


def _lost(d: pd.DataFrame, where: str) -> list[str]:
    """Footnote items of one block: one when every store lost the same images, else one per
    method run that lost the same at every step count, else one per store (``ig@16``)."""
    recs = d.to_dict("records")
    lost = [(r["method_run"], r["method"], int(r["excluded"]), _reasons(r, d.columns))
            for r in recs]
    if not any(k for _, _, k, _ in lost):
        return []
    same = {(k, why) for _, _, k, why in lost}
    if len(lost) > 1 and len(same) == 1:
        k, why = same.pop()
        return [f"{where}: {k}{why} (every method run and step count)"]
    items = []
    for run in dict.fromkeys(r for r, _, _, _ in lost):
        mine = [x for x in lost if x[0] == run]
        same = {(k, why) for _, _, k, why in mine}
        if len(mine) > 1 and len(same) == 1:
            k, why = same.pop()
            if k:
                items.append(f"{where}, {run} (every step count): {k}{why}")
        else:
            items += [f"{where}, {m}: {k}{why}" for _, m, k, why in mine if k]
    return items


def steps_table(summary: pd.DataFrame, where: str = "by_steps") -> StepsTable:
    """The blocks of the ``by_steps`` table (module docstring) of a long-form summary."""
    df = steps_frame(summary, where=where)
    counts = sorted(int(s) for s in df["steps"].dropna().unique())
    if len(df) and not counts:
        raise DataError(f"{where}: no row of the summary has a step count (column 'steps' is "
                        "empty everywhere), so there is nothing to tabulate per step count")
    runs = list(dict.fromkeys(df["method_run"]))
    panels = list(dict.fromkeys(zip(df["metric"], df["score"])))
    blocks, excluded = [], []
    for (model, variant), dm in df.groupby(["model", "variant"], sort=False):
        for metric, score in panels:
            d = dm[(dm["metric"] == metric) & (dm["score"] == score)]
            if d.empty:
                continue
            dirs = list(dict.fromkeys(d["direction"]))
            ns = sorted({int(v) for v in d["n"]})
            b = StepsBlock(model, variant, metric, score, dirs[0] if len(dirs) == 1 else "",
                           n=ns[0] if len(ns) == 1 else None)
            for run in runs:
                dr = d[d["method_run"] == run]
                if dr.empty:
                    continue
                recs = dr.to_dict("records")
                control = dr["steps"].isna().all()
                by_n = {int(r["steps"]): r for r in recs if not pd.isna(r["steps"])}
                cells = []
                for k in counts:
                    r = recs[0] if control else by_n.get(k)
                    if r is None:
                        cells.append(MISSING)
                        continue
                    text = ci_cell(float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
                    cells.append(text + (f" (n={int(r['n'])})" if b.n is None else ""))
                flags = set(dr["idgi"])
                idgi = "mixed" if len(flags) > 1 else ("yes" if flags.pop() else "no")
                b.rows.append((f"{run} (control)" if control else run, idgi, cells))
            blocks.append(b)
            excluded += _lost(d, f"{model} / {variant}, {metric} {score}")
    return StepsTable(", ".join(dict.fromkeys(df["experiment"])), counts, blocks, excluded)


def _caption(t: StepsTable, legend: str = LEGEND) -> str:
    exp = f"{t.experiment}: " if t.experiment else ""
    return (f"{exp}mean [CI] per method run and number of steps ({legend}; "
            "a control does not depend on steps)")


def render_table(summary: pd.DataFrame) -> render.Table:
    """The ``by_steps`` blocks as a :class:`~xaipipe.report.render.Table`: columns method
    run, IDGI and one per step count under a ``steps`` heading."""
    t = steps_table(summary)
    cols = [render.Column(render.Heading("method run"), "l"),
            render.Column(render.Heading("IDGI"), "c", tex_align="l")]
    cols += [render.Column(render.Heading(str(k))) for k in t.steps]
    blocks = []
    for b in t.blocks:
        n = f"(n = {b.n})" if b.n is not None else ""
        heading = render.Heading(f"{b.model} / {b.variant}: {b.metric} {b.score}", b.direction, n)
        blocks.append(render.Block(heading, [[m, i, *c] for m, i, c in b.rows]))
    return render.Table("by_steps", _caption(t), cols, blocks, t.footnote, t.experiment,
                        group=("steps", 2, 2 + len(t.steps)))


def to_markdown(summary: pd.DataFrame) -> str:
    """A bold heading and a table per (model, variant, metric, score), then the footnote."""
    return render.to_markdown(_markdown_steps(render_table(summary)))


def _markdown_steps(t: render.Table) -> render.Table:
    """Markdown has no spanning heading: its step columns say ``<k> steps``."""
    cols = t.columns[:2] + [render.Column(render.Heading(f"{c.heading.text} steps"))
                            for c in t.columns[2:]]
    return render.Table(t.name, t.caption, cols, t.blocks, t.footnote, t.experiment)


def to_latex(summary: pd.DataFrame) -> str:
    """One booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): a ``steps`` heading over
    the step columns, a ``\\multicolumn`` heading row per block; the footnote follows."""
    return render.to_latex(render_table(summary))


def to_html(summary: pd.DataFrame, style: bool = True) -> str:
    """One ``<table class="xaipipe-summary">`` (a ``<tbody>`` per block) and the footnote;
    ASCII only. ``style``: prepend the summary table's small ``<style>``."""
    return render.to_html(render_table(summary), style=style)


# -- writing ---------------------------------------------------------------------------------
def _long_form(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows in table order (block, row, step count) for the CSV."""
    df = steps_frame(summary)
    def rank(*cols):
        keys = list(zip(*(df[c] for c in cols)))
        first = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return [first[k] for k in keys]

    key = pd.DataFrame({"block": rank("model", "variant"), "panel": rank("metric", "score"),
                        "run": rank("method_run"), "steps": df["steps"].fillna(0).astype(int)},
                       index=df.index)
    return df.loc[key.sort_values(list(key.columns), kind="stable").index]


@TABLES.register(name="by_steps")
def by_steps(summary: pd.DataFrame, out: dict[str, str]) -> None:
    """``out``: format -> path, formats among csv (the long form in table order), md, tex and
    html (the per step count blocks); see the module docstring. Nothing is written when the
    summary cannot be tabulated."""
    table = render_table(summary) if set(out) - {"csv"} else None
    tables = {"md": _markdown_steps(table), "tex": table, "html": table} if table else None
    render.write_table(tables, out, csv=_long_form(summary) if "csv" in out else None,
                       name="by_steps")


# -- the figure ------------------------------------------------------------------------------
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass
class StepsFigure:
    """What :func:`steps_figure` drew: the grid shape, every panel's title (row by row) and
    the legend's labels."""
    rows: list[str]                       # models
    columns: list[tuple[str, str]]        # (metric, score)
    titles: list[str]
    legend: list[str]

    @property
    def n_axes(self) -> int:
        return len(self.rows) * len(self.columns)


def steps_figure(summary: pd.DataFrame, *, suptitle: str | None = None):
    """(matplotlib figure, :class:`StepsFigure`) of the ``vs_steps`` figure (module
    docstring); the caller saves and closes the figure."""
    df = steps_frame(summary, where="vs_steps")
    counts = sorted(int(s) for s in df["steps"].dropna().unique())
    if not counts:
        raise DataError("vs_steps: no row of the summary has a step count (column 'steps' is "
                        "empty everywhere), so there is nothing to draw against steps")
    models = list(dict.fromkeys(df["model"]))
    panels = list(dict.fromkeys(zip(df["metric"], df["score"])))
    variants = list(dict.fromkeys(df["variant"]))
    several = len(variants) > 1
    marker = {v: MARKERS[k % len(MARKERS)] for k, v in enumerate(variants)}
    colour = {m: f"C{k % 10}" for k, m in enumerate(dict.fromkeys(df["method_name"]))}
    runs = {}                                             # run -> (colour, style, control)
    for run, dr in df.groupby("method_run", sort=False):
        control = bool(dr["steps"].isna().all())
        runs[run] = (colour[dr["method_name"].iloc[0]],
                     ":" if control else ("--" if dr["idgi"].all() else "-"), control)
    lo, hi = counts[0] / 2 ** 0.4, counts[-1] * 2 ** 0.4
    ncol = max(1, len(panels))
    fig, axes = plt.subplots(len(models), ncol, figsize=(3.6 * ncol, 2.8 * len(models)),
                             squeeze=False)
    titles = []
    for i, model in enumerate(models):
        for j, (metric, score) in enumerate(panels):
            ax = axes[i, j]
            d = df[(df["model"] == model) & (df["metric"] == metric) & (df["score"] == score)]
            vs = list(dict.fromkeys(d["variant"]))
            for v in vs:
                mk = marker[v] if several else "o"
                for run, dr in d[d["variant"] == v].groupby("method_run", sort=False):
                    c, style, control = runs[run]
                    if control:
                        r = dr.iloc[0]
                        ax.axhline(r["mean"], color=c, linestyle=":", linewidth=1.2)
                        if np.isfinite([r["ci_low"], r["ci_high"]]).all():
                            ax.axhspan(r["ci_low"], r["ci_high"], color=c, alpha=0.08,
                                       linewidth=0)
                        if several:
                            ax.plot(counts, [r["mean"]] * len(counts), linestyle="none",
                                    marker=mk, markersize=3, color=c)
                        continue
                    dr = dr.sort_values("steps")
                    x = dr["steps"].to_numpy(float)
                    y, ylo, yhi = (dr[k].to_numpy(float) for k in ("mean", "ci_low", "ci_high"))
                    ax.plot(x, y, linestyle=style, color=c, marker=mk, markersize=3,
                            linewidth=1.2)
                    if len(x) > 1:
                        ax.fill_between(x, ylo, yhi, color=c, alpha=0.15, linewidth=0)
                    elif np.isfinite([ylo[0], yhi[0]]).all():
                        ax.errorbar(x, y, yerr=[[max(y[0] - ylo[0], 0)], [max(yhi[0] - y[0], 0)]],
                                    color=c, capsize=2, linewidth=1)
            if not np.isfinite(d["mean"].to_numpy(float)).any():     # no row, or every n 0
                ax.text(0.5, 0.5, "(no data)", ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
            ax.set_xscale("log", base=2)
            ax.set_xlim(lo, hi)
            ax.set_xticks(counts)
            ax.set_xticklabels([str(k) for k in counts], fontsize=7)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.tick_params(axis="y", labelsize=7)
            dirs = list(dict.fromkeys(df.loc[(df["metric"] == metric)
                                             & (df["score"] == score), "direction"]))
            title = f"{metric} {score} {ARROW.get(dirs[0], '') if len(dirs) == 1 else ''}"
            title = title.rstrip() + (f" ({vs[0]})" if several and len(vs) == 1 else "")
            ax.set_title(title, fontsize=9)
            titles.append(title)
            if i == len(models) - 1:
                ax.set_xlabel("steps", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{model}\nmean", fontsize=8)
    handles = [Line2D([], [], color=c, linestyle=style, linewidth=1.2,
                      marker=None if control or several else "o", markersize=3,
                      label=f"{run} (control)" if control else run)
               for run, (c, style, control) in runs.items()]
    if several:
        handles += [Line2D([], [], color="0.35", linestyle="none", marker=marker[v],
                           markersize=4, label=f"variant {v}") for v in variants]
    fig.tight_layout(rect=(0, 0, 1, 0.96 if suptitle else 1))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(4, len(handles)), fontsize=8, frameon=False,
               title=f"solid: plain, dashed: IDGI, dotted: control; {LEGEND}",
               title_fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig, StepsFigure(models, panels, titles, [h.get_label() for h in handles])


def steps_panels(summary: pd.DataFrame, paths, *, suptitle: str | None = None) -> StepsFigure:
    """Draw the ``vs_steps`` figure (:func:`steps_figure`) and save it to every path (``.png``,
    ``.pdf``, ``.svg``), each atomically; returns what was drawn."""
    fig, info = steps_figure(summary, suptitle=suptitle)
    _figures.save_figure(fig, paths)    # through the module, so a test can spy on it
    return info


@FIGURES.register(name="vs_steps")
def vs_steps_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Each metric against the number of steps, per model (see :func:`steps_figure`); uses
    only ``inputs.summary``."""
    steps_panels(inputs.summary, paths, suptitle=inputs.experiment or None)
