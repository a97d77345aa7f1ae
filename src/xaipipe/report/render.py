"""The one table renderer of the reports: a :class:`Table` (columns, blocks of rows under a
heading, a caption and a footnote) as Markdown, LaTeX (booktabs) or HTML, and the writer that
renders every requested format first and then writes each file atomically.

Every report table (the summary pivot, the IDGI study's ``by_steps``, the StartGrad tables)
builds a :class:`Table` and calls :func:`write_table`; none renders text itself.

- Markdown: a bold caption, then per block a bold heading and a pipe table; the footnote.
- LaTeX: one ``tabular`` (needs ``\\usepackage{booktabs}``) with a ``\\multicolumn`` heading
  row per block and an optional heading spanning a group of columns; the footnote follows.
- HTML: one ``<table class="xaipipe-summary">`` with a ``<tbody>`` per block, pure ASCII
  (non-ASCII as character references), optionally with a small scoped ``<style>``.
"""
from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field

import pandas as pd

from ..utils import atomic_path

FORMATS = ("csv", "md", "tex", "html")
DIGITS = 3
MISSING = "–"
ARROWS = {"md": {"higher": "↑", "lower": "↓"},
          "tex": {"higher": r"$\uparrow$", "lower": r"$\downarrow$"},
          "html": {"higher": "&uarr;", "lower": "&darr;"}}
ARROW = ARROWS["md"]
LEGEND = "↑ higher is better, ↓ lower is better"


# -- numbers -----------------------------------------------------------------------------------
def number(x: float, small: bool = False) -> str:
    """DIGITS decimals, or DIGITS significant digits in scientific form when ``small``."""
    return f"{x:.{DIGITS - 1}e}" if small else f"{x:.{DIGITS}f}"


def ci_cell(mean: float, lo: float, hi: float) -> str:
    """``mean [lo, hi]`` with DIGITS decimals, or DIGITS significant digits when every value
    is below 0.01 (e.g. stability MSEs of maps divided by their sums), so nothing shows as 0;
    ``n/a`` for a missing mean."""
    if not math.isfinite(mean):
        return "n/a"
    vals = [v for v in (mean, lo, hi) if math.isfinite(v)]
    small = 0 < max(abs(v) for v in vals) < 0.01
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{number(mean, small)} [{number(lo, small)}, {number(hi, small)}]"
    return number(mean, small)


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heading:
    """Text with an optional direction arrow (``higher``/``lower``) and a trailing note."""
    text: str
    direction: str = ""
    note: str = ""


@dataclass(frozen=True)
class Column:
    heading: Heading
    align: str = "r"                      # l, c or r (Markdown)
    tex_align: str | None = None          # LaTeX: default l for l, c for the others


@dataclass
class Block:
    heading: Heading | None
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Table:
    """``columns[0]`` heads the row labels. ``group``: (label, first, stop) a heading spanning
    the columns ``first:stop`` above the column headings (LaTeX and HTML; Markdown shows only
    the column headings). ``name``: the kind of table, for the LaTeX comment line."""
    name: str
    caption: str
    columns: list[Column]
    blocks: list[Block]
    footnote: str = ""
    experiment: str = ""
    group: tuple[str, int, int] | None = None


# -- escaping ----------------------------------------------------------------------------------
def md_text(text) -> str:
    return str(text).replace("|", r"\|")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        MISSING: "--"}


def tex_text(text) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def html_text(text) -> str:
    """HTML-escaped and pure ASCII (non-ASCII as character references), so the table reads
    the same in any encoding: a data: URI, a JSON string, a docutils ``raw`` block."""
    return _html.escape(str(text)).encode("ascii", "xmlcharrefreplace").decode("ascii")


_ESCAPE = {"md": md_text, "tex": tex_text, "html": html_text}


def heading_text(h: Heading, fmt: str) -> str:
    """``text arrow note`` in format ``fmt``, each part escaped and the arrow of the format."""
    esc = _ESCAPE[fmt]
    parts = [esc(h.text), ARROWS[fmt].get(h.direction, "") if h.direction else "",
             esc(h.note) if h.note else ""]
    return " ".join(p for p in parts if p)


# -- renderers ---------------------------------------------------------------------------------
_MD_ALIGN = {"l": ":---", "c": ":---:", "r": "---:"}


def to_markdown(t: Table) -> str:
    if not t.blocks:
        return "(no results)\n"
    out = [f"**{md_text(t.caption)}**", ""]
    header = "| " + " | ".join(heading_text(c.heading, "md") for c in t.columns) + " |"
    rule = "| " + " | ".join(_MD_ALIGN[c.align] for c in t.columns) + " |"
    for b in t.blocks:
        if b.heading is not None:
            out += [f"**{heading_text(b.heading, 'md')}**", ""]
        out += [header, rule]
        out += ["| " + " | ".join(md_text(x) for x in row) + " |" for row in b.rows]
        out.append("")
    if t.footnote:
        out += [md_text(t.footnote), ""]
    return "\n".join(out)


