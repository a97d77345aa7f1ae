"""Report tables and figures: pivot contents, files written, panel titles, and the
``snakemake --report`` page showing the methods x metrics table."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaipipe.errors import ConfigError, DataError
from xaipipe.report import (FIGURES, SUMMARY_COLUMNS, TABLES, FigureInputs, bar_panels,
                            read_summary, saliency_grid, to_html, to_latex, to_markdown)
from xaipipe.report import figures as figures_mod

ROOT = Path(__file__).resolve().parents[3]   # the repository


def long_frame(excluded=0, n_random_deletion=100):
    """2 variants x 3 methods x (insertion auc ↑, deletion auc ↓, stability mse ↓)."""
    rows = []
    metrics = [("insertion", "auc", "higher"), ("deletion", "auc", "lower"),
               ("stability", "mse", "lower")]
    for v, shift in [("original", 0.0), ("jpeg", 0.1)]:
        for k, m in enumerate(["random", "saliency", "integrated_gradients"]):
            for metric, score, d in metrics:
                odd = metric == "deletion" and m == "random" and v == "jpeg"
                mean = 0.1 * k + 0.2 + shift + (0.01 if metric == "deletion" else 0)
                rows.append(dict(experiment="demo", dataset="shapes", model="shapes_resnet18",
                                 metric=metric, method=m, variant=v, score=score,
                                 n=n_random_deletion if odd else 100, mean=mean,
                                 ci_low=mean - 0.02, ci_high=mean + 0.03, direction=d,
                                 excluded=excluded if odd else 0))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def md_rows(md):
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith("|")]


# -- tables ----------------------------------------------------------------------------------
def test_markdown_pivot_arrows_cells_and_order():
    md = to_markdown(long_frame())
    header = md_rows(md)[0]
    assert header == ["method", "insertion auc ↑", "deletion auc ↓", "stability mse ↓"]
    assert "**shapes_resnet18 / original (n = 100)**" in md
    assert "**shapes_resnet18 / jpeg (n = 100)**" in md
    rows = [r for r in md_rows(md) if r[0] not in ("method", ":---")]
    # methods as first seen, cells "mean [lo, hi]" with 3 decimals
    assert [r[0] for r in rows[:3]] == ["random", "saliency", "integrated_gradients"]
    assert rows[1][1:] == ["0.300 [0.280, 0.330]", "0.310 [0.290, 0.340]",
                           "0.300 [0.280, 0.330]"]
    assert rows[3][1] == "0.300 [0.280, 0.330]"          # jpeg block, random
    assert "excluded" not in md.lower() and "(n=" not in md


def test_excluded_footnote_and_varying_n():
    md = to_markdown(long_frame(excluded=3, n_random_deletion=97))
    assert "Images excluded (left out of the mean): shapes_resnet18 / jpeg, deletion auc, " \
           "random: 3." in md
    assert "**shapes_resnet18 / jpeg**" in md             # no single n for that block
    assert "0.310 [0.290, 0.340] (n=97)" in md and "(n=100)" in md
    assert "| n | 100 | varies | 100 |" in md


def test_excluded_every_method_is_one_item():
    df = long_frame()
    df.loc[df["metric"] == "insertion", "excluded"] = 2
    md = to_markdown(df)
    assert "shapes_resnet18 / original, insertion auc: 2 (every method)" in md
    assert "shapes_resnet18 / jpeg, insertion auc: 2 (every method)" in md


def test_latex_and_html_pivots():
    df = long_frame(excluded=3, n_random_deletion=97)
    tex = to_latex(df)
    assert r"method & insertion auc $\uparrow$ & deletion auc $\downarrow$ & " \
           r"stability mse $\downarrow$ \\" in tex
    assert r"integrated\_gradients & 0.400 [0.380, 0.430]" in tex
    assert r"\multicolumn{4}{l}{\textit{shapes\_resnet18 / original (n = 100)}} \\" in tex
    assert tex.count(r"\begin{tabular}") == 1 and r"\bottomrule" in tex
    assert r"\footnotesize Images excluded" in tex
    html = to_html(df)
    assert html.isascii()
    assert "<th>insertion auc &uarr;</th><th>deletion auc &darr;</th>" in html
    assert "<td>saliency</td><td>0.300 [0.280, 0.330]</td>" in html
    assert html.count("<tbody>") == 2 and "Images excluded" in html


def test_missing_cells_and_nan():
    df = long_frame()
    df = df[~((df["method"] == "saliency") & (df["metric"] == "stability"))].copy()
    df.loc[df["method"] == "random", ["ci_low", "ci_high"]] = np.nan
    df.loc[(df["method"] == "integrated_gradients") & (df["metric"] == "insertion"),
           "mean"] = np.nan
    rows = {r[0]: r for r in md_rows(to_markdown(df[df["variant"] == "original"]))}
    assert rows["saliency"][3] == "–" and rows["random"][1] == "0.200"
    assert rows["integrated_gradients"][1] == "n/a"
    assert "--" in to_latex(df)


def test_summary_table_writes_every_format(tmp_path):
    df = long_frame(excluded=1)
    out = {f: str(tmp_path / "tables" / f"summary.{f}") for f in ("csv", "md", "tex", "html")}
    TABLES.get("summary")(df, out)
    back = read_summary(out["csv"])
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert Path(out["md"]).read_text(encoding="utf-8") == to_markdown(df)
    assert Path(out["tex"]).read_text() == to_latex(df)
    assert Path(out["html"]).read_text() == to_html(df)
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == \
        ["summary.csv", "summary.html", "summary.md", "summary.tex"]
    TABLES.get("summary")(df, {"csv": out["csv"], "md": out["md"], "tex": out["tex"]})


def test_summary_errors(tmp_path):
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['direction'\]"):
        to_markdown(long_frame().drop(columns="direction"))
    bad = long_frame()
    bad.loc[0, "direction"] = "up"
    with pytest.raises(DataError, match="direction must be one of"):
        to_latex(bad)
    dup = pd.concat([long_frame(), long_frame().iloc[:1]])
    with pytest.raises(DataError, match="several rows for the same cell"):
        to_html(dup)
    with pytest.raises(ValueError, match="unknown output format"):
        TABLES.get("summary")(long_frame(), {"xlsx": str(tmp_path / "x.xlsx")})
    with pytest.raises(ConfigError, match="unknown table 'sumary'"):
        TABLES.get("sumary")
    assert to_markdown(long_frame().iloc[:0]) == "(no results)\n"


# -- figures ---------------------------------------------------------------------------------
@pytest.fixture
def titles(monkeypatch):
    """Panel titles of every figure saved while the test runs."""
    seen = []
    save = figures_mod.save_figure

    def spy(fig, paths):
        seen.append([ax.get_title() for ax in fig.axes])
        save(fig, paths)

    monkeypatch.setattr(figures_mod, "save_figure", spy)
    return seen


def assert_png_pdf(paths):
    assert Path(paths[0]).read_bytes()[:4] == b"\x89PNG"
    assert Path(paths[1]).read_bytes()[:4] == b"%PDF"


def test_auc_bars_panels_titles_from_direction(tmp_path, titles):
    df = long_frame()
    df.loc[df["metric"] == "insertion", "direction"] = "lower"   # the column rules, not a list
    paths = [str(tmp_path / "auc_bars.png"), str(tmp_path / "auc_bars.pdf")]
    FIGURES.get("auc_bars")(FigureInputs(df, {}, None, experiment="demo"), paths)
    assert_png_pdf(paths)
    assert titles[-1] == ["insertion auc (lower is better)", "deletion auc (lower is better)",
                          "stability mse (lower is better)"]
    df.loc[df["metric"] == "stability", "direction"] = "higher"
    bar_panels(df, paths)
    assert titles[-1][2] == "stability mse (higher is better)"


def test_auc_bars_one_row_per_model(tmp_path, titles):
    df = pd.concat([long_frame(), long_frame().assign(model="other")])
    FIGURES.get("auc_bars")(FigureInputs(df, {}, None), [str(tmp_path / "b.png")])
    assert len(titles[-1]) == 6 and titles[-1][3] == "other: insertion auc (higher is better)"


def test_saliency_grid_from_stores(tmp_path, titles):
    from xaipipe.data.image_store import ImageStoreWriter
    from xaipipe.store import write_saliency

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 3, 16, 16), dtype=np.uint8)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    with ImageStoreWriter(tmp_path / "img.zarr", {"classes": ["disc", "square"]}) as w:
        w.add_split("val", 4, 16, 16, masks=True)
        w.write("val", imgs, np.array([0, 1, 1, 0]), np.arange(4), masks)
    stores = {"saliency": tmp_path / "a.zarr", "gradcam": tmp_path / "b.zarr"}
    write_saliency(stores["saliency"], rng.normal(size=(3, 3, 16, 16)), [0, 1, 2], [0, 1, 1])
    write_saliency(stores["gradcam"], rng.random((3, 1, 16, 16)), [3, 2, 1], [0, 1, 1])
    paths = [str(tmp_path / "g.png"), str(tmp_path / "g.pdf")]
    inputs = FigureInputs(long_frame(), {k: str(v) for k, v in stores.items()},
                          str(tmp_path / "img.zarr"), n_images=6)
    FIGURES.get("saliency_grid")(inputs, paths)
    assert_png_pdf(paths)
    assert titles[-1][:3] == ["image", "saliency", "gradcam"]      # ids 1, 2 are common
    with pytest.raises(DataError, match="no saliency stores"):
        FIGURES.get("saliency_grid")(FigureInputs(long_frame(), {}, None), paths)


def test_saliency_grid_low_level(tmp_path):
    maps = {"a": np.random.default_rng(1).normal(size=(2, 3, 8, 8))}
    saliency_grid(None, maps, [str(tmp_path / "m.png")], titles=["#0", "#1"])
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


# -- the report page ---------------------------------------------------------------------------
REPORT_SNAKEFILE = """
report: "{root}/report/workflow.rst"
rule table:
    output:
        csv=report("results/papers/{{experiment}}/tables/{{table}}.csv",
                   caption="{root}/report/table.rst", category="{{experiment}}",
                   subcategory="Tables"),
        html=report("results/papers/{{experiment}}/tables/{{table}}.html",
                    caption="{root}/report/table.rst", category="{{experiment}}",
                    subcategory="Tables"),
    shell: "false"
