"""Results per step count (the IDGI study): the table ``by_steps`` and the figure ``vs_steps``.

Both read the experiment's summary, whose rows carry ``method_run`` (the configured method run,
e.g. ``tmlr_ig``), ``method_name`` (the registered method), ``steps`` (empty for methods without
steps) and ``idgi`` (see :meth:`xaipipe.config.Plan.method_info`); a sweep's stores
(``tmlr_ig@8`` … ``tmlr_ig@128``) share one ``method_run``.

``by_steps``: per (model, variant) and (metric, score) a block with one row per method run
(summary order; a plain run and its IDGI twin therefore sit next to each other when the
experiment lists them so), an ``IDGI`` column, and one column per step count with
``mean [ci_low, ci_high]``. A method without steps — the random-map control — is one row
labelled ``(control)`` whose value stands in every step column, so it is beside each count.
Written as CSV (the summary rows of these blocks, long form, with ``method_run``, ``steps`` and
``idgi``: ``pd.read_csv`` and pivot as you like), Markdown, LaTeX (booktabs) and HTML, each
atomically; images left out of an aggregate are listed in a footnote, with the metric's
per-reason counts (``excluded_*`` columns) where it gives them.

``vs_steps``: one panel per (model, metric score): the mean against the number of steps
(log₂ axis) with its CI band, one colour per method (``method_name``), solid for plain and
dashed for IDGI; controls as dotted horizontal lines with a light band.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import DataError
from .figures import BETTER, FIGURES, FigureInputs, _save, plt
from .inputs import check_summary
from .tables import (ARROW, HTML_ARROW, MISSING, TABLES, TEX_ARROW, _cell, _h, _md, _tex,
                     _write_text)
from ..utils import atomic_path

FORMATS = ("csv", "md", "tex", "html")


def steps_frame(summary: pd.DataFrame, where: str = "by_steps") -> pd.DataFrame:
    """The checked summary with ``steps`` numeric (NaN: no steps), ``idgi`` bool and
    ``method_run`` filled in (the store name where absent)."""
    if "steps" not in summary.columns:
        raise DataError(f"{where}: the summary has no 'steps' column (it comes with the "
                        "method runs of the experiment; rebuild the summary)")
    df = check_summary(summary, where=where)
    df["steps"] = pd.to_numeric(df["steps"], errors="coerce")
    idgi = df["idgi"] if "idgi" in df else False
    df["idgi"] = pd.Series(idgi, index=df.index).astype(str).str.lower().isin(["true", "1"])
    run = df["method_run"] if "method_run" in df else df["method"]
    df["method_run"] = pd.Series(run, index=df.index).astype(str).where(
        pd.Series(run, index=df.index).notna(), df["method"])
    if "method_name" not in df:
        df["method_name"] = df["method_run"]
    return df


def _blocks(df: pd.DataFrame):
    """[(model, variant, metric, score, direction, rows, step counts, excluded notes)]."""
    counts = sorted(int(s) for s in df["steps"].dropna().unique())
    out = []
    for (model, variant, metric, score), d in df.groupby(
            ["model", "variant", "metric", "score"], sort=False):
        rows, notes = [], []
        for run, dr in d.groupby("method_run", sort=False):
            control = dr["steps"].isna().all()
            recs = dr.to_dict("records")
            by_n = {int(r["steps"]): r for r in recs if not math.isnan(r["steps"])}
            cells = []
            for n in counts:
                r = recs[0] if control else by_n.get(n)
                cells.append(MISSING if r is None else
                             _cell(float(r["mean"]), float(r["ci_low"]), float(r["ci_high"])))
            label = f"{run} (control)" if control else run
            rows.append((label, "yes" if bool(dr["idgi"].iloc[0]) else "no", cells))
            for r in recs:
                if int(r["excluded"]):
                    why = [f"{c[len('excluded_'):]} {int(r[c])}" for c in dr.columns
                           if c.startswith("excluded_") and pd.notna(r[c]) and int(r[c])]
                    at = "" if control else f" at {int(r['steps'])} steps"
                    notes.append(f"{run}{at}: {int(r['excluded'])}"
                                 + (f" ({', '.join(why)})" if why else ""))
        ns = sorted({int(v) for v in d["n"]})
        out.append(dict(model=model, variant=variant, metric=metric, score=score,
                        direction=d["direction"].iloc[0], rows=rows, counts=counts,
                        n=ns[0] if len(ns) == 1 else None, notes=notes))
    return out


def _heading(b, arrows=ARROW) -> str:
    n = f", n = {b['n']}" if b["n"] is not None else ""
    return (f"{b['model']} / {b['variant']}: {b['metric']} {b['score']} "
            f"{arrows.get(b['direction'], '')}{n}").replace("  ", " ")


def to_markdown(df: pd.DataFrame) -> str:
    blocks = _blocks(df)
    if not blocks:
        return "(no results)\n"
    out = ["**mean [95% CI] per number of steps (↑ higher is better, ↓ lower is better; a "
           "control does not depend on steps)**", ""]
    for b in blocks:
        out += [f"**{_md(_heading(b))}**", "",
                "| method | IDGI | " + " | ".join(f"{n} steps" for n in b["counts"]) + " |",
                "| :--- | :---: | " + " | ".join("---:" for _ in b["counts"]) + " |"]
        out += ["| " + " | ".join(_md(x) for x in [m, i, *c]) + " |" for m, i, c in b["rows"]]
        if b["notes"]:
            out += ["", "Images excluded: " + "; ".join(b["notes"]) + "."]
        out.append("")
    return "\n".join(out)


def to_latex(df: pd.DataFrame) -> str:
    blocks = _blocks(df)
    out = [r"% xaipipe by_steps table (needs \usepackage{booktabs})"]
    if not blocks:
        return "\n".join(out + [r"\begin{tabular}{l}", "(no results)", r"\end{tabular}", ""])
    counts = blocks[0]["counts"]
    k = len(counts) + 2
    out += [r"\begin{tabular}{lc" + "c" * len(counts) + "}", r"\toprule",
            "method & IDGI & " + " & ".join(f"{n} steps" for n in counts) + r" \\"]
    notes = []
    for b in blocks:
        head = _tex(_heading(b, {})) + " " + TEX_ARROW.get(b["direction"], "")
        out += [r"\midrule", rf"\multicolumn{{{k}}}{{l}}{{\textit{{{head}}}}} \\"]
        out += [" & ".join(_tex(x) for x in [m, i, *c]) + r" \\" for m, i, c in b["rows"]]
        notes += [f"{_heading(b, {})}: {n}" for n in b["notes"]]
    out += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        out.append(r"\par\smallskip{\footnotesize Images excluded: "
                   + _tex("; ".join(notes)) + r".\par}")
    return "\n".join(out) + "\n"


def to_html(df: pd.DataFrame) -> str:
    blocks = _blocks(df)
    out = ['<div class="xaipipe-table">']
    if not blocks:
        return "\n".join(out + ["<p>(no results)</p>", "</div>", ""])
    counts = blocks[0]["counts"]
    k = len(counts) + 2
    out += ['<table class="xaipipe-summary">',
            "<caption>mean [95% CI] per number of steps (a control does not depend on steps)"
            "</caption>",
            "<thead><tr><th>method</th><th>IDGI</th>"
            + "".join(f"<th>{n} steps</th>" for n in counts) + "</tr></thead>"]
    notes = []
    for b in blocks:
        out.append(f'<tbody><tr><th colspan="{k}">{_h(_heading(b, HTML_ARROW))}</th></tr>'
                   .replace("&amp;uarr;", "&uarr;").replace("&amp;darr;", "&darr;"))
        out += ["<tr>" + "".join(f"<td>{_h(x)}</td>" for x in [m, i, *c]) + "</tr>"
                for m, i, c in b["rows"]]
        out.append("</tbody>")
        notes += [f"{_heading(b, {})}: {n}" for n in b["notes"]]
    out.append("</table>")
    if notes:
        out.append(f'<p class="xaipipe-note">{_h("Images excluded: " + "; ".join(notes))}</p>')
    out.append("</div>")
    return "\n".join(out) + "\n"


@TABLES.register(name="by_steps")
def by_steps(summary: pd.DataFrame, out: dict[str, str]) -> None:
    """``out``: format -> path among csv, md, tex, html (see the module docstring)."""
    unknown = sorted(set(out) - set(FORMATS))
    if unknown:
        raise ValueError(f"by_steps table: unknown output format(s) {unknown}")
    df = steps_frame(summary)
    if "csv" in out:
        with atomic_path(out["csv"]) as tmp:
            df.to_csv(tmp, index=False)
    for fmt, fn in (("md", to_markdown), ("tex", to_latex), ("html", to_html)):
        if fmt in out:
            _write_text(out[fmt], fn(df))


def steps_panels(summary: pd.DataFrame, paths, *, suptitle: str | None = None):
    """Draw the ``vs_steps`` figure (module docstring) to ``paths``; returns the number of
    panels drawn."""
    df = steps_frame(summary, where="vs_steps")
    models = list(dict.fromkeys(df["model"])) or [""]
    panels = list(dict.fromkeys(zip(df["metric"], df["score"])))
    names = list(dict.fromkeys(df["method_name"]))
    colour = {m: f"C{k % 10}" for k, m in enumerate(names)}
    fig, axes = plt.subplots(len(models), max(1, len(panels)),
                             figsize=(3.8 * max(1, len(panels)), 3.0 * len(models)),
                             squeeze=False)
    counts = sorted(int(s) for s in df["steps"].dropna().unique())
    drawn = 0
    for i, model in enumerate(models):
        for j, (metric, score) in enumerate(panels):
            ax = axes[i, j]
            d = df[(df["model"] == model) & (df["metric"] == metric) & (df["score"] == score)]
            variants = list(dict.fromkeys(d["variant"]))
            for v in variants:
                for run, dr in d[d["variant"] == v].groupby("method_run", sort=False):
                    style = "--" if bool(dr["idgi"].iloc[0]) else "-"
                    c = colour[dr["method_name"].iloc[0]]
                    label = run if len(variants) == 1 else f"{run} ({v})"
                    if dr["steps"].isna().all():
                        r = dr.iloc[0]
                        ax.axhline(r["mean"], color=c, linestyle=":", label=label)
                        if counts and np.isfinite([r["ci_low"], r["ci_high"]]).all():
                            ax.axhspan(r["ci_low"], r["ci_high"], color=c, alpha=0.08)
                        continue
                    dr = dr.sort_values("steps")
                    ax.plot(dr["steps"], dr["mean"], style, color=c, marker="o",
                            markersize=3, label=label)
                    ax.fill_between(dr["steps"].to_numpy(float), dr["ci_low"].to_numpy(float),
                                    dr["ci_high"].to_numpy(float), color=c, alpha=0.15)
            if counts:
                ax.set_xscale("log", base=2)
                ax.set_xticks(counts)
                ax.set_xticklabels([str(n) for n in counts], fontsize=7)
            ax.set_xlabel("steps", fontsize=8)
            direction = d["direction"].iloc[0] if len(d) else ""
            ax.set_title(f"{model}: {metric} {score} {ARROW.get(direction, '')}"
                         + (f"\n({BETTER[direction]})" if direction in BETTER else ""),
                         fontsize=8)
            drawn += 1
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, -0.02 - 0.03 * ((len(labels) - 1) // 4)))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 4) if labels else 0, 1, 1))
    _save(fig, paths)
    return drawn


@FIGURES.register(name="vs_steps")
def vs_steps_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Each metric against the number of steps (see :func:`steps_panels`)."""
    steps_panels(inputs.summary, paths, suptitle=inputs.experiment or None)
