"""Metric evaluation on Dask: 2 worker processes against 1, on the same store and chunks.

Builds (in a temporary folder) an image store of ``--images`` demo validation images, the demo
model's weights (trained ones from ``make demo`` if present, else random), and an IG store
(16 steps) chunked by ``--chunk`` images, then scores it through ``score_store`` — the function
the ``score`` rule calls — with ``threads=1`` (the chunks run one after another in this
process, one torch thread) and ``threads=2`` (``scheduler: local`` starts a LocalCluster of 2
worker processes, one torch thread each). Times are end to end, the cluster's start-up
included, and again on an already running cluster (``score.scheduler`` = its address), runs
interleaved. ``--allocator`` (default ``retain``, the jobs' default) applies to this process
and, as in a score job, to the worker processes (``worker_allocator_config``). The per-image scores of all runs must be identical (checked).

The ceiling: what the CPUs give two processes at all. The demo model's forward pass (batches
of 64 images, one torch thread) in two processes at once against one, started together after
their set-up; 2 workers / 1 cannot beat that ratio (the scheduler and the client share the
cores too).

    .venv/bin/python benchmarks/bench_dask.py [--metric insertion|pic] [--images 64]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchcommon import (DEMO_WEIGHTS, add_allocator, header, ratio, speed, timed,
                         use_allocator)
from xaipipe.jobs import ModelSpec, ScoreJob
from xaipipe.data.datasets import build_image_store
from xaipipe.data.predictions import predict
from xaipipe.data.image_store import open_images
from xaipipe.explain import explain
from xaipipe.models import load_model
from xaipipe.store import write_saliency

PARAMS = {
    "insertion": {"steps": 21, "fill": "black", "score": "prob", "reduction": "abs_sum",
                  "norm_min": 0.05},
    "pic": {"variant": "pair", "min_pred_value": 0.0},
}


def build(d: Path, n: int, chunk: int):
    cfg = {"kind": "shapes", "image_size": 64, "num_classes": 10, "train": 0, "val": n}
    build_image_store("shapes", cfg, "original", {}, d / "images.zarr", progress=False)
    if DEMO_WEIGHTS.exists():
        model, source = load_model("demo_resnet18", weights=str(DEMO_WEIGHTS)), str(DEMO_WEIGHTS)
        weights = DEMO_WEIGHTS.resolve()
    else:
        torch.manual_seed(0)
        model = load_model("demo_resnet18", weights="random", num_classes=10)
        torch.save(model.net.state_dict(), d / "w.pt")
        weights, source = d / "w.pt", "random weights"
    model.eval()
    imgs = open_images(d / "images.zarr")
    preds = predict(model, imgs, progress=False)
    preds.to_parquet(d / "all.parquet")
    x = imgs.tensor(range(n))
    t = torch.as_tensor(preds["label"].to_numpy())
    maps = explain("integrated_gradients", model, x, t, steps=16)
    write_saliency(d / "ig.zarr", maps.detach(), preds["image_id"].to_numpy(), t.numpy(),
                   chunk_n=chunk)
    return weights, source


def _forward_loop(start, out, n_batches: int) -> None:
    """One ceiling process: one torch thread, the demo model's forward over ``n_batches``
    batches of 64 images, timed from the shared start."""
    torch.set_num_threads(1)
    model = load_model("demo_resnet18", weights="random", num_classes=10).eval()
    x = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        start.wait()
        t = time.perf_counter()
        for _ in range(n_batches):
            model(x)
    out.put(time.perf_counter() - t)


def ceiling(k: int, n_batches: int = 12) -> float:
    """Wall time of ``k`` processes each running :func:`_forward_loop` at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_forward_loop, args=(start, out, n_batches)) for _ in range(k)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metric", default="insertion", choices=sorted(PARAMS))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    add_allocator(ap)
    a = ap.parse_args()
    use_allocator(a.allocator)
    os.environ["XAIPIPE_ALLOCATOR"] = a.allocator               # score_store's LocalCluster
    import dask
    from xaipipe.parallel import worker_allocator_config
    from distributed import Client, LocalCluster
    from xaipipe.pipeline.scoring import score_store

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        weights, source = build(d, a.images, a.chunk)
        spec = ModelSpec("demo_resnet18", None, {"num_classes": 10})
        inputs = {"saliency": d / "ig.zarr", "images": d / "images.zarr",
                  "selections": [d / "all.parquet"], "model": [weights]}

        def run(threads, scheduler="local"):
            def fn():
                job = ScoreJob(metric=a.metric, params=PARAMS[a.metric], model=spec,
                               max_images=(None,), split="val", provenance={},
                               device="cpu", batch_size=256, scheduler=scheduler)
                return score_store(d / f"s{threads}.parquet", inputs, job, threads=threads)
            return fn

        print(header("cpu"))
        print(f"metric {a.metric}, {a.images} demo images 64x64 in chunks of {a.chunk} "
              f"({source})")
        (t1, r1), (t2, r2) = timed([run(1), run(2)], a.repeats)
        print(f"1 worker (in process)       : {speed(a.images, t1)}")
        print(f"2 worker processes (start-up included): {speed(a.images, t2)}")
        print(f"speed-up 2 workers / 1, end to end: {ratio(t1, t2)}")
        with dask.config.set(worker_allocator_config(a.allocator)), \
                LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                             dashboard_address=None) as c1, Client(c1), \
                LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                             dashboard_address=None) as c2, Client(c2):
            w1, w2 = run(1, c1.scheduler_address), run(2, c2.scheduler_address)
            w1(), w2()                                           # models loaded on the workers
            (u1, s1), (u2, s2) = timed([w1, w2], a.repeats)
        print(f"running cluster, 1 worker process : {speed(a.images, u1)}")
        print(f"running cluster, 2 worker processes: {speed(a.images, u2)}")
        print(f"speed-up 2 workers / 1, running clusters: {ratio(u1, u2)}")
        c1, c2 = [], []
        for r in range(a.repeats):                              # interleaved, order rotating
            for k in ((1, 2) if r % 2 == 0 else (2, 1)):
                (c1 if k == 1 else c2).append(ceiling(k) / k)   # time per unit of work
        print(f"ceiling, the model's forward in 2 processes / 1 (1 thread each): "
              f"{ratio(c1, c2)}")
        same = all(r.equals(r1) for r in (r2, s1, s2))
        print(f"identical per-image scores in all runs: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