rule figure:
    output:
        png=report("results/papers/{{experiment}}/figures/{{figure}}.png",
                   caption="{root}/report/figure.rst", category="{{experiment}}",
                   subcategory="Figures"),
    shell: "false"
"""


def test_report_page_shows_the_table(tmp_path):
    """The rule annotations the workflow uses (rules/report.smk); the outputs are written
    here, then ``snakemake --report`` builds the page (a few seconds)."""
    (tmp_path / "Snakefile").write_text(REPORT_SNAKEFILE.format(root=ROOT))
    (tmp_path / "config.yaml").write_text(
        "experiments:\n  demo: {models: [m], variants: [original], methods: [saliency],"
        " metrics: [insertion], filter: {default: correct, pointing_game: all}}\n"
        "run: [demo]\n")
    paper = tmp_path / "results/papers/demo"
    TABLES.get("summary")(long_frame(excluded=3), {"csv": str(paper / "tables/summary.csv"),
                                                    "html": str(paper / "tables/summary.html")})
    FIGURES.get("auc_bars")(FigureInputs(long_frame(), {}, None),
                            [str(paper / "figures/auc_bars.png")])
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
                          "config.yaml", "--report", "report.html",
                          "results/papers/demo/tables/summary.html",
                          "results/papers/demo/figures/auc_bars.png"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert_report_shows_summary(html)
    assert "one bar per method" in html                    # figure.rst, auc_bars branch
    assert 'methods <tt class=\\"docutils literal\\">saliency</tt>' in html   # workflow.rst


def assert_report_shows_summary(html: str) -> None:
    """The summary pivot is in the page itself (a result's description), not only as a
    download: the table, its direction arrows and a "mean [lo, hi]" cell."""
    assert 'class=\\"xaipipe-summary\\"' in html                # JSON-escaped quotes
    assert "&uarr;</th>" in html and "&darr;</th>" in html
    assert "[0.280, 0.330]</td>" in html
    assert "Images excluded" in html


def test_small_values_keep_significant_digits():
    from xaipipe.report.render import ci_cell as _cell
    assert _cell(2.41e-5, 1.5e-5, 3.333e-5) == "2.41e-05 [1.50e-05, 3.33e-05]"
    assert _cell(0.0, 0.0, 0.0) == "0.000 [0.000, 0.000]"
    assert _cell(0.5, 0.004, 0.9) == "0.500 [0.004, 0.900]"
