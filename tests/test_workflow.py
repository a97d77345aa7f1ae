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


@pytest.mark.integration
def test_imagenet_preset_with_local_stand_ins(tmp_path):
    """presets/imagenet.yaml with a tiny ImageFolder and a weights file standing in for
    ImageNet and torchvision's pretrained weights (random ResNet-18, 224x224)."""
    import torch
    import yaml
    from PIL import Image

    from xaipipe.models import load_model

    rng = np.random.default_rng(0)
    for c in ("n01440764", "n01443537"):
        (tmp_path / "imagenet" / "val" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(
                tmp_path / "imagenet" / "val" / c / f"ILSVRC2012_val_{c}_{i}.JPEG")
    weights = tmp_path / "resnet18-stand-in.pth"
    torch.save(load_model("resnet18", weights="random").net.state_dict(), weights)
    cfg = yaml.safe_load((ROOT / "presets" / "imagenet.yaml").read_text())
    cfg["datasets"]["imagenet"]["root"] = str(tmp_path / "imagenet")
    cfg["models"] = {"resnet18": {"arch": "resnet18", "weights": str(weights)}}
    cfg["methods"] = {"gradcam": {}, "integrated_gradients": {"steps": 4, "rule": "trapezoid"}}
    cfg["metrics"] = {"insertion": {"steps": 5, "fill": "blur"}}
    cfg["explain"].update(filter="all", max_images=2, variants=["jpeg"])
    cfg["report"]["variant"] = "jpeg"
    cfg["device"] = "cpu"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake("--configfile", "config.yaml", "--cores", "2", cwd=tmp_path)
    plan = Plan(load_config(tmp_path / "config.yaml"))
    for target in plan.all_targets():
        assert (tmp_path / target).exists(), target
    s = open_saliency(tmp_path / plan.saliency("imagenet", "resnet18", "gradcam", "jpeg"))
    assert s.saliency.shape == (2, 1, 224, 224)
