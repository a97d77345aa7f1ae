"""The per step count table (``by_steps``) and figure (``vs_steps``) of the IDGI study:
cells in the right row and column, the control in every step column, the IDGI flag, every
format written, the figure's panels, and the errors."""
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaipipe.errors import DataError
from xaipipe.report import FIGURES, TABLES, FigureInputs, read_summary
from xaipipe.report import figures as figures_mod
from xaipipe.report.idgi import steps_figure, steps_panels, to_html, to_latex, to_markdown

STEPS = (8, 16, 32)
FORMATS = ("csv", "md", "tex", "html")


def sweep_summary():
    """2 models x (ig and ig_idgi swept over 8/16/32 steps, guided_ig at 32 steps, the random
    control) x (insertion auc ↑, stability mse ↓). ig_idgi lost 2 images on stability at every
    step count (1 for min_pred, 1 for blur_pred), ig lost 1 at 16 steps only."""
    rows = []

    def add(model, run, name, steps, idgi, metric, score, direction, mean, exc=0, why=(0, 0)):
        method = f"{run}@{steps}" if run.startswith("ig") else run
        rows.append(dict(experiment="idgi", dataset="imagenet", model=model, metric=metric,
                         method=method, variant="original", score=score, n=10, mean=mean,
                         ci_low=mean - 0.01, ci_high=mean + 0.02, direction=direction,
                         excluded=exc, method_run=run, method_name=name,
                         steps=steps, idgi=idgi, excluded_min_pred=why[0],
                         excluded_blur_pred=why[1]))

    for m, model in enumerate(("resnet_50", "vgg16")):
        for metric, score, direction in (("insertion", "auc", "higher"),
                                         ("stability", "mse", "lower")):
            base = 0.5 if metric == "insertion" else 0.1
            for k, s in enumerate(STEPS):
                add(model, "ig", "integrated_gradients", s, False, metric, score, direction,
                    base + 0.1 * m + 0.01 * k,
                    *((1, (1, 0)) if metric == "stability" and s == 16 else ()))
                add(model, "ig_idgi", "integrated_gradients", s, True, metric, score,
                    direction, base + 0.1 * m + 0.03 * k,
                    *((2, (1, 1)) if metric == "stability" else ()))
            add(model, "guided_ig", "guided_ig", 32, False, metric, score, direction,
                base + 0.2)
            add(model, "random", "random", np.nan, False, metric, score, direction,
                base - 0.2 + 0.1 * m)
    return pd.DataFrame(rows)


def md_blocks(md):
    """{heading: {row label: [IDGI, cell per step count]}} and the header of each block."""
    blocks, headers, name = {}, {}, None
    for line in md.splitlines():
        if line.startswith("**") and not line.startswith("**idgi:"):
            name = line.strip("*")
            blocks[name] = {}
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == "method run":
                headers[name] = cells
            elif cells[0] != ":---":
                blocks[name][cells[0]] = cells[1:]
    return blocks, headers


def cell(mean):
    return f"{mean:.3f} [{mean - 0.01:.3f}, {mean + 0.02:.3f}]"


# -- the table -------------------------------------------------------------------------------
def test_markdown_one_column_per_step_count_and_cells_in_place():
    blocks, headers = md_blocks(to_markdown(sweep_summary()))
    assert list(blocks) == ["resnet_50 / original: insertion auc ↑ (n = 10)",
                            "resnet_50 / original: stability mse ↓ (n = 10)",
                            "vgg16 / original: insertion auc ↑ (n = 10)",
                            "vgg16 / original: stability mse ↓ (n = 10)"]
    for h in headers.values():
        assert h == ["method run", "IDGI", "8 steps", "16 steps", "32 steps"]
    ins = blocks["vgg16 / original: insertion auc ↑ (n = 10)"]
    assert list(ins) == ["ig", "ig_idgi", "guided_ig", "random (control)"]   # summary order
    assert ins["ig"] == ["no", cell(0.6), cell(0.61), cell(0.62)]
    assert ins["ig_idgi"] == ["yes", cell(0.6), cell(0.63), cell(0.66)]
    assert ins["guided_ig"] == ["no", "–", "–", cell(0.7)]                 # one fixed count
    assert ins["random (control)"] == ["no"] + [cell(0.4)] * 3              # every column
    st = blocks["resnet_50 / original: stability mse ↓ (n = 10)"]
    assert st["random (control)"][1:] == [cell(-0.1)] * 3
    assert st["ig_idgi"][3] == cell(0.1 + 0.06)


