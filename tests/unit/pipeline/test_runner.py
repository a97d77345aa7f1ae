"""The runners behind the rules: explain_to_store and score_store, called without Snakemake."""
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.jobs import SPEC, explain_job, score_job
from xaipipe.jobs import Entry, SummaryJob
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.image_store import open_images
from xaipipe.data.filters import requested_images
from xaipipe.pipeline.attribution import explain_to_store
from xaipipe.metrics import pointing_game, stability
from xaipipe.pipeline.scoring import read_provenance, score_store
from xaipipe.pipeline.summary import summarize_experiment
from xaipipe.models import load_model
from xaipipe.store import open_saliency

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 0, "val": 6}
    for v, p in (("original", {}), ("jpeg", {"quality": 75})):
        build_image_store("s", cfg, v, p, d / f"{v}.zarr", ["val"] if v != "original" else None,
                          progress=False)
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    torch.save(model.net.state_dict(), d / "w.pt")
    preds = predict(model, open_images(d / "original.zarr"), progress=False)
    preds.to_parquet(d / "all.parquet")
    preds.iloc[[4, 1]].to_parquet(d / "two.parquet")
    preds.iloc[:0].to_parquet(d / "none.parquet")
    return d


def test_requested_images_are_the_union_of_capped_selections(data):
    ids, t = requested_images([data / "two.parquet", data / "all.parquet"], (None, 2))
    assert ids.tolist() == [0, 1, 4]
    labels = pd.read_parquet(data / "all.parquet").set_index("image_id")["label"]
    assert t.tolist() == labels.loc[[0, 1, 4]].tolist()


def test_explain_then_score_with_what_each_metric_needs(data, tmp_path):
    for v in ("original", "jpeg"):
        explain_to_store(tmp_path / f"{v}.zarr", data / f"{v}.zarr", [data / "all.parquet"],
                         [data / "w.pt"], explain_job(max_images=(5,)), progress=False)
    a, b = open_saliency(tmp_path / "original.zarr"), open_saliency(tmp_path / "jpeg.zarr")
    assert a.index.tolist() == [0, 1, 2, 3, 4] and a.attrs["target_kind"] == "label"
    # stability: two stores, no model, no images
    inputs = {"saliency": tmp_path / "jpeg.zarr", "other_maps": tmp_path / "original.zarr",
              "selections": [data / "two.parquet"]}
    df = score_store(tmp_path / "st.parquet", inputs,
                     score_job("stability", {"reference": "original", "reduction": "sum"}))
    assert df["image_id"].tolist() == [1, 4]
    want = stability(torch.from_numpy(b.saliency[[1, 4]].compute()),
                     torch.from_numpy(a.saliency[[1, 4]].compute()))
    np.testing.assert_allclose(df["mse"], want["mse"], rtol=1e-12)
    prov = read_provenance(tmp_path / "st.parquet")
    assert prov["metric_name"] == "stability" and prov["metric_params"]["reference"] == "original"
    assert prov["method_params"] == {"objective": "logit"} and prov["torch_version"]
    # pointing game: masks from the image store, no model
    inputs = {"saliency": tmp_path / "original.zarr", "images": data / "original.zarr",
              "selections": [data / "all.parquet"]}
    pg = score_store(tmp_path / "pg.parquet", inputs,
                     score_job("pointing_game", {"tolerance": 15, "reference_size": 224,
                                                 "reduction": "abs_sum"}))
    masks = torch.from_numpy(open_images(data / "original.zarr").read_masks(np.arange(5)))
    np.testing.assert_array_equal(
        pg["hit"], pointing_game(torch.from_numpy(a.saliency.compute()), masks)["hit"])
    # insertion: model + images; chunking by the store does not change the result
    inputs = {"saliency": tmp_path / "original.zarr", "images": data / "original.zarr",
              "selections": [data / "all.parquet"], "model": [data / "w.pt"]}
    ins = score_store(tmp_path / "in.parquet", inputs, score_job(
        "insertion", {"steps": 5, "fill": "black", "score": "prob", "reduction": "abs_sum",
                      "norm_min": 0.05}, model=SPEC, batch_size=3))
    assert len(ins) == 5 and ins["auc"].between(0, 1).all()
    assert len(ins["curve"].iloc[0]) == 5
    # the summary reads exactly the experiment's images back
    job = SummaryJob("e", (Entry({"dataset": "s", "model": "m", "metric": "insertion",
                                  "method": "saliency", "variant": "original"},
                                 "insertion", 0, 2),), 200, 0.95, 0)
    summ = summarize_experiment([tmp_path / "in.parquet"], [data / "all.parquet"], job)
    assert summ["n"].tolist() == [2, 2]
    assert summ["mean"].iloc[0] == pytest.approx(ins["auc"].iloc[:2].mean())