def to_latex(t: Table) -> str:
    name = f"% xaipipe {t.name} table{': ' + t.experiment if t.experiment else ''} "
    out = [name + r"(needs \usepackage{booktabs})",
           "% " + t.caption.replace(LEGEND, "arrows: which direction is better")]
    if not t.blocks:
        return "\n".join(out + [r"\begin{tabular}{l}", "(no results)", r"\end{tabular}", ""])
    k = len(t.columns)
    spec = "".join(c.tex_align or ("l" if c.align == "l" else "c") for c in t.columns)
    out += [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    if t.group is not None:
        label, a, b = t.group
        out += [" &" * a + " " + rf"\multicolumn{{{b - a}}}{{c}}{{{tex_text(label)}}}"
                + " &" * (k - b) + r" \\", rf"\cmidrule(lr){{{a + 1}-{b}}}"]
    out.append(" & ".join(heading_text(c.heading, "tex") for c in t.columns) + r" \\")
    for b in t.blocks:
        out.append(r"\midrule")
        if b.heading is not None:
            out.append(rf"\multicolumn{{{k}}}{{l}}{{\textit{{{heading_text(b.heading, 'tex')}}}}}"
                       r" \\")
        out += [" & ".join(tex_text(x) for x in row) + r" \\" for row in b.rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.footnote:
        out.append(r"\par\smallskip{\footnotesize " + tex_text(t.footnote) + r"\par}")
    return "\n".join(out) + "\n"


STYLE = """<style>
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


def to_html(t: Table, style: bool = True) -> str:
    out = ['<div class="xaipipe-table">'] + ([STYLE] if style else [])
    if not t.blocks:
        return "\n".join(out + ["<p>(no results)</p>", "</div>", ""])
    k = len(t.columns)
    out += ['<table class="xaipipe-summary">', f"<caption>{html_text(t.caption)}</caption>"]
    if t.group is None:
        out.append("<thead><tr>" + "".join(f"<th>{heading_text(c.heading, 'html')}</th>"
                                           for c in t.columns) + "</tr></thead>")
    else:
        label, a, b = t.group
        first = "".join(f'<th rowspan="2">{heading_text(c.heading, "html")}</th>'
                        for c in t.columns[:a])
        out += [f"<thead><tr>{first}<th colspan=\"{b - a}\">{html_text(label)}</th></tr>",
                "<tr>" + "".join(f"<th>{heading_text(c.heading, 'html')}</th>"
                                 for c in t.columns[a:b]) + "</tr></thead>"]
    for b in t.blocks:
        head = "" if b.heading is None else \
            f'<tr><th colspan="{k}">{heading_text(b.heading, "html")}</th></tr>'
        out.append(f"<tbody>{head}")
        out += ["<tr>" + "".join(f"<td>{html_text(x)}</td>" for x in row) + "</tr>"
                for row in b.rows]
        out.append("</tbody>")
    out.append("</table>")
    if t.footnote:
        out.append(f'<p class="xaipipe-note">{html_text(t.footnote)}</p>')
    out.append("</div>")
    return "\n".join(out) + "\n"


RENDERERS = {"md": to_markdown, "tex": to_latex, "html": to_html}


def flat_table(df: pd.DataFrame, caption: str, name: str = "flat", fmt=None) -> Table:
    """A one-block table of a flat frame: one column per frame column, cells formatted by
    ``fmt`` (default: floats with 3 significant digits, NaN as ``–``)."""
    fmt = fmt or _flat_cell
    cols = [Column(Heading(str(c)), "l" if i == 0 else "r") for i, c in enumerate(df.columns)]
    rows = [[fmt(v) for v in r] for r in df.itertuples(index=False)]
    return Table(name, caption, cols, [Block(None, rows)] if rows else [])


def _flat_cell(v) -> str:
    if isinstance(v, float) or hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f":
        return MISSING if not math.isfinite(float(v)) else f"{float(v):.3g}"
    return str(v)


# -- writing -----------------------------------------------------------------------------------
def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_table(table: Table | dict | None, out: dict[str, str], *,
                csv: pd.DataFrame | None = None, name: str = "table",
                style: bool = True) -> None:
    """Write ``out`` (format -> path; formats among csv, md, tex, html): ``csv`` the frame
    given, the others ``table`` rendered (or ``table[fmt]``, a table per format). Every text is
    rendered before anything is written, so a table that cannot be rendered leaves no file
    behind; each file is written atomically."""
    unknown = sorted(set(out) - set(FORMATS))
    if unknown:
        raise ValueError(f"{name} table: unknown output format(s) {unknown}; "
                         f"known: {list(FORMATS)}")
    texts = {}
    for fmt in out:
        if fmt == "csv":
            if csv is None:
                raise ValueError(f"{name} table: no CSV frame given")
            texts[fmt] = csv.to_csv(index=False)
        else:
            t = table[fmt] if isinstance(table, dict) else table
            texts[fmt] = to_html(t, style=style) if fmt == "html" else RENDERERS[fmt](t)
    for fmt, text in texts.items():
        write_text(out[fmt], text)
