"""The re-calibration table: every method with and without re-calibration side by side."""
import pandas as pd
import pytest

from xaipipe.errors import DataError
from xaipipe.report.recal import by_recalibration, recal_table
from xaipipe.report.render import to_markdown


def summary():
    rows = []
    for name, method, rc, mean in [("expected_gradients", "eg", "none", 0.31),
                                   ("expected_gradients", "eg_recal", "valid_ip", 0.52),
                                   ("ig_sg", "igsg", "none", 0.20),
                                   ("ig_sg", "igsg_recal", "valid_ip", 0.44),
                                   ("random", "random", None, 0.01)]:
        for model in ("resnet34", "vgg16"):
            rows.append({"experiment": "recal_lpi", "dataset": "d", "model": model,
                         "metric": "diffid", "method": method, "variant": "original",
                         "score": "diffid_logit_mean", "n": 50, "mean": mean,
                         "ci_low": mean - 0.05, "ci_high": mean + 0.05, "direction": "higher",
                         "excluded": 0, "method_name": name, "recalibrate": rc})
    return pd.DataFrame(rows)


def md_rows(md: str) -> dict:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ") and "---" not in line}


def test_rows_are_methods_columns_estimators():
    t = recal_table(summary())
    assert [c.heading.text for c in t.columns] == ["method", "none", "valid_ip"]
    assert len(t.blocks) == 2 and t.blocks[0].heading.text.startswith("resnet34 / original")
    rows = md_rows(to_markdown(t))
    assert rows["expected_gradients"] == ["0.310 [0.260, 0.360]", "0.520 [0.470, 0.570]"]
    assert rows["ig_sg"][1] == "0.440 [0.390, 0.490]"
    assert rows["random (control)"] == ["0.010 [-0.040, 0.060]", "–"]


def test_two_runs_with_one_estimator_is_an_error():
    df = summary()
    df.loc[df["method"] == "eg_recal", "recalibrate"] = "none"
    with pytest.raises(DataError, match="have the same estimator"):
        recal_table(df)


def test_all_formats_written(tmp_path):
    out = {f: str(tmp_path / f"t.{f}") for f in ("csv", "md", "tex", "html")}
    by_recalibration(summary(), out)
    tex = (tmp_path / "t.tex").read_text()
    assert r"\multicolumn{2}{c}{re-calibration}" in tex and "valid\\_ip" in tex
    assert len(pd.read_csv(out["csv"])) == len(summary())


def curve_summary():
    rows = []
    for method, rc, base in [("eg", "none", 0.2), ("eg_recal", "valid_ip", 0.4),
                             ("random", None, 0.0)]:
        for r in (0.1, 0.5, 0.9):
            for kind in ("logit", "acc"):
                rows.append({"experiment": "x", "dataset": "d", "model": "m", "metric": "diffid",
                             "method": method, "variant": "original",
                             "score": f"diffid_{kind}@{r:g}", "n": 10, "mean": base + r,
                             "ci_low": base + r - 0.1, "ci_high": base + r + 0.1,
                             "direction": "higher", "excluded": 0,
                             "method_name": method.split("_")[0], "recalibrate": rc})
    return pd.DataFrame(rows)


def test_per_ratio_scores_go_to_the_figure_not_the_table(tmp_path):
    from xaipipe.report.recal import curve_rows, diffid_curves
    sens = curve_summary().head(3).assign(metric="sensitivity_n",
                                          score=["correlation@0.1", "correlation@0.5",
                                                 "correlation@0.9"])
    df = pd.concat([summary(), curve_summary(), sens], ignore_index=True)
    t = recal_table(df)
    assert all("@" not in b.heading.text for b in t.blocks) and len(t.blocks) == 2
    c = curve_rows(df)
    assert sorted(set(c["curve"])) == ["diffid_acc", "diffid_logit"]
    assert sorted(set(c["ratio"])) == [0.1, 0.5, 0.9]
    paths = [str(tmp_path / "f.png"), str(tmp_path / "f.pdf")]
    diffid_curves(curve_summary(), paths)
    assert all((tmp_path / p).stat().st_size > 0 for p in ("f.png", "f.pdf"))
    with pytest.raises(DataError, match="no per-ratio scores"):
        diffid_curves(summary(), paths)
