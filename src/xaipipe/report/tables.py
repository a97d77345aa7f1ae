"""Report tables, registered by name (config: ``tables: [summary]``).

A table builder is ``builder(summary, out)``: ``summary`` is the experiment's long-form
summary (see :mod:`xaipipe.report.inputs`), ``out`` maps a format (``csv``, ``md``, ``tex``,
``html``) to the path to write; each file is written atomically.

The ``summary`` table writes the long form as CSV and the methods x metrics pivot as Markdown,
LaTeX and HTML: one block of rows per (model, variant), one row per method (in the order the
methods first appear), one column per (metric, score) headed ``metric score ↑`` (higher is
better) or ``↓`` (lower is better), cells ``mean [ci_low, ci_high]`` with 3 decimals. The
number of images n is given once per block when it is the same everywhere in the block, else
in an ``n`` row (per column) and, where it varies inside a column, in each cell. Images left
out of an aggregate (``excluded`` > 0) are listed in a footnote.
"""
from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field

import pandas as pd

from ..errors import DataError
from ..registry import Registry
from ..utils import atomic_path
from .inputs import check_summary

TABLES = Registry("table", package="xaipipe.report")


def build_table(builder, summary: pd.DataFrame, out: dict[str, str], per_image=None) -> None:
    """Call a registered table builder: ``builder(summary, out)``, or, for a builder that
    declares a ``per_image`` parameter (tables of single images: paired tests, speed-ups),
    ``builder(summary, out, per_image=<path of per_image.parquet>)``."""
    import inspect
    if "per_image" in inspect.signature(builder).parameters:
        builder(summary, out, per_image=per_image)
    else:
        builder(summary, out)

FORMATS = ("csv", "md", "tex", "html")
DIGITS = 3
ARROW = {"higher": "↑", "lower": "↓"}
TEX_ARROW = {"higher": r"$\uparrow$", "lower": r"$\downarrow$"}
HTML_ARROW = {"higher": "&uarr;", "lower": "&darr;"}
LEGEND = "↑ higher is better, ↓ lower is better"


# -- the pivot (format independent) -------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    metric: str
    score: str
    direction: str

    def label(self, arrows=ARROW) -> str:
        return f"{self.metric} {self.score} {arrows.get(self.direction, '')}".rstrip()


@dataclass
class Block:
    model: str
    variant: str
    dataset: str
    rows: list[tuple[str, list[str]]] = field(default_factory=list)   # method, cells
    n: int | None = None                  # one n for the whole block, else None
    n_row: list[str] | None = None        # per column n ("" where the column has none)

    @property
    def title(self) -> str:
        return f"{self.model} / {self.variant}"

    @property
    def heading(self) -> str:
        return self.title + (f" (n = {self.n})" if self.n is not None else "")


@dataclass
class Pivot:
    experiment: str
    columns: list[Column]
    blocks: list[Block]
    excluded: list[str]                   # footnote items, empty when nothing was left out

    @property
    def footnote(self) -> str:
        if not self.excluded:
            return ""
        return "Images excluded (left out of the mean): " + "; ".join(self.excluded) + "."


def _num(x: float, small: bool = False) -> str:
    return f"{x:.{DIGITS - 1}e}" if small else f"{x:.{DIGITS}f}"


def _cell(mean: float, lo: float, hi: float) -> str:
    """``mean [lo, hi]`` with DIGITS decimals, or DIGITS significant digits when every value
    is below 0.01 (e.g. stability MSEs of maps divided by their sums), so nothing shows as 0."""
    if not math.isfinite(mean):
        return "n/a"
    vals = [v for v in (mean, lo, hi) if math.isfinite(v)]
    small = 0 < max(abs(v) for v in vals) < 0.01
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{_num(mean, small)} [{_num(lo, small)}, {_num(hi, small)}]"
    return _num(mean, small)


MISSING = "–"


