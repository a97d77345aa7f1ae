"""The whole Snakemake workflow on a tiny config, end to end (a few minutes on 2 cores)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaipipe.config import ROOT, Plan, load_config
from xaipipe.store import open_saliency

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def snakemake(*args, cwd, check=True):
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("wf")
    shutil.copy(TINY, d / "config.yaml")
    snakemake("--configfile", "config.yaml", "--cores", "2", cwd=d)
    return d


@pytest.mark.integration
def test_every_output_exists_and_is_sane(run):
    cfg = load_config(run / "config.yaml")
    plan = Plan(cfg)
    for target in plan.all_targets():
        p = run / target
        assert p.exists() and (p.is_dir() or p.stat().st_size > 0), target
    n = cfg["explain"]["max_images"]
    for d, m, me, v in plan.combos():
        s = open_saliency(run / plan.saliency(d, m, me, v))
        assert s.saliency.shape[0] == n and np.isfinite(s.saliency.compute()).all()
        assert s.attrs["method"] == me and s.attrs["variant"] == v
    for d, m, mt, me, v in plan.score_combos():
        df = pd.read_parquet(run / plan.scores(d, m, mt, me, v))
        assert len(df) == n and df["auc"].between(0, 1).all()
        assert {"image_id", "target", "curve", "auc_norm"} <= set(df.columns)
    summary = pd.read_csv(run / plan.tables()["csv"])
    assert len(summary) == len(plan.score_combos()) * 2
    assert (summary["ci_low"] <= summary["mean"] + 1e-12).all()
    assert (summary["mean"] <= summary["ci_high"] + 1e-12).all()
    for f in plan.figures().values():
        assert (run / f).read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    assert (run / "results/logs/saliency/shapes/tiny_resnet18/ig/original.log").exists()
    info = (run / "results/models/tiny_resnet18/model.json").read_text()
    assert "val_accuracy" in info
    # the selection uses the original predictions; jpeg maps explain the same images
    a = open_saliency(run / plan.saliency("shapes", "tiny_resnet18", "ig", "original"))
    b = open_saliency(run / plan.saliency("shapes", "tiny_resnet18", "ig", "jpeg"))
    assert a.index.tolist() == b.index.tolist()


@pytest.mark.integration
def test_rerun_is_a_no_op_and_report_builds(run):
    res = snakemake("--configfile", "config.yaml", "--cores", "1", "-n", cwd=run)
    assert "Nothing to be done" in res.stdout + res.stderr
    snakemake("--configfile", "config.yaml", "--report", "report.html", cwd=run)
    html = (run / "report.html").read_text(errors="ignore")
    assert "saliency_grid.png" in html and "auc_bars.png" in html


@pytest.mark.integration
def test_bad_config_stops_before_running(tmp_path):
    text = TINY.read_text().replace("ig: {method: integrated_gradients",
                                    "ig: {method: integrated_gradientz")
    (tmp_path / "config.yaml").write_text(text)
    res = snakemake("--configfile", "config.yaml", "--cores", "1", cwd=tmp_path, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "unknown method 'integrated_gradientz'" in out and "integrated_gradients" in out
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tmp_path):
    res = snakemake("--lint", cwd=ROOT, check=False)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 0, out
    assert "Lints for" not in out, out
