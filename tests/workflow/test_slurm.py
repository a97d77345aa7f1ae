"""A tiny workflow through SLURM (`--profile profiles/slurm`) on a real one-node cluster
(tests/helpers/slurm_cluster.py): same results as a local run of the same config, every request fits
the node. The wall-time ratio is printed (a speed goal, not a test: docs/benchmarks.md).

The run is tests/configs/slurm_tiny.yaml (every rule, 2 methods x 1 variant x 1 metric),
not tiny.yaml's 43 jobs: each SLURM job costs 15-25 s of start-up on a 2-core CI machine,
and the whole of tiny.yaml took 22-33 minutes there."""
import re
import time

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from helpers.slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)
from helpers.workflow import dry_run_jobs, frames_equal, slurm_submissions, snakemake, workdir
from xaipipe.config import ROOT, Plan, load_config

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

PROFILE = ROOT / "profiles" / "slurm"
CONFIG = ROOT / "tests" / "configs" / "slurm_tiny.yaml"
EXP = "slurm_tiny"
PROFILE_CFG = yaml.safe_load((PROFILE / "config.yaml").read_text())


def timed(cwd, *args) -> float:
    """Wall time of the run; a cluster that never runs the jobs (a request no node can
    take stays PENDING for ever) fails after 40 minutes instead of hanging."""
    t0 = time.monotonic()
    snakemake("--configfile", str(CONFIG), *args, EXP, cwd=cwd, timeout=2400)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):  # noqa: F811
    """The run locally (--cores 2 = the profile's cores) and through SLURM, each in its own
    folder: (local dir, local s, slurm dir, slurm s)."""
    assert PROFILE_CFG["cores"] == 2
    local = workdir(tmp_path_factory.mktemp("local"))
    t_local = timed(local, "--cores", "2")
    remote = workdir(tmp_path_factory.mktemp("slurm"))
    t_slurm = timed(remote, "--profile", str(PROFILE))
    print(f"\n{EXP} run: local {t_local:.0f} s, SLURM {t_slurm:.0f} s, "
          f"ratio {t_slurm / t_local:.2f}")
    return local, t_local, remote, t_slurm


def plan_of(d) -> Plan:
    return Plan(load_config(d / "config.yaml", CONFIG))


def test_profile_requests_fit_the_node(slurm_cluster, tmp_path):  # noqa: F811
    """Every job of the dry run asks for at most the node's CPUs, and side by side in a group
    job at most its memory (config.yaml's threads.train: 4 comes out as the profile's cores);
    only attribution jobs may ask for a GPU."""
    cores = PROFILE_CFG["cores"]
    assert cores <= slurm_cluster.cpus
    d = workdir(tmp_path)
    res = snakemake("--configfile", str(CONFIG), "--profile", str(PROFILE), "-n", EXP, cwd=d)
    jobs = dry_run_jobs(res.stdout)
    assert {"train_model", "explain", "score", "summary"} <= {r for r, _ in jobs}, jobs[:3]
    threads = {rule: int(m.group(1)) for rule, text in jobs
               if (m := re.search(r"threads: (\d+)", text))}
    assert threads.get("train_model") == min(load_config(d / "config.yaml")["threads"]["train"],
                                             cores), threads
    assert max(threads.values()) <= cores, threads
    mems = [int(m) for _, text in jobs for m in re.findall(r"\bmem_mb=(\d+)", text)]
    assert mems and max(mems) * cores <= slurm_cluster.memory_mb, max(mems)
    gpu_rules = {rule for rule, text in jobs if re.search(r"\bgpu=[1-9]", text)}
    assert gpu_rules <= {"explain"}, gpu_rules
    assert re.search(r"\bgpu=\d", dict(jobs)["explain"])       # explain.gpu reaches SLURM


def test_slurm_run_matches_the_local_run(runs):
    local, _, remote, _ = runs
    plan = plan_of(local)
    a, b = pd.read_csv(local / plan.summary(EXP)), pd.read_csv(remote / plan.summary(EXP))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for key in plan.score_keys(EXP):
        path = plan.scores(*key)
        frames_equal(pd.read_parquet(local / path), pd.read_parquet(remote / path), path)
    for key in plan.explain_keys(EXP):
        path = plan.saliency(*key)
        ga, gb = zarr.open_group(local / path, mode="r"), zarr.open_group(remote / path, mode="r")
        names = sorted(ga.array_keys())
        assert "saliency" in names and names == sorted(gb.array_keys()), path
        for name in names:
            np.testing.assert_array_equal(np.asarray(ga[name]), np.asarray(gb[name]),
                                          err_msg=f"{path}/{name}")


def test_slurm_run_went_through_slurm(runs):
    """Every rule that is not a target ran as SLURM jobs (folders `rule_<rule>`, or
    `group_<group>_...` when the profile groups rules), each its own SLURM job."""
    _, _, remote, _ = runs
    jobs = slurm_submissions(remote)
    folders = set(jobs.values())
    groups = PROFILE_CFG.get("groups") or {}
    for rule in ("image_store", "train_model", "predict", "select", "explain", "score",
                 "summary", "table", "figure"):
        want = f"group_{groups[rule]}_" if rule in groups else f"rule_{rule}"
        assert any(f == want or f.startswith(want) for f in folders), (rule, folders)
    if not groups:      # one SLURM job per job of the plan (the target rule runs locally)
        assert sum(f == "rule_score" for f in jobs.values()) == len(
            plan_of(remote).score_keys(EXP))
