"""Workflow tests that need no shared run (each has its own folder, or none): config errors,
dry runs of every preset, lint, the ImageNet preset on stand-ins, kill and `make resume`.
The tests that read the one tiny run of the session are in test_workflow.py."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.vit import tiny_vit_folder
from helpers.workflow import (SNAKEMAKE, TINY, dry_run_jobs, imagenet_stand_in, planned_outputs,
                              snakemake, workdir)
from xaipipe.config import ROOT
from xaipipe.config import Plan, load_config
from xaipipe.data.image_store import open_images
from xaipipe.models.zoo import is_weights_path
from xaipipe.store import open_saliency

PRESETS = sorted((ROOT / "presets").glob("*.yaml"))     # the test overlays run for real

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


def test_missing_weights_stop_the_dry_run(tmp_path, monkeypatch):
    """torchvision enum weights are not Snakemake inputs: without the file in torchvision's
    cache they stop the dry run, before any job (naming the key and the place searched), as a
    weights path that does not exist does; with the file there the run plans, and a model of
    an experiment that does not run is not checked."""
    d = workdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    over = yaml.safe_load(TINY.read_text())
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    for weights, match in [
            ("IMAGENET1K_V1", "ConfigError: models.tiny_resnet18.weights: model 'resnet18': "
                              "weights ResNet18_Weights.IMAGENET1K_V1 are not available locally "
                              f"and are never downloaded. Searched: {cached}. "),
            (str(tmp_path / "none.pth"), "ConfigError: models.tiny_resnet18.weights: weights "
                                         f"file '{tmp_path / 'none.pth'}' does not exist")]:
        over["models"]["tiny_resnet18"] = {"arch": "resnet18", "weights": weights,
                                           "dataset": "tiny_shapes"}
        (d / "over.yaml").write_text(yaml.safe_dump(over))
        res = snakemake("--configfile", "over.yaml", "-n", "tiny", cwd=d, check=False)
        out = res.stdout + res.stderr
        assert res.returncode != 0 and match in out, out
        assert len(out.splitlines()) < 10, out
        snakemake("--configfile", "over.yaml", "-n", "demo", cwd=d)     # tiny does not run
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")                          # a dry run only looks for the file
    over["models"]["tiny_resnet18"]["weights"] = "IMAGENET1K_V1"
    (d / "over.yaml").write_text(yaml.safe_dump(over))
    res = snakemake("--configfile", "over.yaml", "-n", "tiny", cwd=d)
    assert planned_outputs(res)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_dry_run_plans_only_its_experiment(preset, tmp_path, monkeypatch):
    """A preset is an overlay: its dry run contains no job of another experiment (no output
    of a model, data set or experiment that only other experiments use)."""
    import torchvision
    d = workdir(tmp_path)
    over = yaml.safe_load(preset.read_text())
    for name, ds in (over.get("datasets") or {}).items():
        if ds.get("kind") in ("imagefolder", "imagenet"):          # stand-in folder: roots must exist
            for sub in (ds.get("splits") or {"val": "val"}).values():
                (tmp_path / name / sub / "n01").mkdir(parents=True)
            over["datasets"][name]["root"] = str(tmp_path / name)
            if ds.get("boxes"):                                      # the box XMLs' folder
                (tmp_path / name / "boxes").mkdir()
                over["datasets"][name]["boxes"] = str(tmp_path / name / "boxes")
    # save_pretrained folders of the Hugging Face models: tiny ones at the config's size
    for name, m in (over.get("models") or {}).items():
        if m.get("arch") == "hf_vit":
            m["weights"] = str(tiny_vit_folder(tmp_path / "hf" / name, image_size=224,
                                               patch_size=16, hidden=16, layers=2, heads=2))
    # stand-in files for torchvision's cache: enum weights must be local (a dry run only looks)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    for m in (over.get("models") or {}).values():
        w = m.get("weights")
        if "train" not in m and w != "random" and not (w and is_weights_path(w)) and \
                m.get("arch") != "hf_vit":
            enum = torchvision.models.get_model_weights(m["arch"])
            (cache / Path((enum.DEFAULT if w is None else enum[w]).url).name).write_bytes(b"")
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


def _imagenet_without_data(d):
    """presets/imagenet.yaml with its data set root pointed at a folder that does not exist."""
    over = yaml.safe_load((ROOT / "presets/imagenet.yaml").read_text())
    over["datasets"]["imagenet"]["root"] = str(d / "no-imagenet")
    (d / "over.yaml").write_text(yaml.safe_dump(over))
    return f"ConfigError: datasets.imagenet.root: folder '{d / 'no-imagenet'}' does not exist"


@pytest.mark.parametrize("args,fails", [
    (("demo", "-n", "--configfile", "over.yaml"), False),        # target before --configfile
    (("--configfile", "over.yaml", "-n", "demo"), False),        # after it (an option between)
    (("--configfile", "over.yaml", "-n", "--", "demo"), False),
    (("-n", "demo", "--config", "seed=1", "--configfile", "over.yaml"), False),
    (("--config", "seed=1", "-n", "--configfile", "over.yaml", "--",
      "results/papers/demo/summary.csv"), False),                # an output of demo only
    (("imagenet", "-n", "--configfile", "over.yaml"), True),
    (("-n", "--configfile", "over.yaml"), True),                # no target: run (imagenet)
    (("-n", "--configfile", "over.yaml", "--", "all"), True),
    (("-n", "--configfile", "over.yaml", "--", "demo", "imagenet"), True),
    (("-n", "--configfile", "over.yaml", "--",                  # an intermediate file: all
      "results/selection/shapes/shapes_resnet18/correct/original.parquet"), True),
])
def test_data_checks_cover_the_experiments_asked_for(tmp_path, args, fails):
    """With presets/imagenet.yaml loaded but no ImageNet on disk, the demo still plans: the
    data are checked for the experiments named as targets (in any position on the command
    line), for `run:` without a target, and for the experiment a file target belongs to."""
    d = workdir(tmp_path)
    message = _imagenet_without_data(d)
    res = snakemake(*args, cwd=d, check=False)
    out = res.stdout + res.stderr
    if fails:
        assert res.returncode != 0 and message in out, out
    else:
        assert res.returncode == 0, out
        assert any("papers/demo/summary.csv" in o for o in planned_outputs(res)), out[-2000:]


@pytest.mark.parametrize("target,match", [
    ("dmeo", "ConfigError: target 'dmeo' is neither an experiment nor a workflow rule nor a "
             "file path; experiments: demo; in presets not loaded: gradmask "),
    ("idgi_tmlr", "ConfigError: target 'idgi_tmlr': no experiment of that name in the loaded "
                  "config; it is defined in "),
])
def test_an_unknown_target_names_the_experiments_and_presets(tmp_path, target, match):
    """A misspelt experiment gets the experiments (loaded, and in presets/) and the closest
    name; a preset's experiment without its preset gets the file to add. Not Snakemake's
    MissingRuleException after the config checks."""
    d = workdir(tmp_path)
    res = snakemake(target, "-n", cwd=d, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and match in out, out
    preset = str(ROOT / "presets" / "idgi_tmlr.yaml")
    tail = "did you mean 'demo'?" if target == "dmeo" else \
        f"{preset}, which is not loaded: snakemake idgi_tmlr --configfile {preset} "
    assert tail in out and "Exception" not in out and len(out.splitlines()) < 10, out


def test_conda_env_installs_the_checkout_of_the_snakefile(tmp_path, monkeypatch):
    """envs/xaipipe.yaml as conda deploys it: Snakemake copies it to .snakemake/conda/<hash>.yaml
    and conda runs pip on its pip entries (a requirements file) in that folder. Read with
    pip's own parser, with XAIPIPE_ROOT as the Snakefile sets it, the entries are the pins of
    pyproject.toml and an editable install of this checkout; no entry is a relative path."""
    import tomllib

    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    env = yaml.safe_load((ROOT / "envs" / "xaipipe.yaml").read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    deployed = tmp_path / ".snakemake" / "conda"
    deployed.mkdir(parents=True)
    (deployed / "condaenv.requirements.txt").write_text("\n".join(pip))
    monkeypatch.setenv("XAIPIPE_ROOT", str(ROOT))       # the Snakefile's os.environ entry
    monkeypatch.chdir(deployed)                         # conda's pip_workdir
    reqs = list(parse_requirements(str(deployed / "condaenv.requirements.txt"),
                                   session=PipSession()))
    editable = [r.requirement for r in reqs if r.is_editable]
    assert len(editable) == 1 and Path(editable[0]).is_absolute(), editable
    assert Path(editable[0]).resolve() == ROOT.resolve()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(r.requirement for r in reqs if not r.is_editable) == sorted(pins)
    assert "os.environ.update(XAIPIPE_ROOT=os.path.abspath(workflow.basedir))" in \
        (ROOT / "Snakefile").read_text()


def test_lint_is_clean():
    res = snakemake("--lint", cwd=ROOT, check=False)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 0, out
    assert "Lints for" not in out, out


def test_sweep_jobs_take_the_explain_rules_cluster_settings(tmp_path):
    """The step-sweep rules (`explain_sweep_<run>`, named from the config) get what the SLURM
    profile gives `explain` — its memory, runtime and group — and their own --set-resources
    entry still wins. A dry run with the profile's explain settings on the command line (no
    cluster needed: groups are resolved in dry runs)."""

    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    res = prof["set-resources"]["explain"]
    assert res["mem_mb"] != prof["default-resources"]["mem_mb"]     # else this proves nothing
    d = workdir(tmp_path)
    out = snakemake(
        "--configfile", str(ROOT / "presets/idgi_tmlr.yaml"), str(TINY), "-n", "idgi_tmlr",
        "--config", "experiments={idgi_tmlr: {models: [tiny_resnet18], max_images: 3}}",
        "--default-resources", *(f"{k}={v}" for k, v in prof["default-resources"].items()),
        "--set-resources", *(f"explain:{k}={v}" for k, v in res.items()),
        "explain_sweep_tmlr_ig:runtime=7",
        "--groups", f"explain={prof['groups']['explain']}", cwd=d).stdout
    sweeps = [(rule, text) for rule, text in dry_run_jobs(out) if rule.startswith("explain_sweep_")]
    assert {r for r, _ in sweeps} >= {"explain_sweep_tmlr_ig", "explain_sweep_tmlr_blur_ig"}
    for rule, text in sweeps:
        assert f"mem_mb={res['mem_mb']}," in text, (rule, text)
        runtime = 7 if rule == "explain_sweep_tmlr_ig" else res["runtime"]
        assert f"runtime={runtime}," in text, (rule, text)
    # every sweep job runs inside a group job of the explain group
    groups = re.split(r"^.*Group job (\w+)", out, flags=re.M)
    grouped = {r for name, body in zip(groups[1::2], groups[2::2])
               if name == prof["groups"]["explain"]
               for r in re.findall(r"^\s{4}rule (\w+):", body, flags=re.M)}
    assert {r for r, _ in sweeps} <= grouped, grouped


@pytest.mark.integration
def test_imagenet_preset_with_local_stand_ins(tmp_path):
    """presets/imagenet.yaml with a tiny ImageFolder and a weights file standing in for
    ImageNet and torchvision's pretrained weights (random ResNet-18, 224x224)."""
    d = workdir(tmp_path)
    root, weights = imagenet_stand_in(tmp_path, per_class=2)
    (root / "val" / "n01443537" / "ILSVRC2012_val_truncated.JPEG").write_bytes(
        b"\xff\xd8\xff\xe0")                   # unreadable: skipped, named and counted
    cfg = yaml.safe_load((ROOT / "presets" / "imagenet.yaml").read_text())
    cfg["datasets"]["imagenet"]["root"] = str(root)
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


RESUME = ROOT / "tests" / "configs" / "resume_tiny.yaml"


def make_resume(cwd, *args):
    """The documented resume command, `make resume ARGS="..."`, for a run in ``cwd`` with this
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
    from xaipipe.pipeline.attribution import explain_to_store
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


@pytest.mark.integration
def test_reproducible_mode_reaches_the_jobs(tmp_path):
    """`reproducible: true`: the Snakefile exports the pinned-kernel variables before any job
    starts, and each job's set-up enables the flags and says so in its log (the tiny model
    trained in that mode reaches its accuracy floor as in the default mode)."""
    import json
    d = workdir(tmp_path)
    plan = Plan(load_config(d / "config.yaml", TINY, overrides={"reproducible": True}))
    target = plan.model_inputs("tiny_resnet18")
    snakemake(*target, "--cores", "2", "--configfile", str(TINY),
              "--config", "reproducible=true", cwd=d)        # targets first: nargs+ options
    log = (d / "results/logs/models/tiny_resnet18.log").read_text()
    assert "reproducible mode: ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE,STRICT" in log
    assert "1 torch thread" in log and "without" not in log
    info = json.loads((d / "results/models/tiny_resnet18/model.json").read_text())
    assert info["val_accuracy"] > 0
