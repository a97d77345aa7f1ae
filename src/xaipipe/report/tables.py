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

from dataclasses import dataclass, field

import pandas as pd

from ..errors import DataError
from ..registry import Registry
from . import render
from .inputs import check_summary
from .render import ARROW, LEGEND, MISSING, ci_cell

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


FORMATS = render.FORMATS


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
                text = ci_cell(float(r.mean), float(r.ci_low), float(r.ci_high))
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


def pivot_table(summary: pd.DataFrame) -> render.Table:
    """The pivot as a :class:`~xaipipe.report.render.Table`: a block per (model, variant),
    an ``n`` row where the block's n differs between columns, the footnote of exclusions."""
    p = pivot(summary)
    cols = [render.Column(render.Heading("method"), "l")] + [
        render.Column(render.Heading(f"{c.metric} {c.score}", c.direction)) for c in p.columns]
    blocks = []
    for b in p.blocks:
        rows = [[m, *cells] for m, cells in b.rows]
        if b.n_row is not None:
            rows.append(["n", *b.n_row])
        note = f"(n = {b.n})" if b.n is not None else ""
        blocks.append(render.Block(render.Heading(b.title, note=note), rows))
    return render.Table("summary", _title(p), cols, blocks, p.footnote, p.experiment)


def to_markdown(summary: pd.DataFrame) -> str:
    """The pivot as Markdown: a bold heading and a table per (model, variant)."""
    return render.to_markdown(pivot_table(summary))


def to_latex(summary: pd.DataFrame) -> str:
    """The pivot as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): a
    ``\\multicolumn`` heading row per (model, variant); the footnote follows the tabular."""
    return render.to_latex(pivot_table(summary))


def to_html(summary: pd.DataFrame, style: bool = True) -> str:
    """The pivot as one HTML ``<table class="xaipipe-summary">`` (a ``<tbody>`` per
    (model, variant)) with the footnote below it; ASCII only (arrows as ``&uarr;``/
    ``&darr;``). ``style``: prepend a small ``<style>`` scoped to that class."""
    return render.to_html(pivot_table(summary), style=style)


def write(summary: pd.DataFrame, out: dict[str, str], name: str = "table") -> None:
    """csv (the long form as given) and the pivot as md, tex and html (:func:`pivot_table`),
    every format rendered before any file is written."""
    unknown = sorted(set(out) - set(FORMATS))
    if unknown:
        raise ValueError(f"{name} table: unknown output format(s) {unknown}; "
                         f"known: {list(FORMATS)}")
    check_summary(summary, where=f"{name} table")
    table = pivot_table(summary) if set(out) - {"csv"} else None
    render.write_table(table, out, csv=summary, name=name)


@TABLES.register(name="summary")
def summary(summary: pd.DataFrame, out: dict[str, str]) -> None:
    """``out``: format -> path, formats among csv (the long form as given), md, tex and html
    (the methods x metrics pivot)."""
    write(summary, out, name="summary")
