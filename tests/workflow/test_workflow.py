"""The whole Snakemake workflow on a tiny overlay, end to end (a few minutes on 2 cores), run
once per session (conftest.py `tiny_run`) and read by every test here; the workflow tests
that need no shared run are in test_workflow_standalone.py (`make test` schedules this file's
tests into one process)."""
import re

import numpy as np
import pandas as pd
import pytest

from helpers.workflow import TINY, planned_outputs, snakemake, workdir  # noqa: F401
from xaipipe.config import ROOT, Plan, load_config
from xaipipe.pipeline.scoring import read_provenance
from xaipipe.store import open_saliency


@pytest.fixture
def run(tiny_run):
    return tiny_run[0]            # conftest.py: one tiny run per session, shared with test_slurm


@pytest.mark.integration
def test_every_output_exists_and_is_sane(run):
    cfg = load_config(run / "config.yaml", TINY)
    plan = Plan(cfg)
    for target in plan.experiment_targets("tiny"):
        p = run / target
        assert p.exists() and p.stat().st_size > 0, target
    assert not (run / "results/papers/demo").exists()
    assert not (run / "results/models/shapes_resnet18").exists()
    n = cfg["experiments"]["tiny"]["max_images"]
    for d, m, me, v in plan.explain_keys("tiny"):
        s = open_saliency(run / plan.saliency(d, m, me, v))
        assert s.saliency.shape[0] == n and np.isfinite(s.saliency.compute()).all()
        assert s.attrs["method"] == me and s.attrs["variant"] == v
        assert {"torch_version", "torchvision_version", "zarr_version"} <= set(s.attrs)
    s_params = {me: plan.methods[me][1].as_dict() for me in plan.methods}
    for d, m, mt, me, v in plan.score_keys("tiny"):
        path = run / plan.scores(d, m, mt, me, v)
        df = pd.read_parquet(path)
        assert len(df) == n and {"image_id", "target"} <= set(df.columns)
        prov = read_provenance(path)
        assert prov["metric"] == mt and prov["method"] == me and prov["variant"] == v
        assert prov["metric_params"] and prov["torchvision_version"]
        assert prov["method_params"] == s_params[me]
        if mt.startswith(("insertion", "deletion")):
            assert df["auc"].between(0, 1).all() and {"curve", "auc_norm"} <= set(df.columns)
    summary = pd.read_csv(run / plan.summary("tiny"))
    assert set(summary["metric"]) == {"insertion6", "deletion6_blur", "stability",
                                      "pointing_game"}
    assert set(summary["direction"]) == {"higher", "lower"}
    ok = summary["mean"].notna()
    assert (summary["ci_low"][ok] <= summary["mean"][ok] + 1e-12).all()
    assert (summary["mean"][ok] <= summary["ci_high"][ok] + 1e-12).all()
    md = (run / plan.table("tiny", "summary")["md"]).read_text()
    assert "↑" in md and "↓" in md
    for f in ("saliency_grid", "auc_bars"):
        files = plan.figure("tiny", f)
        assert (run / files["png"]).read_bytes()[:4] == b"\x89PNG"
        assert (run / files["pdf"]).read_bytes()[:4] == b"%PDF"
    assert (run / "results/logs/saliency/tiny_shapes/tiny_resnet18/ig8/original.log").exists()
    assert "val_accuracy" in (run / "results/models/tiny_resnet18/model.json").read_text()


@pytest.mark.integration
def test_rerun_is_a_no_op_and_report_builds(run):
    res = snakemake("--configfile", str(TINY), "--cores", "1", "-n", "tiny", cwd=run)
    assert "Nothing to be done" in res.stdout + res.stderr
    snakemake("--configfile", str(TINY), "--report", "report.html", "tiny", cwd=run)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "saliency_grid.png" in html and "auc_bars.png" in html
    assert 'class=\\"xaipipe-summary\\"' in html                  # the pivot, on the page
    assert "&uarr;</th>" in html and "&darr;</th>" in html         # direction arrows
    assert re.search(r"<td>-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]", html)


@pytest.mark.integration
def test_explicit_defaults_do_not_rerun(run, tmp_path):
    text = TINY.read_text().replace("smoothgrad4: {method: smoothgrad, samples: 4}",
                                    "smoothgrad4: {method: smoothgrad, samples: 4, squared: false}")
    assert text != TINY.read_text()
    over = tmp_path / "tiny.yaml"
    over.write_text(text)
    res = snakemake("--configfile", str(over), "--cores", "1", "-n", "tiny", cwd=run)
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]


