"""PIC (PAIR variant) throughput: xaipipe's ``pic`` against PAIR's own
``saliency.metrics.pic.compute_pic_metric``, on the same images, maps and random masks.

PAIR is called the way its notebook does it: per image, once for SIC (``pred_func`` = the
softmax probability of the target) and once for AIC (``pred_func`` = top-1 correctness), each
call building its own blurred images, encodings and batch-of-one forwards; an image it rejects
(``ComputePicMetricError``) is skipped. xaipipe builds each image's bokeh images once, batches
the forwards of all images and levels, and shares them (and the WebP sizes) between SIC and AIC.

Prints images/s of both, the speed ratio (median, best, paired median over interleaved
repeats), whether the exclusions agree, and the largest |Δ AUC| and |Δ curve| of SIC and AIC
over the images both keep. Run:

    .venv/bin/python benchmarks/bench_pic.py [--model demo|resnet18] [--images 16]

``demo``: the demo ResNet-18 (trained weights from ``make demo`` if present, else random) on
64x64 ``shapes`` validation images with their labels and IG maps (16 steps) — the realistic
case, most images pass the min_pred check. ``resnet18``: torchvision's ResNet-18 with random
weights on random 224x224 images, targets = its own top-1, ``--min-pred`` 0 by default (a
random net is never confident), random maps. Nothing is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from benchcommon import bench_model, header, ratio, speed, timed
from xaipipe.metrics import pic
from xaipipe.metrics.pic import PAIR_THRESHOLDS, random_mask
from xaipipe.utils import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.pair_oracle import pair_pic  # noqa: E402  (PAIR under the NumPy shims it needs)


def inputs(name, model, n, size, device):
    if name == "demo":
        from xaipipe.data.sources.shapes import ShapesConfig, render
        from xaipipe.explain import explain
        cfg = ShapesConfig(image_size=size)
        rendered = [render(cfg, "val", i) for i in range(n)]
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255
                         for im, _, _ in rendered]).to(device)
        target = torch.tensor([lab for _, _, lab in rendered], device=device)
        maps = explain("integrated_gradients", model, x, target, steps=16)
        return x, maps.detach(), target
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    return x, torch.randn(n, 3, size, size, generator=g).to(device), target


def on_workers(workers, model, x, maps, target, masks, min_pred, batch_size, pair, repeats):
    """Time ``pic`` on a running LocalCluster of ``workers`` processes (one thread each), the
    images split into 2 chunks per worker, interleaved with PAIR (in this process); returns
    ((our times, PAIR times), our merged result)."""
    from distributed import Client, LocalCluster

    def chunked(client, remote_model):
        parts = np.array_split(np.arange(len(x)), 2 * workers)
        futs = [client.submit(pic, remote_model, x[p], maps[p], target[p], variant="pair",
                              random_mask=masks[p], min_pred_value=min_pred,
                              batch_size=batch_size, pure=False) for p in parts]
        res = client.gather(futs)
        return {k: np.concatenate([r[k] for r in res]) for k in res[0]}

    with LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        remote = client.scatter(model, broadcast=True)
        chunked(client, remote)                                # warm-up: imports, model copy
        (t_dask, r_dask), (t_pair, _) = timed([lambda: chunked(client, remote), pair],
                                              repeats)
    return (t_dask, t_pair), r_dask


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=None, help="default 16 (demo), 2 (resnet18)")
    ap.add_argument("--min-pred", type=float, default=None,
                    help="min_pred_value of both (default 0.8 demo, 0.0 resnet18)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2,
                    help="also time xaipipe's pic on a running LocalCluster of this many "
                         "worker processes, images in chunks as the score rule sends them "
                         "(0: skip)")
    a = ap.parse_args()
    n = a.images or (16 if a.model == "demo" else 2)
    min_pred = a.min_pred if a.min_pred is not None else (0.8 if a.model == "demo" else 0.0)

    device = resolve_device(a.device)
    model, size, source = bench_model(a.model, device)
    x, maps, target = inputs(a.model, model, n, size, device)
    masks = np.stack([random_mask(size, size, seed=0, image_id=i) for i in range(n)])

    def pair():    # PAIR's compute_pic_metric per image, SIC then AIC, as its notebook does
        return pair_pic(model, x, maps, target, masks, PAIR_THRESHOLDS, min_pred)

    def ours():
        return pic(model, x, maps, target, variant="pair", random_mask=masks,
                   min_pred_value=min_pred, batch_size=a.batch_size)

    ours()                                                     # warm-up
    (t_ours, r_ours), (t_pair, r_pair) = timed([ours, pair], a.repeats)
    if a.workers > 1 and device.type == "cpu":
        t_dask, r_dask = on_workers(a.workers, model, x, maps, target, masks, min_pred,
                                    a.batch_size, pair, a.repeats)
    print(header(device))
    print(f"model {a.model} ({source}), {n} images {size}x{size}, PAIR variant, "
          f"{len(PAIR_THRESHOLDS)} thresholds, min_pred_value {min_pred}, "
          f"batch size {a.batch_size}")
    print(f"xaipipe pic      : {speed(n, t_ours)}")
    print(f"PAIR compute_pic : {speed(n, t_pair)}  (SIC + AIC calls)")
    print(f"speed ratio xaipipe/PAIR: {ratio(t_pair, t_ours)}")
    if a.workers > 1 and device.type == "cpu":
        # chunks batch the model calls differently: the kernels' last bits may move
        diff = max(float(np.nanmax(np.abs(np.asarray(r_dask[k], float) - np.asarray(
            r_ours[k], float)), initial=0)) for k in r_ours
            if np.asarray(r_ours[k]).dtype.kind == "f")
        same = all(np.array_equal(r_dask[k], r_ours[k]) for k in r_ours
                   if np.asarray(r_ours[k]).dtype.kind != "f")
        print(f"xaipipe pic on {a.workers} worker processes: {speed(n, t_dask[0])}; "
              f"max |Δ| against one process {diff:.2e}, same flags and reasons: {same}")
        print(f"speed ratio xaipipe ({a.workers} workers)/PAIR: {ratio(t_dask[1], t_dask[0])}")
    for score in ("sic", "aic"):
        ok_pair = np.array([r[score] is not None for r in r_pair])
        ok_ours = r_ours[f"{score}_valid"]
        both = ok_pair & ok_ours
        d_auc = max((abs(r_pair[i][score].auc - r_ours[f"{score}_auc"][i])
                     for i in np.flatnonzero(both)), default=float("nan"))
        d_curve = max((np.abs(r_pair[i][score].curve_y - r_ours[f"{score}_curve"][i]).max()
                       for i in np.flatnonzero(both)), default=float("nan"))
        print(f"{score.upper()}: valid xaipipe {ok_ours.sum()}/{n}, PAIR {ok_pair.sum()}/{n}, "
              f"exclusions agree: {bool((ok_pair == ok_ours).all())}; max |Δ AUC| "
              f"{d_auc:.3e}, max |Δ curve| {d_curve:.3e} over {both.sum()} images; "
              f"reasons {dict(zip(*np.unique(r_ours[f'{score}_reason'], return_counts=True)))}")


if __name__ == "__main__":
    main()
