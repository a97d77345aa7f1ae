"""What a job asks of the processes that run its work: the Dask workers of a scheduler started
elsewhere (reproducible mode, torch threads), the per-process model cache, each rule script's
set-up, and reproducible mode's deterministic algorithms per device."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xaipipe import repro
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.image_store import open_images
from xaipipe.errors import ConfigError
from xaipipe.pipeline.attribution import explain_to_store
from xaipipe.pipeline.scoring import score_store
from xaipipe.models import load_model

from helpers.jobs import SPEC, explain_job, score_job

ROOT = Path(__file__).resolve().parents[3]   # the repository
#: the variables torch reads when it starts (a worker must be started with them)
STARTUP = {k: v for k, v in repro.ENV.items() if k != "XAIPIPE_REPRODUCIBLE"}
INSERTION = {"steps": 5, "fill": "black", "score": "prob", "reduction": "abs_sum",
             "norm_min": 0.05}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The inputs of an insertion score job on 4 images (absolute paths)."""
    d = tmp_path_factory.mktemp("workers")
    build_image_store("s", {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 0,
                            "val": 4}, "original", {}, d / "original.zarr", progress=False)
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    torch.save(model.net.state_dict(), d / "w.pt")
    predict(model, open_images(d / "original.zarr"), progress=False).to_parquet(
        d / "all.parquet")
    explain_to_store(d / "m.zarr", d / "original.zarr", [d / "all.parquet"], [d / "w.pt"],
                     explain_job(batch_size=2), progress=False)
    return {"saliency": d / "m.zarr", "images": d / "original.zarr",
            "selections": [d / "all.parquet"], "model": [d / "w.pt"]}


@contextlib.contextmanager
def external_cluster(worker_env: dict):
    """A scheduler with one worker process started apart from the job (as dask-jobqueue's
    would be): the worker's environment is this process's without xaipipe's variables, plus
    ``worker_env``. This process's environment is restored afterwards (the nanny writes its
    pre-spawn environment into it)."""
    import dask
    from distributed import Client, LocalCluster
    saved = dict(os.environ)
    try:
        for k in (*repro.ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.pop(k, None)
        cfg = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_env.items()}
        with dask.config.set(cfg), \
                LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                             host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster) as client:
            os.environ.clear()
            os.environ.update(saved)
            yield cluster.scheduler_address, client
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _torch_state():
    """The settings a task left in its worker process (run as a task: torch's thread count
    is read on the thread that runs the tasks)."""
    import os

    import torch
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "mkldnn": torch.backends.mkldnn.enabled,
            "threads": torch.get_num_threads(),
            "aten": torch.backends.cpu.get_cpu_capability(),
            "env": os.environ.get("XAIPIPE_REPRODUCIBLE")}