def test_score_jobs_tell_the_metric_which_method_made_the_maps(data, tmp_path):
    """The store's method_name reaches the metric (MetricInputs.method): in compat the HS
    scores a smooth mask's x_E unscaled and any other method's divided by its max, as the
    ShearletX reference does."""
    from xaipipe.metrics import hallucination_score
    images = open_images(data / "original.zarr", "val")
    for method, params, normalize in (("smooth_mask", {"steps": 2, "levels": 2}, False),
                                      ("saliency", {"objective": "logit"}, "max")):
        store = tmp_path / f"{method}.zarr"
        explain_to_store(store, data / "original.zarr", [data / "all.parquet"], [data / "w.pt"],
                         explain_job(method=method, params=params, max_images=(3,),
                                     provenance={"method": method}), progress=False)
        s = open_saliency(store)
        assert s.attrs["method_name"] == method
        df = score_store(tmp_path / f"{method}.parquet",
                         {"saliency": store, "images": data / "original.zarr",
                          "selections": [data / "all.parquet"]},
                         score_job("hallucination_score", {"compat": True, "size": None}))
        x = torch.from_numpy(images.images[images.positions(s.index)]).float() / 255
        maps = torch.from_numpy(s.saliency.compute())
        want = hallucination_score(x, maps, compat=True, size=None, normalize=normalize)
        np.testing.assert_array_equal(df["hs"], want)


def test_empty_selection_gives_empty_store_and_scores(data, tmp_path):
    explain_to_store(tmp_path / "e.zarr", data / "original.zarr", [data / "none.parquet"],
                     [data / "w.pt"], explain_job(), progress=False)
    assert open_saliency(tmp_path / "e.zarr").saliency.shape[0] == 0
    df = score_store(tmp_path / "s.parquet",
                     {"saliency": tmp_path / "e.zarr", "images": data / "original.zarr",
                      "selections": [data / "all.parquet"], "model": [data / "w.pt"]},
                     score_job("insertion", {"steps": 5}, model=SPEC))
    assert len(df) == 0 and (tmp_path / "s.parquet").exists()



def test_allocated_threads_follow_slurm_and_affinity(monkeypatch):
    from xaipipe.parallel import allocated_cpus, job_threads
    from xaipipe.pipeline.scoring import _workers
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    n = allocated_cpus()
    assert n == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert allocated_cpus() == 1 and job_threads(8) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert allocated_cpus() == n and job_threads(64) == n and job_threads(1) == 1
    # worker processes get one torch thread each (those of a scheduler started elsewhere too:
    # each task sets it); the job's own process gets them all
    assert _workers("local", 4) == (4, 1) and _workers("local", 1) == (1, 1)
    assert _workers("synchronous", 4) == (1, 4) and _workers("threads", 3) == (3, 1)
    assert _workers("tcp://127.0.0.1:8786", 4) == (1, 1)
    # a model on CUDA: the job's own process, not one CUDA context per local worker
    assert _workers("local", 4, cuda=True) == (1, 4) and _workers(None, 4, cuda=True) == (1, 4)


# a job's set-up, then 64 MiB tensors made (every page touched) and freed: 16 rounds to settle
# (glibc's bins may take several before a freed block fits the next aligned request), then the
# page faults (minor faults) of 8 more
_FAULTS = """
import resource
import torch
from xaipipe.pipeline import setup_job
setup_job(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    x = torch.ones(16 << 20); del x
a = faults()
for _ in range(8):
    x = torch.ones(16 << 20); del x
print(faults() - a)
"""


def _job_faults(allocator):
    env = {**os.environ, "XAIPIPE_ALLOCATOR": allocator}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


def test_a_job_reuses_the_memory_it_freed_without_page_faults():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: retain_freed_memory changes nothing here")
    pages = 8 * (64 << 20) // resource.getpagesize()
    system = _job_faults("system")
    if system < pages // 2:
        pytest.skip(f"glibc's default faulted {system} times for {pages} fresh pages "
                    "(huge pages?): nothing to spare here")
    assert _job_faults("retain") < pages // 100 < system