def test_footnote_lists_excluded_images_with_reasons():
    md = to_markdown(sweep_summary())
    assert md.count("Images excluded (left out of the mean): ") == 1
    assert "resnet_50 / original, stability mse, ig@16: 1 (min_pred 1)" in md
    assert ("vgg16 / original, stability mse, ig_idgi (every step count): 2 "
            "(min_pred 1, blur_pred 1)") in md
    assert "insertion auc, " not in md.split("Images excluded")[1]
    df = sweep_summary()
    df.loc[df["metric"] == "insertion", "excluded"] = 3
    assert "vgg16 / original, insertion auc: 3 (every method run and step count)" \
        in to_markdown(df)


def test_varying_n_goes_into_the_cells():
    df = sweep_summary()
    df.loc[(df["method"] == "ig@8") & (df["metric"] == "insertion"), "n"] = 9
    blocks, _ = md_blocks(to_markdown(df))
    ins = blocks["resnet_50 / original: insertion auc ↑"]
    assert ins["ig"][1] == cell(0.5) + " (n=9)" and ins["ig"][2] == cell(0.51) + " (n=10)"
    assert "resnet_50 / original: stability mse ↓ (n = 10)" in blocks


def test_latex_balanced_escaped_with_block_headings():
    tex = to_latex(sweep_summary())
    assert tex.count(r"\begin{tabular}{llccc}") == 1 and tex.count(r"\end{tabular}") == 1
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert r" & & \multicolumn{3}{c}{steps} \\" in tex
    assert r"method run & IDGI & 8 & 16 & 32 \\" in tex
    assert (r"\multicolumn{5}{l}{\textit{resnet\_50 / original: stability mse $\downarrow$ "
            r"(n = 10)}} \\") in tex
    assert r"random (control) & no & " + " & ".join([cell(0.3)] * 3) + r" \\" in tex
    assert r"guided\_ig & no & -- & -- & " in tex
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)_", body)                        # every _ escaped
    assert tex.count("{") == tex.count("}")
    assert r"\footnotesize Images excluded" in tex and r"min\_pred" in tex


def test_html_ascii_with_arrows_and_steps_heading():
    html = to_html(sweep_summary())
    assert html.isascii()
    assert '<th colspan="3">steps</th></tr>' in html and "<th>8</th><th>16</th><th>32</th>" in html
    assert html.count("<tbody>") == 4 and "&darr;" in html and "&uarr;" in html
    assert "<tr><td>ig_idgi</td><td>yes</td>" in html
    assert "<td>&#8211;</td>" in html and "Images excluded" in html


def test_by_steps_writes_every_format_and_a_loadable_csv(tmp_path):
    assert "by_steps" in TABLES and "vs_steps" in FIGURES      # found by scanning the package
    df = sweep_summary()
    out = {f: str(tmp_path / "tables" / f"by_steps.{f}") for f in FORMATS}
    TABLES.get("by_steps")(df, out)
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == \
        [f"by_steps.{f}" for f in sorted(FORMATS)]
    assert Path(out["md"]).read_text(encoding="utf-8") == to_markdown(df)
    assert Path(out["tex"]).read_text() == to_latex(df)
    assert Path(out["html"]).read_text() == to_html(df)
    csv = pd.read_csv(out["csv"])
    assert len(csv) == len(df) and set(df.columns) <= set(csv.columns)
    first = csv[(csv["model"] == "resnet_50") & (csv["metric"] == "insertion")]
    assert list(first["method"]) == ["ig@8", "ig@16", "ig@32", "ig_idgi@8", "ig_idgi@16",
                                     "ig_idgi@32", "guided_ig", "random"]    # table order
    assert first["steps"].tolist()[:3] == [8, 16, 32] and first["steps"].isna().tolist()[-1]
    assert csv["idgi"].dtype == bool
    wide = csv.pivot_table(index=["model", "metric", "score", "method_run"], columns="steps",
                           values="mean")
    assert wide.loc[("vgg16", "insertion", "auc", "ig_idgi"), 16.0] == pytest.approx(0.63)


def test_read_back_summary_csv_and_fallbacks():
    """The summary as the workflow reads it (read_summary keeps extra columns as text, steps
    as "8.0" and "" for the control) gives the same table; without method_run, method_name
    and idgi the store name is the run and nothing is IDGI."""
    df = sweep_summary()
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    buf.seek(0)
    assert to_markdown(read_summary(buf)) == to_markdown(df)
    plain = df[df["method_run"] != "ig_idgi"].drop(columns=["method_run", "method_name", "idgi"])
    blocks, _ = md_blocks(to_markdown(plain))
    assert list(blocks["vgg16 / original: insertion auc ↑ (n = 10)"]) == \
        ["ig", "guided_ig", "random (control)"]


