"""Mixed precision (`precision: bfloat16 | float16`, torch.autocast) against float32: what it
changes in IG maps and insertion AUCs, and what it gains in throughput, in one process.

For each precision: Integrated Gradients (``--steps`` points, trapezoid) on the demo model and
the first ``--images`` validation images; per image the largest |map − float32 map| over the
float32 map's max |value|, the completeness gap |Σφ − (f(x) − f(x′))| over |f(x) − f(x′)|,
and the overlap of the top-10% pixels (by |φ| summed over colour) with float32's. Then
insertion (``--insertion-steps``) on the float32 IG maps with the model under that
precision: per-image |ΔAUC| (max, mean) and the change of the mean AUC. Throughput: IG and
insertion images per second, runs interleaved (``benchcommon.timed``), as ratios to float32.

    .venv/bin/python benchmarks/bench_precision.py [--images 8] [--repeats 2] [--device auto]

On CPU, autocast runs convolutions in bfloat16/float16 through oneDNN where the CPU has such
kernels (AVX-512 BF16/AMX) and emulates them otherwise, so it is usually slower there; it is
meant for GPUs. Nothing is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_store import bench_images
from benchcommon import bench_model, header, timed
from xaipipe.explain import run_method
from xaipipe.metrics import insertion
from xaipipe.utils import autocast, resolve_device


def top_overlap(a: torch.Tensor, b: torch.Tensor, frac: float = 0.1) -> np.ndarray:
    a, b = a.abs().sum(1).flatten(1), b.abs().sum(1).flatten(1)
    k = max(1, int(frac * a.shape[1]))
    ia, ib = a.topk(k, 1).indices, b.topk(k, 1).indices
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(ia, ib)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--insertion-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    device = resolve_device(a.device)
    model, size, source = bench_model("demo", device)
    x, data = bench_images("shapes", a.images, size, device)
    with torch.no_grad():
        t = model(x).argmax(1)
        df = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0].float()
    print(header(device))
    print(f"demo model ({source}), {data}, IG {a.steps} steps (trapezoid), insertion "
          f"{a.insertion_steps} steps")

    def ig(p):
        return lambda: run_method("integrated_gradients", model, x, t, steps=a.steps,
                                  rule="trapezoid", precision=p).maps

    ref_maps = ig("float32")()

    def ins(p):
        def run():
            with autocast(device, p):
                return np.asarray(insertion(model, x, ref_maps, t, steps=a.insertion_steps)
                                  ["auc"])
        return run

    precisions = ["float32", "bfloat16", "float16"]
    t_ig = timed([ig(p) for p in precisions], a.repeats)
    t_ins = timed([ins(p) for p in precisions], a.repeats)
    ref_auc = t_ins[0][1]
    peak = ref_maps.abs().flatten(1).amax(1)
    print(f"{'precision':9s} {'max err/max':>11s} {'mean':>8s} {'|gap|/|df|':>10s} "
          f"{'top10% ovl':>10s} {'max|dAUC|':>9s} {'mean|dAUC|':>10s} {'d mean AUC':>10s} "
          f"{'IG x':>6s} {'ins x':>6s}")
    for i, p in enumerate(precisions):
        maps = t_ig[i][1]
        rel = ((maps - ref_maps).abs().flatten(1).amax(1) / peak).cpu().numpy()
        gap = ((maps.flatten(1).sum(1) - df).abs() / df.abs()).cpu().numpy()
        ovl = top_overlap(maps.cpu(), ref_maps.cpu())
        d = t_ins[i][1] - ref_auc
        speed_ig = np.median(t_ig[0][0]) / np.median(t_ig[i][0])
        speed_ins = np.median(t_ins[0][0]) / np.median(t_ins[i][0])
        print(f"{p:9s} {rel.max():11.2e} {rel.mean():8.2e} {gap.mean():10.2e} "
              f"{ovl.mean():10.3f} {np.abs(d).max():9.2e} {np.abs(d).mean():10.2e} "
              f"{abs(d.mean()):10.2e} {speed_ig:6.2f} {speed_ins:6.2f}")
    print("max err/max: largest |map − float32 map| over the float32 map's max |value| per "
          "image (max and mean over images); |gap|/|df|: IG completeness gap relative to "
          "f(x) − f(0), mean over images; top10% ovl: shared top-10% pixels with float32; "
          "dAUC: insertion AUC change per image (float32 IG maps, model under the precision); "
          "IG x / ins x: throughput against float32 (median of interleaved runs).")


if __name__ == "__main__":
    main()
