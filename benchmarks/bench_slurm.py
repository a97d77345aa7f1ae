"""The tiny workflow through SLURM on one node against the same run locally (goal: <= 1.5x).

Runs ``snakemake --configfile <config> <experiment>`` twice, each in a fresh working directory
holding the repository's config.yaml (as tests/workflow/test_workflow.py's ``workdir()`` prepares
one): locally with ``--cores`` = the SLURM profile's ``cores`` (2), and through
``--profile profiles/slurm`` on a one-node cluster. The cluster is the one
tests/helpers/slurm_cluster.py starts (munged, slurmctld, slurmd as root, everything in a temporary
folder; stopped again, only the daemons started here) or, with ``--cluster running``, one that
already answers ``sinfo``. Prints the jobs of each run, both wall times, the ratio SLURM/local
against the goal, and whether the outputs are equal: summary.csv, per_image.parquet and the
tables byte for byte or exactly, every per-image score file and every store array exactly
(the comparison of tests/workflow/test_slurm.py). Then where the SLURM run's time went, per SLURM job
(submitted / started / ended, from slurmctld's log or ``scontrol``), against the stages
of the local run.

    .venv/bin/python benchmarks/bench_slurm.py [--config tests/configs/tiny.yaml]
        [--experiment tiny] [--cluster start|running] [--keep] [--dir /tmp/x]
        [--order local-first|slurm-first]

Default config: tests/configs/tiny.yaml (the 58-job tiny run of the workflow tests);
tests/configs/slurm_tiny.yaml is the SLURM test's 11-job run. Starting a cluster needs root
and Debian's slurm-wlm + munge (docs/cluster.md, "A local SLURM cluster"). About 6 minutes for
the tiny run on a 2-core VM (the cluster's start included); run it on an otherwise idle
machine: the load average seen during each run is printed, since other work on the CPUs
slows one run and not the other.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import slurm_cluster  # noqa: E402  (tests/helpers: the one-node cluster)
from helpers.workflow import frames_equal, slurm_submissions, snakemake, workdir  # noqa: E402
from xaipipe.config import Plan, load_config  # noqa: E402

PROFILE = ROOT / "profiles" / "slurm"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
GOAL = 1.5
#: the workflow's stages, as profiles/slurm groups them (used for the local breakdown too)
STAGES = {"image_store": "prepare", "train_model": "prepare", "predict": "prepare",
          "select": "prepare", "explain": "explain", "score": "evaluate",
          "summary": "evaluate", "table": "evaluate", "figure": "evaluate"}


def default_experiment(config: Path) -> str:
    cfg = yaml.safe_load(config.read_text())
    run = cfg.get("run") or list(cfg.get("experiments", {}))
    if len(run) != 1:
        sys.exit(f"{config}: name the experiment with --experiment (run: {run})")
    return run[0]


# -- one run --------------------------------------------------------------------------------
def run_workflow(d: Path, config: Path, exp: str, args: list[str], timeout: float):
    """(wall s, start time, Snakemake's output, 1-min load averages seen every 5 s) of one
    run in the fresh folder ``d``."""
    workdir(d)
    loads, stop = [], threading.Event()

    def sample():
        while not stop.wait(5):
            loads.append(os.getloadavg()[0])
    sampler = threading.Thread(target=sample, daemon=True)
    start = dt.datetime.now()
    t0 = time.monotonic()
    sampler.start()
    try:
        res = snakemake("--configfile", str(config), *args, exp, cwd=d, timeout=timeout)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        sys.exit(f"run in {d} failed:\n{e}")
    finally:
        stop.set()
    wall = time.monotonic() - t0
    out = res.stdout + res.stderr
    (d / "snakemake.out").write_text(out)
    return wall, start, out, loads


def jobs_done(out: str) -> str:
    """'N' from Snakemake's last 'N of M steps (100%) done'."""
    m = re.findall(r"(\d+) of (\d+) steps \(100%\) done", out)
    return m[-1][0] if m else "?"


def planned_jobs(out: str) -> dict[str, int]:
    """rule -> count of the first 'Job stats' table of a run's output."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total\s+\d+", out, re.S)
    return {r: int(n) for r, n in re.findall(r"^(\w+)\s+(\d+)$", m.group(1), re.M)} if m else {}


# -- output equality --------------------------------------------------------------------------
def compare(local: Path, remote: Path, config: Path, exp: str) -> tuple[list[str], int]:
    """(the differences between the two runs' outputs, empty when equal; files compared).
    Compared: tests/workflow/test_slurm.py's set (summary, per-image scores, store arrays), the
    per-image table and the table files."""
    plan = Plan(load_config(local / "config.yaml", config))
    bad, n = [], 0

    def check(what, fn):
        nonlocal n
        n += 1
        try:
            fn()
        except (AssertionError, OSError, KeyError, ValueError, TypeError) as e:
            bad.append(f"{what}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}")

    s = plan.summary(exp)
    check(s, lambda: pd.testing.assert_frame_equal(pd.read_csv(local / s),
                                                   pd.read_csv(remote / s), check_exact=True))
    p = plan.per_image(exp)
    check(p, lambda: _longframes_equal(pd.read_parquet(local / p),
                                        pd.read_parquet(remote / p), p))
    for t in plan.experiments[exp].tables:
        for f in plan.table(exp, t).values():
            check(f, lambda f=f: _same_bytes(local / f, remote / f))
    for key in plan.score_keys(exp):
        f = plan.scores(*key)
        check(f, lambda f=f: frames_equal(pd.read_parquet(local / f),
                                           pd.read_parquet(remote / f), f))
    for key in plan.explain_keys(exp):
        f = plan.saliency(*key)
        check(f, lambda f=f: _stores_equal(local / f, remote / f, f))
    return bad, n


def _longframes_equal(a: pd.DataFrame, b: pd.DataFrame, path: str):
    """Equal tables whose array cells differ in length between rows (per_image.parquet: the
    curves of several metrics), cell by cell."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, path
    for c in a.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype == object:
            same = all(np.array_equal(u, v, equal_nan=True) if isinstance(u, np.ndarray)
                       else (u == v or (u != u and v != v)) for u, v in zip(x, y))
            assert same, f"{path}: column {c}"
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{path}: column {c}")


def _same_bytes(a: Path, b: Path):
    assert a.read_bytes() == b.read_bytes(), f"{a.name} differs"


def _stores_equal(a: Path, b: Path, path: str):
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(ga.array_keys())
    assert "saliency" in names and names == sorted(gb.array_keys()), path
    for name in names:
        np.testing.assert_array_equal(np.asarray(ga[name]), np.asarray(gb[name]),
                                      err_msg=f"{path}/{name}")


# -- where the time went ----------------------------------------------------------------------
STAMP = r"\[(\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})\]"


def local_stages(out: str) -> dict[str, tuple[dt.datetime, dt.datetime, int]]:
    """stage -> (first job started, last job finished, jobs) of a local run's output."""
    starts, ends, rule_of = {}, {}, {}
    for block in re.split(r"(?=^" + STAMP + r"$)", out, flags=re.M):
        m = re.match(STAMP, block)
        if not m:
            continue
        t = dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        r = re.search(r"^\s*(?:local)?rule (\w+):\n(?:.*\n)*?\s+jobid: (\d+)", block, re.M)
        if r:
            rule_of[r.group(2)], starts[r.group(2)] = r.group(1), t
        for j in re.findall(r"Finished jobid: (\d+)", block):
            ends[j] = t
    stages = {}
    for j, rule in rule_of.items():
        st = STAGES.get(rule)
        if st is None or j not in ends:
            continue
        a, b, n = stages.get(st, (starts[j], ends[j], 0))
        stages[st] = (min(a, starts[j]), max(b, ends[j]), n + 1)
    return stages


def slurm_times(jobids, state: Path | None, env) -> dict[str, dict[str, dt.datetime]]:
    """SLURM job id -> {'submit', 'start', 'end'}: from slurmctld's log when this script
    started the cluster, else from `scontrol show job` (slurmctld forgets a job MinJobAge
    after its end, so early jobs of a long run may be missing there)."""
    times: dict[str, dict[str, dt.datetime]] = {j: {} for j in jobids}
    log = state / "slurmctld.log" if state else None
    if log and log.exists():
        pat = re.compile(r"^\[([\d\-T:.]+)\] (?:.*?)(_slurm_rpc_submit_batch_job:|sched: Allocate"
                         r"|_start_job: Started|_job_complete:) JobId=(\d+)(.*)$")
        for line in log.read_text(errors="replace").splitlines():
            m = pat.match(line)
            if m and m.group(3) in times:
                t = dt.datetime.fromisoformat(m.group(1))
                key = {"_slurm_rpc_submit_batch_job:": "submit", "sched: Allocate": "start",
                       "_start_job: Started": "start", "_job_complete:": "end"}[m.group(2)]
                times[m.group(3)].setdefault(key, t)
        return times
    for j in jobids:
        res = subprocess.run(["scontrol", "show", "job", j], capture_output=True, text=True,
                             env=env)
        for key, field in (("submit", "SubmitTime"), ("start", "StartTime"),
                           ("end", "EndTime")):
            m = re.search(field + r"=(\S+)", res.stdout)
            if m and m.group(1)[:1].isdigit():
                times[j][key] = dt.datetime.fromisoformat(m.group(1))
    return times


def breakdown(local_out: str, local_start, remote: Path, remote_start, remote_wall,
              state, env):
    print("\nwhere the time went (s from each run's start):")
    stages = local_stages(local_out)
    for st in ("prepare", "explain", "evaluate"):
        if st in stages:
            a, b, n = stages[st]
            print(f"  local  {st:<9} {n:3d} jobs  {(a - local_start).total_seconds():6.0f} "
                  f"-> {(b - local_start).total_seconds():6.0f}  ({(b - a).total_seconds():.0f} s)")
    try:
        jobs = slurm_submissions(remote)
    except OSError:
        jobs = {}
    times = slurm_times(list(jobs), state, env)
    busy = 0.0
    for j, folder in sorted(jobs.items(), key=lambda kv: int(kv[0])):
        t = times.get(j, {})
        name = re.sub(r"_[0-9a-f-]{20,}$", "", folder)

        def at(k):
            return f"{(t[k] - remote_start).total_seconds():6.0f}" if k in t else "     ?"
        run = (t["end"] - t["start"]).total_seconds() if {"start", "end"} <= set(t) else None
        busy += run or 0.0
        print(f"  SLURM  job {j:>4}: submitted {at('submit')}, started {at('start')}, "
              f"ended {at('end')}" + (f" (ran {run:4.0f} s)" if run is not None else "")
              + f"  {name}")
    spans = sorted(((t["start"] - remote_start).total_seconds(),
                    (t["end"] - remote_start).total_seconds())
                   for t in times.values() if {"start", "end"} <= set(t))
    if spans and len(spans) == len(jobs):
        covered, (a, b) = 0.0, spans[0]
        for x, y in spans[1:]:
            if x > b:
                covered, a = covered + b - a, x
            b = max(b, y)
        covered += b - a
        print(f"  SLURM  {len(jobs)} SLURM jobs ran {busy:.0f} s in all; no SLURM job running "
              f"for {remote_wall - covered:.0f} s of the {remote_wall:.0f} s run (the "
              f"submitting Snakemake's start-up, queueing, status polling: a job's end is "
              f"noticed at the next squeue check)")


# -- main -------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=TINY,
                    help="overlay (--configfile); default tests/configs/tiny.yaml")
    ap.add_argument("--experiment", help="target experiment (default: the overlay's run:)")
    ap.add_argument("--cluster", choices=("start", "running"), default="start",
                    help="start: a one-node cluster of tests/helpers/slurm_cluster.py (reused if "
                         "`sinfo` already answers), stopped at the end; running: only an "
                         "existing one (SLURM_CONF or /run/slurm/conf), neither started "
                         "nor stopped")
    ap.add_argument("--order", choices=("local-first", "slurm-first"), default="local-first",
                    help="which run goes first (default local-first)")
    ap.add_argument("--dir", type=Path, help="where the work dirs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dirs")
    ap.add_argument("--timeout", type=float, default=3600, help="per run, s")
    a = ap.parse_args()
    config = a.config.resolve()
    exp = a.experiment or default_experiment(config)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    cores = profile["cores"]

    if a.dir:
        a.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench_slurm-", dir=a.dir))
    try:
        if a.cluster == "running":
            if not slurm_cluster.sinfo_answers():
                sys.exit("--cluster running: `sinfo` does not answer (export SLURM_CONF=...)")
            cpus, mem = slurm_cluster.node_resources()
            cm = _Reused(slurm_cluster.Cluster(env=dict(os.environ), cpus=cpus, memory_mb=mem))
        else:
            cm = slurm_cluster.one_node_cluster()
        with cm as cluster:
            _bench(a, config, exp, profile, cores, base, cluster)
    except slurm_cluster.SlurmUnavailable as e:
        sys.exit(f"no SLURM cluster: {e}")
    finally:
        if a.keep:
            print(f"work dirs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


class _Reused:
    """A context manager around an existing cluster: nothing to start or stop."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __enter__(self):
        return self.cluster

    def __exit__(self, *exc):
        return False


def _bench(a, config, exp, profile, cores, base, cluster):
    print(f"snakemake {md.version('snakemake')}, snakemake-executor-plugin-slurm "
          f"{md.version('snakemake-executor-plugin-slurm')}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    started = ", ".join(cluster.started) or "nothing (reused a running cluster)"
    print(f"SLURM node: {cluster.cpus} CPUs, {cluster.memory_mb} MB; started here: {started}")
    groups = sorted(set((profile.get("groups") or {}).values()))
    print(f"profile {PROFILE.relative_to(ROOT)}: cores {cores}, groups "
          f"{'on (' + ', '.join(groups) + ')' if groups else 'off'}")
    print(f"config {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}, "
          f"experiment {exp}; local run: --cores {cores}")
    runs = {"local": (base / "local", ["--cores", str(cores)]),
            "slurm": (base / "slurm", ["--profile", str(PROFILE)])}
    order = ["local", "slurm"] if a.order == "local-first" else ["slurm", "local"]
    result = {}
    for name in order:
        d, args = runs[name]
        d.mkdir()
        print(f"running {name} in {d} ...", flush=True)
        result[name] = run_workflow(d, config, exp, args, a.timeout)
        loads = result[name][3]
        print(f"  {result[name][0]:.1f} s; 1-min load average during the run: "
              + (f"mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f}" if loads else "?")
              + f" (the run itself: up to {cores}; more means other work shared the CPUs)",
              flush=True)
    (t_local, s_local, out_local, _), (t_slurm, s_slurm, out_slurm, _) = result["local"], \
        result["slurm"]
    planned = planned_jobs(out_local)
    print(f"\njobs run: local {jobs_done(out_local)}, SLURM {jobs_done(out_slurm)} "
          f"(planned: {sum(planned.values()) or '?'}; "
          f"{', '.join(f'{r} {n}' for r, n in planned.items())})")
    n_slurm = len(slurm_submissions(runs["slurm"][0]))
    print(f"SLURM jobs submitted: {n_slurm}")
    print(f"local  wall time: {t_local:7.1f} s")
    print(f"SLURM  wall time: {t_slurm:7.1f} s")
    ratio = t_slurm / t_local
    print(f"ratio SLURM/local: {ratio:.2f}x   [goal <= {GOAL}x: "
          f"{'reached' if ratio <= GOAL else 'NOT reached'}]")
    bad, n = compare(runs["local"][0], runs["slurm"][0], config, exp)
    print(f"outputs equal: {not bad} ({n - len(bad)} of {n} files/stores identical)")
    for b in bad:
        print(f"  differs: {b}")
    breakdown(out_local, s_local, runs["slurm"][0], s_slurm, t_slurm, cluster.state,
              cluster.env)
    if a.keep and cluster.state:            # the cluster's folder goes when it stops
        for f in cluster.state.glob("*.log"):
            shutil.copy(f, base / f"cluster-{f.name}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
