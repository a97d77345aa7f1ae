"""Mask methods: the transform's overhead per optimisation step, batching,
and StartGrad's speed-up on the demo model.

1. **Step cost.** One optimisation step of ShearletX / WaveletX (S noisy samples pushed
   through the inverse transform, the model, and back to the mask; the regularisers) against
   the model's own forward + backward over the same S samples (gradient to the input, one
   batch): the ratio step / model is printed [goal <= 1.3]. Both run with a memory budget
   large enough for one chunk.
2. **Batching.** ``explain(method, steps=k)`` of N images in one batch against one image at a
   time, per image [goal >= 4x on a GPU; the CPU ratio is reported].
3. **StartGrad speed-up** on the demo model (trained weights when ``make demo`` made them):
   per method, the ``ones`` and ``startgrad`` inits' histories (retained probability and
   CP-ℓ1, every step) on the same images, and the first step at which StartGrad's per-step
   IQM reaches the ones run's final IQM (:func:`xaipipe.metrics.statistics.speedup`, no bootstrap
   here); speed-up (t_ref + 1)/(t* + 1).

    .venv/bin/python benchmarks/bench_masks.py [--model resnet18|vgg19|mobilenet_v3_small
        --size 256 --samples 16]
        [--batch 4] [--steps 60 --images 4] [--parts 1,2,3] [--allocator retain|system]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchcommon import (TORCHVISION, add_allocator, bench_model, header,
                         ratio, timed, use_allocator)
from xaipipe.explain import get_method, run_method
from xaipipe.metrics.statistics import speedup
from xaipipe.utils import resolve_device


def step_cost(model, size, samples, device, repeats):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g).to(device)
    t = model(x).argmax(1)
    ids = torch.tensor([1])
    pts = x.expand(samples, -1, -1, -1).contiguous()

    def model_fb():
        p = pts.clone().requires_grad_(True)
        out = torch.softmax(model(p), 1)[:, int(t)].sum()
        (gr,) = torch.autograd.grad(out, p)
        return gr

    fns, names = [model_fb], ["model fwd+bwd"]
    for name in ("shearletx", "waveletx"):
        meth = get_method(name)(model, samples=samples, memory_mb=1e6)
        state = meth.prepare(x)
        masks = [m.requires_grad_(True) for m in meth.initial_masks(state, t, ids)]
        y_ref = torch.ones(1, device=device)

        def one_step(meth=meth, state=state, masks=masks, y_ref=y_ref):
            for m in masks:
                m.grad = None
            meth._distortion_pass(state, masks, t, y_ref, ids, 0)
            with torch.enable_grad():
                sum(r.sum() for r in meth.regularizers(state, masks)).backward()
            return masks[0].grad

        fns.append(one_step)
        names.append(f"{name} step (K={state.coeffs[0].shape[2] if name == 'shearletx' else '-'})")
    res = timed(fns, repeats)
    print(f"\n1. one optimisation step, 1 image {size}x{size}, S = {samples}:")
    for n, (ts, _) in zip(names, res):
        print(f"  {n:28s} median {statistics.median(ts):.3f} s  best {min(ts):.3f} s")
    for n, (ts, _) in zip(names[1:], res[1:]):
        print(f"  {n}: step / model = {1 / float(ratio(res[0][0], ts).split()[0]):.2f} "
              f"(median)  [goal <= 1.3]   model/step: {ratio(res[0][0], ts)}")


def batching(model, size, n, device, repeats):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g).to(device)
    t = model(x).argmax(1)
    ids = torch.arange(n)
    print(f"\n2. {n} images batched vs one at a time ({size}x{size}, 3 steps, S = 4):")
    for name in ("shearletx", "waveletx", "pixel_mask"):
        kw = dict(steps=3, samples=4, memory_mb=1e6)
        whole = lambda: run_method(name, model, x, t, image_ids=ids, **kw).maps  # noqa: E731
        single = lambda: torch.cat([run_method(name, model, x[i:i + 1], t[i:i + 1],  # noqa: E731
                                               image_ids=ids[i:i + 1], **kw).maps
                                    for i in range(n)])
        (tb, ob), (ts, os_) = timed([whole, single], repeats)
        print(f"  {name:11s} batched/single per image: {ratio(ts, tb)}  "
              f"(|Δ| max {float((ob - os_).abs().max()):.2g}, "
              f"mean {float((ob - os_).abs().mean()):.2g})")


def startgrad_speedup(device, steps, n_images, samples):
    model, size, source = bench_model("demo", device)
    g = torch.Generator().manual_seed(2)
    try:
        from xaipipe.data.image_store import open_images
        import numpy as np
        imgs = open_images("results/data/shapes/native/original.zarr", "val")
        x = imgs.tensor(np.arange(n_images), device)
        what = "the first demo val images"
    except Exception:                                          # no `make demo` here
        x = torch.rand(n_images, 3, size, size, generator=g).to(device)
        what = "random images"
    t = model(x).argmax(1)
    print(f"\n3. StartGrad speed-up, demo model ({source}), {n_images} {what}, {steps} steps, "
          f"S = {samples}:")
    for name in ("shearletx", "waveletx", "pixel_mask"):
        hist = {}
        for init in ("ones", "uniform", "startgrad"):
            a = run_method(name, model, x, t, image_ids=torch.arange(n_images), steps=steps,
                           samples=samples, init=init, history_every=1)
            hist[init] = {k: a.extras[k].double().cpu().numpy()
                          for k in ("retained_probability", "cp_l1")}
        for q in ("retained_probability", "cp_l1"):
            for ref in ("ones", "uniform"):
                s = speedup({ref: hist[ref][q], "startgrad": hist["startgrad"][q]},
                            reference=ref, n_boot=0)
                print(f"  {name:11s} {q:21s} vs {ref:8s}: v_ref {s['v_ref'][0]:8.3f}  "
                      f"t* {int(s['t_star'][0]):4d}  speed-up {s['speedup'][0]:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", choices=("demo", *TORCHVISION))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="1,2,3")
    add_allocator(ap)
    args = ap.parse_args()
    use_allocator(args.allocator)
    device = resolve_device("auto")
    print(header(device))
    parts = {int(p) for p in args.parts.split(",")}
    model, _, source = bench_model(args.model, device)
    print(f"model {args.model} ({source})")
    if 1 in parts:
        step_cost(model, args.size, args.samples, device, args.repeats)
    if 2 in parts:
        batching(model, 64 if args.model == "demo" else args.size, args.batch, device,
                 args.repeats)
    if 3 in parts:
        startgrad_speedup(device, args.steps, args.images, args.samples)


if __name__ == "__main__":
    main()
