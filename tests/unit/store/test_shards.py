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
from xaipipe.jobs import ExplainJob, ModelSpec, ScoreJob
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.image_store import open_images
from xaipipe.pipeline.attribution import explain_to_store
from xaipipe.pipeline.scoring import score_store
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
    from xaipipe.jobs import ExplainJob, ModelSpec
    from xaipipe.pipeline.attribution import explain_to_store
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
    import xaipipe.pipeline.scoring as runner
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


# -- resume when the layout changed; stale shards; write errors naming the output ----------

def gjob(**kw):
    """GradCAM (stores its native h x w map unless ``native_resolution=False``)."""
    return ejob(method="gradcam", params={}, provenance={"method": "gradcam"}, **kw)


def killed_after(monkeypatch, n):
    """Make the explain runner's writer raise KeyboardInterrupt (a kill) at its n+1-th write;
    returns the undo."""
    import xaipipe.pipeline.attribution as runner
    real, calls = runner.SaliencyWriter.write, []

    def write(self, *a, **k):
        calls.append(1)
        if len(calls) > n:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **k)
    monkeypatch.setattr(runner.SaliencyWriter, "write", write)
    return lambda: monkeypatch.setattr(runner.SaliencyWriter, "write", real)


@pytest.mark.parametrize("first, then, reused", [
    # the layout changes: the finished shard is recomputed, the store reads back
    (gjob(shard_size=2), gjob(shard_size=2, native_resolution=False), 0),
    (gjob(shard_size=2, native_resolution=False), gjob(shard_size=2), 0),
    (gjob(shard_size=2), gjob(shard_size=2, dtype="float16", keepbits=8), 0),
    # how the job runs changes, not what it writes: the finished shard is kept
    (gjob(shard_size=2), gjob(shard_size=2, batch_size=4, memory_mb=64.0), 1),
], ids=["native-to-upsampled", "upsampled-to-native", "float16", "batch-size"])
def test_resume_reuses_a_finished_shard_only_with_the_same_layout(data, tmp_path, monkeypatch,
                                                                   caplog, first, then, reused):
    out = tmp_path / "g.zarr"
    undo = killed_after(monkeypatch, 1)                        # one shard finished, then killed
    with pytest.raises(KeyboardInterrupt):
        explain(data, out, first)
    undo()
    assert len(list(shards.stage_path(out).glob("shard-*.zarr"))) == 1 and not out.exists()
    with caplog.at_level("INFO", logger="xaipipe"):
        assert explain(data, out, then) == {"shards": 4, "reused": reused}
    assert ("recomputing finished shard shard-00000.zarr" in caplog.text) == (not reused)
    if first.dtype == then.dtype:                              # the same job, another layout
        assert ("written with other" in caplog.text) == (not reused)
    assert not leftovers(tmp_path)
    ref = explain(data, tmp_path / "ref.zarr", then)           # an uninterrupted run
    a, b = open_saliency(out), open_saliency(tmp_path / "ref.zarr")
    assert a.saliency.shape == b.saliency.shape
    np.testing.assert_allclose(np.asarray(a.saliency), np.asarray(b.saliency), rtol=1e-6,
                               atol=1e-7)
    assert ref["reused"] == 0


@pytest.mark.parametrize("shard_size", [3, None])
def test_a_rerun_with_fewer_shards_leaves_no_stale_shard(data, tmp_path, monkeypatch,
                                                          shard_size):
    out = tmp_path / "s.zarr"
    undo = killed_after(monkeypatch, 5)                        # shards 0-4 of 8 finished
    with pytest.raises(KeyboardInterrupt):
        explain(data, out, ejob(shard_size=1))
    undo()
    assert len(list(shards.stage_path(out).glob("shard-*.zarr"))) == 5
    res = explain(data, out, ejob(shard_size=shard_size))
    assert res == {"shards": 3 if shard_size else 1, "reused": 0}
    if shard_size:
        assert sorted(p.name for p in out.iterdir()) == [
            "shard-00000.zarr", "shard-00001.zarr", "shard-00002.zarr", "shards.json"]
    assert not leftovers(tmp_path)                             # no staging folder either
    explain(data, tmp_path / "one.zarr", ejob())
    np.testing.assert_array_equal(np.asarray(open_saliency(out).saliency),
                                  np.asarray(open_saliency(tmp_path / "one.zarr").saliency))


def test_a_parent_that_is_a_file_is_named_for_a_sharded_store(data, tmp_path):
    from xaipipe.errors import OutputWriteError
    (tmp_path / "results").write_text("not a folder")
    out = tmp_path / "results" / "s.zarr"
    with pytest.raises(OutputWriteError,
                       match=f"cannot write {out}: {tmp_path / 'results'} is a file"):
        explain(data, out, ejob(shard_size=2))


@pytest.mark.parametrize("where", ["mkdir", "shard", "manifest", "rename"])
def test_an_unwritable_staging_folder_names_the_output(data, tmp_path, monkeypatch, where):
    """The staging folder (its creation, a shard store in it, ``shards.json``, the final
    rename) cannot be written: the error is the usual write error naming the output."""
    import errno
    import pathlib
    import zarr.storage._local as local
    from xaipipe.errors import OutputWriteError

    def denied(p):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
    if where == "mkdir":
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self, *a, **k):
            if self.name.endswith(".shards"):
                raise denied(self)
            return real_mkdir(self, *a, **k)
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    elif where == "shard":
        real_put = local._put

        def put(path, value, exclusive=False):
            if ".shards" in str(path):
                raise denied(path)
            return real_put(path, value, exclusive)
        monkeypatch.setattr(local, "_put", put)
    elif where == "manifest":
        real_write = pathlib.Path.write_text

        def write_text(self, *a, **k):
            if self.name == shards.MANIFEST:
                raise denied(self)
            return real_write(self, *a, **k)
        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    else:
        real_rename = pathlib.Path.rename

        def rename(self, target):
            if self.name.endswith(".shards"):
                raise denied(self)
            return real_rename(self, target)
        monkeypatch.setattr(pathlib.Path, "rename", rename)
    out = tmp_path / "results" / "s.zarr"
    with pytest.raises(OutputWriteError, match=f"permission denied writing {out}$") as e:
        explain(data, out, ejob(shard_size=2))
    assert e.value.filename == str(out) and e.value.errno == errno.EACCES
    assert ".shards" not in str(e.value) and not out.exists()
    monkeypatch.undo()                                         # writable again: resume
    res = explain(data, out, ejob(shard_size=2))
    assert res["shards"] == 4 and res["reused"] == (4 if where in ("manifest", "rename") else 0)
    assert not leftovers(tmp_path)