def _worker_faults():
    """In a Dask worker: the page faults of 8 rounds of 16 MiB tensors made and freed, after
    16 rounds to settle (as _FAULTS), and whether distributed would pause it on memory. (A
    task runs in a thread of the worker, whose glibc arena maps blocks over 64 MB on its own
    whatever the settings: the probe stays below.)"""
    import resource

    import torch
    from distributed import get_worker
    for _ in range(16):
        x = torch.ones(4 << 20)
        del x
    a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        x = torch.ones(4 << 20)
        del x
    pause = get_worker().memory_manager.memory_pause_fraction
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a, pause


def test_local_cluster_workers_follow_the_jobs_allocator(monkeypatch):
    """A score job's worker processes keep freed memory too under ``retain`` (distributed's
    nanny would set MALLOC_TRIM_THRESHOLD_=65536: every large tensor faulted in again), and
    are not paused for the memory they keep; under ``system``, distributed's defaults."""
    import dask
    from xaipipe.parallel import dask_client
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    pages = 8 * (16 << 20) // resource.getpagesize()
    got, before = {}, dict(os.environ)
    for allocator in ("retain", "system"):
        monkeypatch.setenv("XAIPIPE_ALLOCATOR", allocator)
        with dask_client("local", 2) as client:
            got[allocator] = client.submit(_worker_faults, pure=False).result()
        assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") \
            == 65536                                        # the config is only for the cluster
        assert {k: v for k, v in os.environ.items() if k != "XAIPIPE_ALLOCATOR"} == \
            {k: v for k, v in before.items() if k != "XAIPIPE_ALLOCATOR"}   # and its env
    if got["system"][0] < pages // 2:
        pytest.skip(f"glibc's default faulted {got['system'][0]} times for {pages} pages")
    assert got["retain"][0] < pages // 100 < got["system"][0]
    assert got["retain"][1] is False and got["system"][1] == 0.8


def test_a_bad_allocator_is_named(monkeypatch):
    from xaipipe.parallel import allocator_requested
    monkeypatch.setenv("XAIPIPE_ALLOCATOR", "jemalloc")
    with pytest.raises(ValueError, match="XAIPIPE_ALLOCATOR='jemalloc'"):
        allocator_requested()
    monkeypatch.delenv("XAIPIPE_ALLOCATOR")
    assert allocator_requested() == "retain"


def _make_resume_dry(args, *make_vars, env=None):
    """The snakemake commands `make resume ARGS=...` would run (make -n: nothing runs), with
    this interpreter's environment (its stamp file is not rebuilt: -o)."""
    import shutil
    from pathlib import Path
    if shutil.which("make") is None:
        pytest.skip("no make")
    root, venv = Path(__file__).resolve().parents[3], Path(sys.prefix)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CORES", "MAKEFLAGS", "MFLAGS", "SNAKEMAKE_PROFILE")}
    out = subprocess.run(["make", "-s", "-n", "-C", str(root), "-o",
                          str(venv / ".installed-stamp"), "resume", f"VENV={venv}",
                          f"ARGS={args}", *make_vars],
                         capture_output=True, text=True, check=True, env={**clean, **(env or {})})
    run = [line for line in out.stdout.splitlines() if "--rerun-incomplete" in line]
    assert len(run) == 1, out.stdout
    return run[0].split()


def test_make_resume_leaves_the_cores_of_a_profile_alone():
    """`make resume` passes --cores (default all) to a local rerun, but not to one with a
    profile: --cores on the command line would override profiles/slurm's `cores`, the CPUs
    one SLURM job may ask for, with the submitting machine's count (jobs PENDING for ever).
    CORES given to make explicitly still goes through."""
    local = _make_resume_dry("tiny --configfile c.yaml")
    assert local[local.index("--cores") + 1] == "all"
    for profile in ("--profile profiles/slurm", "--profile=profiles/slurm"):
        assert "--cores" not in _make_resume_dry(f"tiny {profile}")
    assert "--cores" not in _make_resume_dry("tiny", env={"SNAKEMAKE_PROFILE": "profiles/slurm"})
    given = _make_resume_dry("tiny --profile profiles/slurm", "CORES=8")
    assert given[given.index("--cores") + 1] == "8"


def test_dashboard_without_bokeh_is_a_config_error_naming_the_key_and_package(monkeypatch):
    """distributed without bokeh serves no dashboard (only a page saying bokeh is missing):
    ``score.dashboard: true`` stops before any cluster starts, naming the key and the package
    to install; so does a bokeh older than distributed needs."""
    import importlib.metadata
    import importlib.util

    from xaipipe.errors import ConfigError
    from xaipipe.parallel import dask_client
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bokeh" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"score\.dashboard.*bokeh") as err:
        with dask_client("local", 2, dashboard=True):
            pass
    assert "pip install" in str(err.value)
    # bokeh importable, but too old for distributed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        real_find_spec("os") if name == "bokeh" else real_find_spec(name, *a)))
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.4.3" if name == "bokeh" else real_version(name))
    with pytest.raises(ConfigError, match=r"score\.dashboard.*bokeh==2\.4\.3"):
        with dask_client("local", 1, dashboard=True):
            pass
    # off (the default), or on another scheduler, nothing is checked
    with dask_client("local", 1) as client:
        assert client is None


