"""Shards: the unit of storage and resume of attribution and score jobs (xaipipe.shards).

A sharded store reads back as the unsharded one; a job killed with SIGKILL mid-shard resumes
from its finished shards, recomputing only the rest, with a result identical to an
uninterrupted run and nothing partial left behind."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from xaipipe import shards
from xaipipe.config.jobs import ExplainJob, ModelSpec, ScoreJob
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.store import open_images
from xaipipe.explain.runner import explain_to_store
from xaipipe.metrics.runner import score_store
from xaipipe.models import load_model
from xaipipe.store import open_saliency

SPEC = ModelSpec("demo_resnet18", None, {"num_classes": 3, "width": 4})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    cfg = {"kind": "shapes", "image_size": 32, "num_classes": 3, "train": 0, "val": 8}
    build_image_store("s", cfg, "original", {}, d / "original.zarr", progress=False)
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=3, width=4)
    torch.save(model.net.state_dict(), d / "w.pt")
    predict(model, open_images(d / "original.zarr"), progress=False).to_parquet(d / "all.parquet")
    return d


def ejob(**kw):
    base = dict(method="integrated_gradients", params={"steps": 8}, model=SPEC,
                target="label", max_images=(None,), split="val", seed=0, device="cpu",
                batch_size=2, memory_mb=None, dtype="float32",
                provenance={"method": "ig"}, shard_size=None)
    return ExplainJob(**{**base, **kw})


def explain(data, out, job):
    return explain_to_store(out, data / "original.zarr", [data / "all.parquet"],
                            [data / "w.pt"], job, progress=False)


def leftovers(root):
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".shards")]


def test_bounds():
    assert shards.bounds(5, None) == [(0, 5)] and shards.bounds(5, 5) == [(0, 5)]
    assert shards.bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert shards.bounds(0, 2) == [(0, 0)]


def test_sharded_store_reads_back_as_the_unsharded_one(data, tmp_path):
    one = explain(data, tmp_path / "one.zarr", ejob())
    many = explain(data, tmp_path / "many.zarr", ejob(shard_size=2))
    assert one == {"shards": 1, "reused": 0} and many == {"shards": 4, "reused": 0}
    a, b = open_saliency(tmp_path / "one.zarr"), open_saliency(tmp_path / "many.zarr")
    assert len(shards.read_manifest(tmp_path / "many.zarr")) == 4
    assert b.saliency.chunks[0] == (2, 2, 2, 2)
    np.testing.assert_array_equal(np.asarray(a.saliency), np.asarray(b.saliency))
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.extras["completeness_gap"], b.extras["completeness_gap"])
    assert not leftovers(tmp_path)


def test_finished_shards_of_another_job_are_not_reused(data, tmp_path):
    out = tmp_path / "s.zarr"
    stage = shards.staging(out)
    explain(data, stage / "x.zarr", ejob(shard_size=2))       # shards of a different job...
    for p in shards.read_manifest(stage / "x.zarr"):
        p.rename(stage / p.name)                             # ...where this job looks for its own
    assert explain(data, out, ejob(shard_size=2, params={"steps": 4}))["reused"] == 0


KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from xaipipe.config.jobs import ExplainJob, ModelSpec
    from xaipipe.explain.runner import explain_to_store
    d, out = Path(sys.argv[1]), sys.argv[2]
    job = ExplainJob(method="integrated_gradients", params={"steps": 512}, target="label",
                     model=ModelSpec("demo_resnet18", None, {"num_classes": 3, "width": 4}),
                     max_images=(None,), split="val", seed=0, device="cpu", batch_size=1,
                     memory_mb=None, dtype="float32", provenance={"method": "ig"},
                     shard_size=1)
    explain_to_store(out, d / "original.zarr", [d / "all.parquet"], [d / "w.pt"], job,
                     progress=False)
""")


def test_sigkill_mid_shard_then_resume_recomputes_only_unfinished_shards(data, tmp_path):
    out = tmp_path / "ig.zarr"
    stage = shards.stage_path(out)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(data), str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if stage.is_dir() and len(list(stage.glob("shard-*.zarr"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    finished = len(list(stage.glob("shard-*.zarr")))
    assert 2 <= finished < 8 and not out.exists()
    job = ejob(params={"steps": 512}, batch_size=1, shard_size=1)
    res = explain(data, out, job)                             # the resume
    assert res == {"shards": 8, "reused": finished}
    assert not leftovers(tmp_path)
    ref = explain(data, tmp_path / "ref.zarr", job)           # an uninterrupted run
    assert ref["reused"] == 0
    a, b = open_saliency(out), open_saliency(tmp_path / "ref.zarr")
    np.testing.assert_array_equal(np.asarray(a.saliency), np.asarray(b.saliency))
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])


def test_score_shards_resume_after_a_crash(data, tmp_path, monkeypatch, caplog):
    explain(data, tmp_path / "m.zarr", ejob(shard_size=4))
    inputs = {"saliency": tmp_path / "m.zarr", "images": data / "original.zarr",
              "selections": [data / "all.parquet"], "model": [data / "w.pt"]}
    job = ScoreJob(metric="insertion", params={"steps": 5}, model=SPEC, max_images=(None,),
                   split="val", provenance={}, device="cpu", batch_size=16,
                   scheduler="synchronous", shard_size=4)
    whole = score_store(tmp_path / "whole.parquet", inputs, replace(job, shard_size=None))
    import xaipipe.metrics.runner as runner
    real, calls = runner.dask.compute, []

    def crash_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)
    monkeypatch.setattr(runner.dask, "compute", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        score_store(tmp_path / "s.parquet", inputs, job)
    assert not (tmp_path / "s.parquet").exists()
    monkeypatch.setattr(runner.dask, "compute", real)
    with caplog.at_level("INFO", logger="xaipipe"):
        resumed = score_store(tmp_path / "s.parquet", inputs, job)
    assert "reused 1 of 2 finished score shards" in caplog.text
    pd.testing.assert_frame_equal(resumed, whole)
    assert not leftovers(tmp_path)