def pivot(summary: pd.DataFrame) -> Pivot:
    """The methods x metrics pivot of a long-form summary."""
    df = check_summary(summary)
    cell_keys = ["model", "variant", "method", "metric", "score"]
    dup = df.duplicated(cell_keys, keep=False)
    if dup.any():
        first = df.loc[dup, cell_keys].iloc[0].to_dict()
        raise DataError(f"summary: several rows for the same cell {first} "
                        "(one row per model, variant, method, metric and score)")
    experiments = list(dict.fromkeys(df["experiment"]))
    methods = list(dict.fromkeys(df["method"]))
    columns: list[Column] = []
    seen: dict[tuple[str, str], Column] = {}
    for metric, score, direction in zip(df["metric"], df["score"], df["direction"]):
        if (metric, score) not in seen:
            seen[metric, score] = Column(metric, score, direction)
            columns.append(seen[metric, score])
    blocks, excluded = [], []
    for (model, variant), d in df.groupby(["model", "variant"], sort=False):
        block = Block(model, variant, ", ".join(dict.fromkeys(d["dataset"])))
        cells = {(r.method, r.metric, r.score): r for r in d.itertuples(index=False)}
        ns = {c: sorted({int(cells[m, c.metric, c.score].n) for m in methods
                         if (m, c.metric, c.score) in cells}) for c in columns}
        every_n = sorted({n for v in ns.values() for n in v})
        if len(every_n) == 1:
            block.n = every_n[0]
        else:
            block.n_row = [str(v[0]) if len(v) == 1 else ("varies" if v else "")
                           for v in ns.values()]
        for m in methods:
            if not any((m, c.metric, c.score) in cells for c in columns):
                continue
            row = []
            for c in columns:
                r = cells.get((m, c.metric, c.score))
                if r is None:
                    row.append(MISSING)
                    continue
                text = _cell(float(r.mean), float(r.ci_low), float(r.ci_high))
                if block.n is None and len(ns[c]) > 1:
                    text += f" (n={int(r.n)})"
                row.append(text)
            block.rows.append((m, row))
        blocks.append(block)
        # footnote: per (metric, score), one item when every method lost the same images
        for c in columns:
            rs = [cells[m, c.metric, c.score] for m in methods if (m, c.metric, c.score) in cells]
            counts = [int(r.excluded) for r in rs]
            if not any(counts):
                continue
            where = f"{block.title}, {c.metric} {c.score}"
            if len(set(counts)) == 1 and len(rs) > 1:
                excluded.append(f"{where}: {counts[0]} (every method)")
            else:
                excluded.extend(f"{where}, {r.method}: {k}" for r, k in zip(rs, counts) if k)
    return Pivot(", ".join(experiments), columns, blocks, excluded)


def _title(p: Pivot) -> str:
    exp = f"{p.experiment}: " if p.experiment else ""
    return f"{exp}mean [CI] per method and metric ({LEGEND})"


# -- Markdown ---------------------------------------------------------------------------------
def _md(text: str) -> str:
    return str(text).replace("|", r"\|")


def to_markdown(summary: pd.DataFrame) -> str:
    """The pivot as Markdown: a bold heading and a table per (model, variant)."""
    p = pivot(summary)
    if not p.blocks:
        return "(no results)\n"
    out = [f"**{_md(_title(p))}**", ""]
    header = "| method | " + " | ".join(_md(c.label()) for c in p.columns) + " |"
    rule = "| :--- | " + " | ".join("---:" for _ in p.columns) + " |"
    for b in p.blocks:
        out += [f"**{_md(b.heading)}**", "", header, rule]
        out += ["| " + " | ".join(_md(x) for x in [m, *cells]) + " |" for m, cells in b.rows]
        if b.n_row is not None:
            out.append("| n | " + " | ".join(b.n_row) + " |")
        out.append("")
    if p.footnote:
        out += [p.footnote, ""]
    return "\n".join(out)


