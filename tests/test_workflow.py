"""The whole Snakemake workflow on a tiny overlay, end to end (a few minutes on 2 cores), and
dry runs of every preset."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from xaipipe.config import ROOT, Plan, load_config
from xaipipe.data.store import open_images
from xaipipe.metrics.runner import read_provenance
from xaipipe.store import open_saliency

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))     # the test overlays run for real


def snakemake(*args, cwd, check=True, timeout=None):
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def workdir(tmp):
    """A working directory as a user has it: the repository's config.yaml (the catalogs and
    the default experiment) and the overlays given with --configfile."""
    shutil.copy(ROOT / "config.yaml", tmp / "config.yaml")
    return tmp


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
    s_params = {me: plan.methods[me][1] for me in plan.methods}
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


def test_bad_config_stops_before_running(tmp_path):
    d = workdir(tmp_path)
    over = tmp_path / "tiny.yaml"
    over.write_text(TINY.read_text().replace("ig8: {method: integrated_gradients",
                                             "ig8: {method: integrated_gradientz"))
    res = snakemake("--configfile", str(over), "--cores", "1", "tiny", cwd=d, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "ConfigError: methods.ig8.method: unknown method 'integrated_gradientz'" in out
    assert "Traceback" not in out and len(out.splitlines()) < 10, out
    assert not (d / "results").exists()


@pytest.mark.parametrize("key,value,match", [
    ("bogus", 1, "ConfigError: config key (top level): Additional properties are not allowed"),
    ("models", {"tiny_resnet18": {"arch": "resnet9000", "dataset": "tiny_shapes"}},
     "ConfigError: models.tiny_resnet18.arch: unknown model 'resnet9000'"),
    ("datasets", {"tiny_shapes": {"kind": "imagefolder", "root": "/nonexistent/imagenet"}},
     "ConfigError: datasets.tiny_shapes.root: folder '/nonexistent/imagenet' does not exist"),
])
def test_config_errors_are_short_and_early(tmp_path, key, value, match):
    d = workdir(tmp_path)
    over = yaml.safe_load(TINY.read_text())
    if key == "datasets":
        over["datasets"] = value
        over["models"]["tiny_resnet18"] = {"arch": "resnet18", "weights": "random",
                                           "dataset": "tiny_shapes"}
        over["experiments"]["tiny"]["metrics"].remove("pointing_game")   # folders: no masks
    else:
        over[key] = value if key != "models" else {**over["models"], **value}
    (d / "over.yaml").write_text(yaml.safe_dump(over))
    res = snakemake("--configfile", "over.yaml", "--cores", "1", "tiny", cwd=d, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and match in out, out
    assert len(out.splitlines()) < 10, out
    assert not (d / "results").exists()


def planned_outputs(res) -> list[str]:
    return re.findall(r"^\s+output: (.*)$", res.stdout, flags=re.M)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_dry_run_plans_only_its_experiment(preset, tmp_path):
    """A preset is an overlay: its dry run contains no job of another experiment (no output
    of a model, data set or experiment that only other experiments use)."""
    d = workdir(tmp_path)
    over = yaml.safe_load(preset.read_text())
    for name, ds in (over.get("datasets") or {}).items():
        if ds.get("kind") in ("imagefolder", "imagenet"):          # stand-in folder: roots must exist
            (tmp_path / name / "val" / "n01").mkdir(parents=True)
            over["datasets"][name]["root"] = str(tmp_path / name)
    (d / "over.yaml").write_text(yaml.safe_dump(over))
    cfg = load_config(d / "config.yaml", d / "over.yaml")
    for exp in over.get("run") or []:
        res = snakemake("--configfile", "over.yaml", "-n", "-p", exp, cwd=d)
        outputs = planned_outputs(res)
        assert outputs, res.stdout[-2000:]
        mine = cfg["experiments"][exp]
        models = set(mine["models"])
        datasets = {cfg["models"][m]["dataset"] for m in models}
        foreign = set()
        for other, e in cfg["experiments"].items():
            if other != exp:
                foreign |= {f"papers/{other}/"}
                foreign |= {f"/{m}/" for m in e["models"] if m not in models}
                foreign |= {f"/{cfg['models'][m]['dataset']}/" for m in e["models"]
                            if cfg["models"][m]["dataset"] not in datasets}
        bad = [o for o in outputs for f in foreign if f in o]
        assert not bad, f"{preset.name}: jobs of other experiments: {bad[:5]}"
        # and a plain `snakemake` with the overlay builds its `run` too (the Snakefile's
        # default target is the same for every preset: checked once, on the first)
        assert over["run"] == [exp]
        if preset == PRESETS[0]:
            res = snakemake("--configfile", "over.yaml", "-n", cwd=d)
            assert sorted(planned_outputs(res)) == sorted(outputs)


def test_lint_is_clean():
    res = snakemake("--lint", cwd=ROOT, check=False)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 0, out
    assert "Lints for" not in out, out


@pytest.mark.integration
def test_imagenet_preset_with_local_stand_ins(tmp_path):
    """presets/imagenet.yaml with a tiny ImageFolder and a weights file standing in for
    ImageNet and torchvision's pretrained weights (random ResNet-18, 224x224)."""
    import torch
    from PIL import Image

    from xaipipe.models import load_model

    d = workdir(tmp_path)
    rng = np.random.default_rng(0)
    for c in ("n01440764", "n01443537"):
        (tmp_path / "imagenet" / "val" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(
                tmp_path / "imagenet" / "val" / c / f"ILSVRC2012_val_{c}_{i}.JPEG")
    (tmp_path / "imagenet" / "val" / c / "ILSVRC2012_val_truncated.JPEG").write_bytes(
        b"\xff\xd8\xff\xe0")                   # unreadable: skipped, named and counted
    weights = tmp_path / "resnet18-stand-in.pth"
    torch.save(load_model("resnet18", weights="random").net.state_dict(), weights)
    cfg = yaml.safe_load((ROOT / "presets" / "imagenet.yaml").read_text())
    cfg["datasets"]["imagenet"]["root"] = str(tmp_path / "imagenet")
    cfg["models"] = {"resnet18": {"arch": "resnet18", "weights": str(weights),
                                  "dataset": "imagenet", "preprocess": "resize232_crop224"}}
    cfg["methods"] = {"ig4": {"method": "integrated_gradients", "steps": 4, "rule": "trapezoid"}}
    cfg["metrics"] = {"insertion5_blur": {"metric": "insertion", "steps": 5, "fill": "blur"}}
    cfg["experiments"]["imagenet"].update(
        models=["resnet18"], methods=["gradcam", "ig4"], metrics=["insertion5_blur"],
        filter="all", max_images=2, variants=["jpeg"])
    cfg["device"] = "cpu"
    (d / "over.yaml").write_text(yaml.safe_dump(cfg))
    snakemake("--configfile", "over.yaml", "--cores", "2", "imagenet", cwd=d)
    plan = Plan(load_config(d / "config.yaml", d / "over.yaml"))
    for target in plan.experiment_targets("imagenet"):
        assert (d / target).exists(), target
    s = open_saliency(d / plan.saliency("imagenet", "resnet18", "gradcam", "jpeg"))
    assert s.saliency.shape == (2, 1, 224, 224)
    assert not (d / "results/models").exists()          # no demo model trained
    images = open_images(d / "results/data/imagenet/resize232_crop224/jpeg.zarr")
    assert len(images) == 4 and images.attrs["n_skipped"] == 1


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
    """presets/idgi_tmlr.yaml with the README's override pointed at the tiny model (the
    README's is the demo model with 20 images): sweeps of one path per (model, variant),
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


RESUME = ROOT / "tests" / "configs" / "resume_tiny.yaml"


def make_resume(cwd, *args):
    """The README's resume command, `make resume ARGS="..."`, for a run in ``cwd`` with this
    interpreter's environment (its stamp file is not rebuilt: `-o`)."""
    venv = Path(sys.prefix)
    arg = " ".join(["-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args])
    cmd = ["make", "-C", str(ROOT), "-o", str(venv / ".installed-stamp"), "resume",
           f"VENV={venv}", "CORES=2", f"ARGS={arg}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.mark.integration
def test_sigkill_of_the_whole_run_then_make_resume(tmp_path):
    """A run killed like a lost node (SIGKILL to Snakemake and its jobs) mid-attribution: the
    plain rerun fails on the stale lock; `make resume` finishes it, reusing the shards finished
    before the kill; the store equals an uninterrupted computation of that job bit for bit."""
    import os
    import signal
    import time
    wd = workdir(tmp_path)
    args = ["resume_tiny", "--configfile", str(RESUME)]   # target first: --configfile is nargs+
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(wd), *args,
                       "--cores", "2"]
    proc = subprocess.Popen(cmd, cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    out = wd / "results/saliency/tiny_shapes/tiny_resnet18/ig_slow/original.zarr"
    stage = out.with_name(".original.zarr.shards")
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if len(list(stage.glob("shard-*.zarr"))) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(stage.glob("shard-*.zarr")))
    assert 2 <= finished < 6 and not out.exists(), "the job was not killed mid-way"
    plain = snakemake(*args, "--cores", "2", cwd=wd, check=False)
    assert plain.returncode != 0 and "cannot be locked" in plain.stdout + plain.stderr
    res = make_resume(wd, *args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (wd / "results/logs/saliency/tiny_shapes/tiny_resnet18/ig_slow/original.log")
    assert f"reused {finished} of 6 finished shards" in log.read_text()
    assert (wd / "results/papers/resume_tiny/summary.csv").exists()
    assert not list(wd.rglob("*.tmp-*")) and not stage.exists()
    # the same job uninterrupted, through the package (what the rule runs)
    from xaipipe.explain.runner import explain_to_store
    plan = Plan(load_config(wd / "config.yaml", RESUME))
    job = plan.explain_job("tiny_shapes", "tiny_resnet18", "ig_slow", "original")
    rule_in = {"images": plan.model_images("tiny_resnet18", "original"),
               "sel": plan.explain_selections("tiny_shapes", "tiny_resnet18", "ig_slow",
                                              "original"),
               "model": plan.model_inputs("tiny_resnet18")}
    ref = tmp_path / "ref.zarr"
    assert explain_to_store(ref, wd / rule_in["images"], [wd / p for p in rule_in["sel"]],
                            [wd / p for p in rule_in["model"]], job,
                            progress=False)["reused"] == 0
    a, b = open_saliency(out), open_saliency(ref)
    np.testing.assert_array_equal(np.asarray(a.saliency), np.asarray(b.saliency))
    np.testing.assert_array_equal(a.index, b.index)
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])
