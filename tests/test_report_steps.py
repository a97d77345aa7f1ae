"""The per-step-count table and figure of the IDGI study (report/steps.py)."""
import re

import pandas as pd
import pytest

from xaipipe.errors import DataError
from xaipipe.report.steps import by_steps, steps_panels


def summary():
    rows = []

    def add(model, run, name, steps, idgi, metric, score, mean, direction="higher", exc=0):
        method = f"{run}@{steps}" if steps and run.startswith("ig") else run
        rows.append(dict(experiment="e", dataset="d", model=model, metric=metric,
                         method=method, variant="original", score=score, n=10, mean=mean,
                         ci_low=mean - 0.01, ci_high=mean + 0.01, direction=direction,
                         excluded=exc, method_run=run, method_name=name,
                         steps=steps if steps else "", idgi=idgi, excluded_min_pred=exc))
    for model in ("m1", "m2"):
        for k, steps in enumerate((8, 16, 32)):
            add(model, "ig", "integrated_gradients", steps, False, "insertion", "auc",
                0.3 + 0.01 * k)
            add(model, "ig_idgi", "integrated_gradients", steps, True, "insertion", "auc",
                0.2 + 0.05 * k)
            add(model, "ig", "integrated_gradients", steps, False, "stability", "mse",
                0.001 * (k + 1), "lower")
            add(model, "ig_idgi", "integrated_gradients", steps, True, "stability", "mse",
                0.002 * (k + 1), "lower", exc=2)
        add(model, "gig", "guided_ig", 32, False, "insertion", "auc", 0.4)
        add(model, "random", "random", None, False, "insertion", "auc", 0.15)
        add(model, "random", "random", None, False, "stability", "mse", 0.5, "lower")
    return pd.DataFrame(rows)


def test_by_steps_table_in_every_format(tmp_path):
    out = {f: str(tmp_path / f"t.{f}") for f in ("csv", "md", "tex", "html")}
    by_steps(summary(), out)
    md = open(out["md"]).read()
    block = md.split("**m1 / original: insertion auc ↑, n = 10**")[1].split("\n**")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | IDGI | 8 steps | 16 steps | 32 steps |"
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in lines[2:]}
    assert cells["ig_idgi"] == ["yes", "0.200 [0.190, 0.210]", "0.250 [0.240, 0.260]",
                                "0.300 [0.290, 0.310]"]
    assert cells["ig"][0] == "no"
    assert cells["gig"][1:] == ["–", "–", "0.400 [0.390, 0.410]"]
    assert cells["random (control)"][1:] == ["0.150 [0.140, 0.160]"] * 3
    assert "**m1 / original: stability mse ↓, n = 10**" in md
    assert "ig_idgi at 8 steps: 2 (min_pred 2)" in md
    tex = open(out["tex"]).read()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert r"ig\_idgi" in tex and "ig_idgi" not in tex
    html = open(out["html"]).read()
    assert html.isascii() and "&darr;" in html
    csv = pd.read_csv(out["csv"])
    assert {"method_run", "steps", "idgi"} <= set(csv.columns) and len(csv) == len(summary())


def test_vs_steps_figure_and_missing_steps(tmp_path):
    paths = [tmp_path / "f.png", tmp_path / "f.pdf"]
    assert steps_panels(summary(), paths) == 4            # 2 models x 2 metric scores
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(DataError, match="no 'steps' column"):
        by_steps(summary().drop(columns="steps"), {"md": str(tmp_path / "x.md")})
    assert not (tmp_path / "x.md").exists()
    assert re.search("m2", (tmp_path / "f.png").name) is None