# -- LaTeX --------------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        MISSING: "--"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame) -> str:
    """The pivot as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): a
    ``\\multicolumn`` heading row per (model, variant); the footnote follows the tabular."""
    p = pivot(summary)
    k = len(p.columns) + 1
    out = [f"% xaipipe summary table{': ' + p.experiment if p.experiment else ''} "
           r"(needs \usepackage{booktabs})",
           f"% {_title(p).replace(LEGEND, 'arrows: which direction is better')}"]
    if not p.blocks:
        return "\n".join(out + [r"\begin{tabular}{l}", "(no results)", r"\end{tabular}", ""])
    out += [r"\begin{tabular}{l" + "c" * len(p.columns) + "}", r"\toprule",
            "method & " + " & ".join(_tex(f"{c.metric} {c.score}") + " "
                                     + TEX_ARROW.get(c.direction, "") for c in p.columns)
            + r" \\"]
    for b in p.blocks:
        out += [r"\midrule", rf"\multicolumn{{{k}}}{{l}}{{\textit{{{_tex(b.heading)}}}}} \\"]
        out += [" & ".join(_tex(x) for x in [m, *cells]) + r" \\" for m, cells in b.rows]
        if b.n_row is not None:
            out.append("$n$ & " + " & ".join(_tex(x) for x in b.n_row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if p.footnote:
        out += [r"\par\smallskip{\footnotesize " + _tex(p.footnote) + r"\par}"]
    return "\n".join(out) + "\n"


# -- HTML ----------------------------------------------------------------------------------------
_STYLE = """<style>
div.xaipipe-table { max-width: 100%; overflow-x: auto; }
table.xaipipe-summary { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
table.xaipipe-summary th, table.xaipipe-summary td { padding: 0.2rem 0.6rem; }
table.xaipipe-summary thead th { border-bottom: 2px solid currentColor; text-align: center; }
table.xaipipe-summary tbody th { text-align: left; font-style: italic; padding-top: 0.5rem;
  border-bottom: 1px solid currentColor; }
table.xaipipe-summary td { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.xaipipe-summary td:first-child { text-align: left; }
table.xaipipe-summary caption { caption-side: top; text-align: left; font-size: 0.8rem; }
p.xaipipe-note { font-size: 0.8rem; }
</style>"""


def _h(text: str) -> str:
    """HTML-escaped and pure ASCII (non-ASCII as character references), so the table reads
    the same in any encoding: a data: URI, a JSON string, a docutils ``raw`` block."""
    return _html.escape(str(text)).encode("ascii", "xmlcharrefreplace").decode("ascii")


def to_html(summary: pd.DataFrame, style: bool = True) -> str:
    """The pivot as one HTML ``<table class="xaipipe-summary">`` (a ``<tbody>`` per
    (model, variant)) with the footnote below it; ASCII only (arrows as ``&uarr;``/
    ``&darr;``). ``style``: prepend a small ``<style>`` scoped to that class."""
    p = pivot(summary)
    out = ['<div class="xaipipe-table">'] + ([_STYLE] if style else [])
    if not p.blocks:
        return "\n".join(out + ["<p>(no results)</p>", "</div>", ""])
    k = len(p.columns) + 1
    out += ['<table class="xaipipe-summary">', f"<caption>{_h(_title(p))}</caption>",
            "<thead><tr><th>method</th>"
            + "".join(f"<th>{_h(c.metric + ' ' + c.score)} {HTML_ARROW.get(c.direction, '')}"
                      "</th>" for c in p.columns)
            + "</tr></thead>"]
    for b in p.blocks:
        out.append(f'<tbody><tr><th colspan="{k}">{_h(b.heading)}</th></tr>')
        out += ["<tr>" + "".join(f"<td>{_h(x)}</td>" for x in [m, *cells]) + "</tr>"
                for m, cells in b.rows]
        if b.n_row is not None:
            out.append("<tr><td>n</td>" + "".join(f"<td>{_h(x)}</td>" for x in b.n_row)
                       + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    if p.footnote:
        out.append(f'<p class="xaipipe-note">{_h(p.footnote)}</p>')
    out.append("</div>")
    return "\n".join(out) + "\n"


# -- writing -------------------------------------------------------------------------------------
def _write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write(summary: pd.DataFrame, out: dict[str, str], name: str = "table") -> None:
    unknown = sorted(set(out) - set(FORMATS))
    if unknown:
        raise ValueError(f"{name} table: unknown output format(s) {unknown}; "
                         f"known: {list(FORMATS)}")
    check_summary(summary, where=f"{name} table")
    if "csv" in out:
        with atomic_path(out["csv"]) as tmp:
            summary.to_csv(tmp, index=False)
    render = {"md": to_markdown, "tex": to_latex, "html": to_html}
    for fmt, fn in render.items():
        if fmt in out:
            _write_text(out[fmt], fn(summary))


@TABLES.register(name="summary")
def summary(summary: pd.DataFrame, out: dict[str, str]) -> None:
    """``out``: format -> path, formats among csv (the long form as given), md, tex and html
    (the methods x metrics pivot)."""
    write(summary, out, name="summary")