@pytest.mark.integration
def test_a_real_change_reruns_exactly_the_affected_jobs(run, tmp_path):
    over = tmp_path / "tiny.yaml"
    over.write_text(TINY.read_text().replace("steps: 8, rule: trapezoid",
                                             "steps: 9, rule: trapezoid"))
    res = snakemake("--configfile", str(over), "--cores", "1", "-n", "tiny", cwd=run)
    outputs = planned_outputs(res)
    stores = [o for o in outputs if "/saliency/" in o]
    scores = [o for o in outputs if "/metrics/" in o]
    assert sorted(stores) == [f"results/saliency/tiny_shapes/tiny_resnet18/ig8/{v}.zarr"
                              for v in ("jpeg", "original")]
    assert scores and all("/ig8/" in o for o in scores)
    assert not [o for o in outputs if "/data/" in o or "/models/" in o or "/selection/" in o]


IDGI = ROOT / "presets" / "idgi_tmlr.yaml"


@pytest.mark.integration
def test_idgi_preset_runs_on_a_small_model_with_one_override(run):
    """presets/idgi_tmlr.yaml with the documented override pointed at the tiny model (the
    documented one is the demo model with 20 images): sweeps of one path per (model, variant),
    insertion and PIC on original only, stability on jpeg, the step tables and figure."""
    override = ["experiments={idgi_tmlr: {models: [tiny_resnet18], max_images: 3, "
                # CI: one method of each family (IG with IDGI, Blur IG, Guided IG) and the
                # control instead of all seven, two step counts, a short Guided IG and no
                # Dask cluster per score job
                "methods: [tmlr_ig_idgi, tmlr_blur_ig, tmlr_guided_ig, random]}}",
                *(f"methods={{{m}: {{steps: [8, 16]}}}}" for m in
                  ("tmlr_ig_idgi", "tmlr_blur_ig")),
                "methods={tmlr_guided_ig: {steps: 16}}",
                "score={scheduler: synchronous}"]
    snakemake("--configfile", str(IDGI), str(TINY), "--cores", "2", "idgi_tmlr",
              "--config", *override, cwd=run)
    out = run / "results/papers/idgi_tmlr"
    for t in ("summary", "by_steps"):
        for ext in ("csv", "md", "tex", "html"):
            assert (out / "tables" / f"{t}.{ext}").stat().st_size > 0
    assert (out / "figures/vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    s = pd.read_csv(out / "summary.csv")
    sweep = s[s["method_run"] == "tmlr_ig_idgi"]
    assert sorted(set(sweep["steps"])) == [8, 16]
    assert set(s["metric"]) == {"tmlr_insertion", "tmlr_pic", "tmlr_stability"}
    assert set(s.loc[s["metric"] != "tmlr_stability", "variant"]) == {"original"}
    assert set(s.loc[s["metric"] == "tmlr_stability", "variant"]) == {"jpeg"}
    assert {"sic", "aic"} <= set(s.loc[s["metric"] == "tmlr_pic", "score"])
    md = (out / "tables/by_steps.md").read_text()
    assert "| 8 steps | 16 steps |" in md and "random (control)" in md
    # one store per step count, each a complete store from the one sweep job
    st = open_saliency(run / "results/saliency/tiny_shapes/tiny_resnet18/tmlr_ig_idgi@8/"
                       "original.zarr")
    assert st.attrs["parameters"]["steps"] == 8 and st.attrs["sweep"] == [8, 16]
    gap = np.asarray(st.extras["completeness_gap"])
    f_span = np.abs(np.asarray(st.extras["f_input"]) - np.asarray(st.extras["f_baseline"]))
    assert np.all(np.abs(gap) <= 1e-4 * np.maximum(f_span, 1e-3))   # IDGI is complete
    logs = run / "results/logs/saliency/tiny_shapes/tiny_resnet18"
    assert (logs / "tmlr_blur_ig/original.log").exists()
    res = snakemake("--configfile", str(IDGI), str(TINY), "--cores", "1", "-n", "idgi_tmlr",
                    "--config", *override, cwd=run)
    assert "Nothing to be done" in res.stdout + res.stderr