def test_errors_name_the_problem(tmp_path):
    out = {"md": str(tmp_path / "x.md"), "csv": str(tmp_path / "x.csv")}
    with pytest.raises(DataError, match="no 'steps' column"):
        TABLES.get("by_steps")(sweep_summary().drop(columns="steps"), out)
    with pytest.raises(DataError, match="no 'steps' column"):
        FIGURES.get("vs_steps")(FigureInputs(sweep_summary().drop(columns="steps"), {}, None),
                                [str(tmp_path / "x.png")])
    assert not list(tmp_path.iterdir())                      # nothing written
    bad = sweep_summary()
    bad.loc[0, "steps"] = 8.5
    with pytest.raises(DataError, match="'steps' must hold positive integers"):
        to_markdown(bad)
    bad = sweep_summary()
    bad.loc[bad["method"] == "ig@8", "steps"] = np.nan
    with pytest.raises(DataError, match="'ig' has rows with and without a step count"):
        to_markdown(bad)
    dup = pd.concat([sweep_summary(), sweep_summary().iloc[:1].assign(method="ig@8b")])
    with pytest.raises(DataError, match="several rows for the same cell"):
        to_latex(dup)
    with pytest.raises(DataError, match="no row of the summary has a step count"):
        to_markdown(sweep_summary().query("method_run == 'random'"))
    with pytest.raises(ValueError, match="unknown output format"):
        TABLES.get("by_steps")(sweep_summary(), {"xlsx": str(tmp_path / "x.xlsx")})
    assert to_markdown(sweep_summary().iloc[:0]) == "(no results)\n"


# -- the figure ------------------------------------------------------------------------------
def test_vs_steps_figure_files_and_panels(tmp_path, monkeypatch):
    saved = []
    save = figures_mod.save_figure
    monkeypatch.setattr(figures_mod, "save_figure",
                        lambda fig, paths: (saved.append(len(fig.axes)), save(fig, paths)))
    paths = [str(tmp_path / "figures" / f"vs_steps.{ext}") for ext in ("png", "pdf")]
    FIGURES.get("vs_steps")(FigureInputs(sweep_summary(), {}, None, experiment="idgi"), paths)
    assert Path(paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(paths[1]).read_bytes()[:5] == b"%PDF-"
    assert saved == [4]                                       # 2 models x 2 (metric, score)
    info = steps_panels(sweep_summary(), [str(tmp_path / "again.png")])
    assert info.n_axes == 4 and info.rows == ["resnet_50", "vgg16"]
    assert info.titles == ["insertion auc ↑", "stability mse ↓"] * 2
    assert info.legend == ["ig", "ig_idgi", "guided_ig", "random (control)"]


def test_vs_steps_lines_styles_and_variants():
    import matplotlib.pyplot as plt

    df = sweep_summary()
    fig, info = steps_figure(df)
    try:
        ax = fig.axes[0]                                      # resnet_50, insertion auc
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32"]
        styles = {(tuple(line.get_xdata()), line.get_linestyle(), line.get_color())
                  for line in ax.get_lines()}
        assert ((8.0, 16.0, 32.0), "-", "C0") in styles        # ig: plain, solid
        assert ((8.0, 16.0, 32.0), "--", "C0") in styles       # ig_idgi: same family, dashed
        assert any(s[1] == ":" and s[2] == "C2" for s in styles)   # control: dotted line
    finally:
        plt.close(fig)
    two = pd.concat([df, df[df["metric"] == "stability"].assign(variant="jpeg")])
    fig, info = steps_figure(two)
    plt.close(fig)
    assert info.titles[:2] == ["insertion auc ↑ (original)", "stability mse ↓"]
    assert info.legend[-2:] == ["variant original", "variant jpeg"]
    empty = df.copy()
    empty.loc[empty["metric"] == "stability", ["n", "mean", "ci_low", "ci_high"]] = \
        [0, np.nan, np.nan, np.nan]                       # no image selected: n = 0, no mean
    fig, _ = steps_figure(empty)
    try:
        assert [t.get_text() for t in fig.axes[1].texts] == ["(no data)"]
        assert not fig.axes[0].texts
    finally:
        plt.close(fig)