def test_the_dashboard_binds_localhost_and_its_link_is_logged(monkeypatch, caplog):
    """With bokeh there (checked away here: it is not installed), the local cluster's
    dashboard listens on 127.0.0.1 only, on a free port, and the job's log has its link."""
    import logging
    import urllib.parse

    import xaipipe.parallel
    monkeypatch.setattr(xaipipe.parallel, "check_dashboard", lambda: None)
    with caplog.at_level(logging.INFO, logger="xaipipe"):
        with xaipipe.parallel.dask_client("local", 1, dashboard=True) as client:
            link = client.dashboard_link
            sockets = client.cluster.scheduler.http_server._sockets.values()
            bound = {s.getsockname()[0] for s in sockets}
    assert f"Dask dashboard: {link}" in caplog.text
    assert urllib.parse.urlsplit(link).hostname == "127.0.0.1" and bound == {"127.0.0.1"}


def test_worker_processes_and_a_scheduler_elsewhere_give_the_same_scores(data, tmp_path,
                                                                           monkeypatch):
    """Chunks scored by worker processes (local cluster, and an external scheduler whose
    workers run in another folder, so relative paths would not resolve) equal the in-process
    result exactly."""
    from distributed import Client, LocalCluster
    explain_to_store(tmp_path / "m.zarr", data / "original.zarr", [data / "all.parquet"],
                     [data / "w.pt"], explain_job(batch_size=2), progress=False)
    monkeypatch.chdir(tmp_path)
    rel = {"saliency": "m.zarr", "images": str(data / "original.zarr"),
           "selections": [str(data / "all.parquet")], "model": [str(data / "w.pt")]}
    params = {"steps": 5, "fill": "black", "score": "prob", "reduction": "abs_sum",
              "norm_min": 0.05}
    ref = score_store("s.parquet", rel, score_job("insertion", params, model=SPEC))
    two = score_store("l.parquet", rel, score_job("insertion", params, model=SPEC,
                                                  scheduler="local"), threads=2)
    pd.testing.assert_frame_equal(ref, two)
    monkeypatch.chdir("/")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        monkeypatch.chdir(tmp_path)
        ext = score_store("e.parquet", rel, score_job("insertion", params, model=SPEC,
                                                      scheduler=cluster.scheduler_address))
        cwd = client.run(lambda: __import__("os").getcwd())
    assert set(cwd.values()) == {"/"}
    pd.testing.assert_frame_equal(ref, ext)


def test_a_worker_killed_mid_job_is_replaced_and_the_scores_are_unchanged(data, tmp_path):
    """SIGKILL of a Dask worker process while a score job runs on it: the nanny starts a new
    worker, the scheduler reruns the lost chunks, the scores equal an undisturbed run's."""
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster
    explain_to_store(tmp_path / "m.zarr", data / "original.zarr", [data / "all.parquet"],
                     [data / "w.pt"], explain_job(batch_size=1), progress=False)
    inputs = {"saliency": tmp_path / "m.zarr", "images": data / "original.zarr",
              "selections": [data / "all.parquet"], "model": [data / "w.pt"]}
    params = {"variant": "pair", "min_pred_value": 0.0}
    ref = score_store(tmp_path / "ref.parquet", inputs, score_job("pic", params, model=SPEC))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)                  # worker address -> pid
        out = {}
        job = threading.Thread(target=lambda: out.update(df=score_store(
            tmp_path / "k.parquet", inputs,
            score_job("pic", params, model=SPEC, scheduler=cluster.scheduler_address))))
        job.start()
        deadline = time.time() + 120
        busy = []
        while time.time() < deadline and not busy:
            busy = [w for w, keys in client.processing().items() if keys]
            time.sleep(0.05)
        assert busy, "the job never started on the cluster"
        os.kill(pids[busy[0]], signal.SIGKILL)           # the worker running a chunk
        job.join(timeout=600)
        assert set(client.run(os.getpid).values()) - set(pids.values())   # a new worker
    pd.testing.assert_frame_equal(out["df"], ref)