def test_external_workers_use_one_torch_thread(scored, tmp_path):
    """docs/cluster.md: a worker process uses one torch thread, also the workers of a scheduler the
    user started (their own environment said 2 here)."""
    own = {"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}
    with external_cluster(own) as (address, client):
        assert client.submit(_torch_state, pure=False).result()["threads"] == 2
        score_store(tmp_path / "s.parquet", scored,
                    score_job("insertion", INSERTION, model=SPEC, scheduler=address))
        state = client.submit(_torch_state, pure=False).result()
    assert state["threads"] == 1 and not state["deterministic"]


def test_reproducible_job_on_external_workers_enables_the_mode_there(scored, tmp_path,
                                                                      monkeypatch):
    """A reproducible job's tasks switch the mode on in workers started with the variables
    torch reads at import (but not XAIPIPE_REPRODUCIBLE, the job process's flag): strict
    deterministic algorithms on CPU, oneDNN off, one thread, ATen's portable kernels; the
    scores equal those of a default-mode job to within the documented tolerance."""
    own = {"OMP_NUM_THREADS": 2, "MKL_NUM_THREADS": 2}
    with external_cluster({**STARTUP, **own}) as (address, client):
        default = score_store(tmp_path / "d.parquet", scored, score_job(
            "insertion", INSERTION, model=SPEC, scheduler=address))
        assert client.submit(_torch_state, pure=False).result()["deterministic"] is False
        monkeypatch.setenv("XAIPIPE_REPRODUCIBLE", "1")           # the job's process only
        rep = score_store(tmp_path / "r.parquet", scored, score_job(
            "insertion", INSERTION, model=SPEC, scheduler=address))
        state = client.submit(_torch_state, pure=False).result()
    assert state == {"deterministic": True, "warn_only": False, "mkldnn": False,
                     "threads": repro.REPRO_THREADS, "aten": "DEFAULT", "env": None}
    assert rep["image_id"].tolist() == default["image_id"].tolist()
    torch.testing.assert_close(torch.tensor(rep["auc"].to_numpy()),
                               torch.tensor(default["auc"].to_numpy()),
                               rtol=repro.TOLERANCE["rtol"] * 100, atol=1e-4)


def test_reproducible_job_on_workers_without_the_variables_stops_saying_how_to_start_them(
        scored, tmp_path, monkeypatch):
    with external_cluster({}) as (address, client):
        monkeypatch.setenv("XAIPIPE_REPRODUCIBLE", "1")
        with pytest.raises(ConfigError) as err:
            score_store(tmp_path / "r.parquet", scored, score_job(
                "insertion", INSERTION, model=SPEC, scheduler=address))
        state = client.submit(_torch_state, pure=False).result()
    msg = str(err.value)
    assert "reproducible" in msg and "Dask worker" in msg
    for k, v in STARTUP.items():
        assert f"{k}={v}" in msg
    assert "dask worker" in msg and "job_script_prologue" in msg
    assert not state["deterministic"]                 # nothing half-enabled
    assert not (tmp_path / "r.parquet").exists()


def test_load_spec_reloads_a_rewritten_weights_file(tmp_path):
    """The per-process model cache knows a weights file by (absolute path, size, mtime):
    a retrained model written over the same path (in place, or atomically replaced) is
    loaded again; an unchanged file is not."""
    from xaipipe.jobs import ModelSpec
    from xaipipe.models.spec import _cached, load_spec
    spec = ModelSpec("demo_resnet18", None, {"num_classes": 3, "width": 4})
    path = tmp_path / "w.pt"

    def write(seed, target=path):
        torch.manual_seed(seed)
        net = load_model("demo_resnet18", weights="random", num_classes=3, width=4).net
        torch.save(net.state_dict(), target)
        return next(net.parameters()).detach().clone()

    def first_param(model):
        return next(model.parameters()).detach()

    _cached.cache_clear()
    w0 = write(0)
    a = load_spec(spec, [path], "cpu")
    assert load_spec(spec, [path], "cpu") is a and _cached.cache_info().misses == 1
    st = path.stat()
    w1 = write(1)                                                 # rewritten in place
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # coarse-clock guard
    b = load_spec(spec, [path], "cpu")
    assert b is not a and torch.equal(first_param(b).cpu(), w1)
    assert torch.equal(first_param(a).cpu(), w0)
    w2 = write(2, tmp_path / "new.pt")
    os.replace(tmp_path / "new.pt", path)                          # atomically replaced
    c = load_spec(spec, [path], "cpu")
    assert c is not b and torch.equal(first_param(c).cpu(), w2)
    assert load_spec(spec, [path], "cpu") is c and _cached.cache_info().misses == 3


_SCRIPTS = r"""
import json, runpy, sys, types
import torch
import xaipipe.pipeline as pipeline

WORK = ("image_store", "train_model", "predictions", "selection", "explain_store", "score",
        "summary", "table", "figure", "lpi_reference_set")
seen = []
real_setup = pipeline.setup_job
def setup_job(threads):
    seen.append(["setup_job", threads])
    return real_setup(threads)
pipeline.setup_job = setup_job
for name in WORK:
    def work(*a, _name=name, **k):
        seen.append([_name, torch.get_num_threads()])
    setattr(pipeline, name, work)

class Paths(list):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return "/nonexistent/" + name
    def items(self):
        return []

out = {}
for path in sys.argv[3:]:
    torch.set_num_threads(4)
    seen.clear()
    snakemake = types.SimpleNamespace(
        threads=int(sys.argv[1]), log=[sys.argv[2] + "/" + path.rsplit("/", 1)[-1] + ".log"],
        input=Paths(["/nonexistent/in"]), output=Paths(["/nonexistent/out"]),
        params=types.SimpleNamespace(job=types.SimpleNamespace(sweep=False)),
        wildcards=types.SimpleNamespace(table="t"))
    runpy.run_path(path, init_globals={"snakemake": snakemake}, run_name="__main__")
    out[path] = list(seen)
print(json.dumps(out))
"""


def test_every_rule_script_sets_up_its_job_first(tmp_path):
    """Each script under scripts/ calls pipeline.setup_job(snakemake.threads) before its
    work: the work runs with torch's threads set from the rule's threads (1 here, where torch
    had 4), not left at whatever the process had."""
    scripts = sorted(ROOT.glob("scripts/*.py"))
    assert scripts
    env = {k: v for k, v in os.environ.items() if k not in repro.ENV}
    res = subprocess.run([sys.executable, "-c", _SCRIPTS, "1", str(tmp_path),
                          *map(str, scripts)], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(seen) == len(scripts)
    for path, calls in seen.items():
        name = Path(path).name
        assert len(calls) == 2 and calls[0] == ["setup_job", 1], (name, calls)
        assert calls[1][1] == 1, (name, calls)          # the work saw the job's threads


_ENABLE = r"""
import json, logging, torch
from xaipipe import repro
calls, records = [], []
torch.use_deterministic_algorithms = lambda mode, warn_only=False: calls.append([mode, warn_only])
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("xaipipe").addHandler(Keep())
torch.cuda.is_available = lambda: True            # a GPU node, as far as enable() can tell
for dev in ("cpu", "cuda:0", None, "auto", torch.device("cuda"), torch.device("cpu")):
    repro.enable(dev)
torch.cuda.is_available = lambda: False
repro.enable()
print(json.dumps([calls, records]))
"""


def test_deterministic_algorithms_are_strict_on_cpu_and_warn_only_on_cuda():
    """Some CUDA ops our models use have no deterministic kernel (adaptive_avg_pool2d backward,
    nll_loss, bilinear upsampling and reflection padding backward) and would raise under
    strict mode: on CUDA the mode is warn_only, logged once; on CPU strict. Mocked CUDA (in a
    fresh process: the flags last for the process)."""
    res = subprocess.run([sys.executable, "-c", _ENABLE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    calls, records = json.loads(res.stdout.strip().splitlines()[-1])
    assert calls == [[True, False], [True, True], [True, True], [True, True], [True, True],
                     [True, False], [True, False]]
    assert len(records) == 1 and "bit identity is not promised on CUDA" in records[0]
    assert repro.deterministic_warn_only("cuda:1") and not repro.deterministic_warn_only("cpu")


def test_importing_the_pipeline_imports_no_rule_s_work():
    """Every job is a fresh Python that imports xaipipe.pipeline; the module itself must not
    import the attribution, scoring or report stacks (each rule's function imports its own),
    nor Dask (only score jobs use it)."""
    import subprocess
    import sys
    heavy = ("torch", "pandas", "zarr", "dask", "xaipipe.explain", "xaipipe.metrics",
             "xaipipe.report", "matplotlib")
    code = (f"import sys; import xaipipe.pipeline; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
