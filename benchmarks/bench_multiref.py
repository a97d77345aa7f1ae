"""Multi-reference path estimators' throughput (IG-Uniform, IG-SG, IG-SQ, Expected Gradients,
LPI, AGI, and IG as the one-reference case) against the model's raw forward+backward limit for the
same number of points (images x references x steps), in chunks of the same size.

Prints images/s of each method and estimator and the ratio method/limit (median, best and
paired median over interleaved repeats). A ratio near 1.0 means the estimator costs what the
model costs: drawing the references, building the points and streaming the products (vanilla,
valid_ref, valid_ip) add little. Run:

    .venv/bin/python benchmarks/bench_multiref.py [--model demo|resnet18] [--images 8]
        [--samples 10] [--steps 5] [--recalibrate none valid_ip]

``demo`` uses the demo model trained by ``make demo`` when it exists (random weights otherwise)
on 64x64 images; ``resnet18`` is torchvision's ResNet-18 (random weights) at 224x224. Expected
Gradients draws its references from a pool of 4 x samples random images; LPI uses the first
``samples`` of them as its reference set, with random density weights. IG runs with ``steps``
x ``samples`` points on its path (rule ``right``), the same number of points as the others.

AGI takes B = ``samples`` target classes and k = ``steps`` sign steps: 2·B·k gradients per image
(the adversarial step's and the attribution's), compared with a limit of twice the points.

The limit pushes the same number of points through forward + backward of the same model
(gradient of the target logit w.r.t. the input), in chunks of the same size, on one pre-built
random chunk: no references, no path points, no products. Nothing is asserted; the numbers are
printed.
"""
from __future__ import annotations

import argparse

import torch

from benchcommon import forward_backward_limit, header, parse_and_load, ratio, speed, timed
from xaipipe.explain import explain
from xaipipe.explain.base import default_memory_mb, get_method

METHODS = ("ig_uniform", "ig_sg", "ig_sq", "expected_gradients", "lpi", "agi",
           "integrated_gradients")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=10, help="references B per image")
    ap.add_argument("--steps", type=int, default=5, help="points k per reference")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--recalibrate", nargs="+", default=["none", "valid_ip"],
                    choices=["none", "valid_ref", "valid_ip"])
    ap.add_argument("--memory-mb", type=float, default=None,
                    help="chunk budget (default: xaipipe's default for the device)")
    a, device, model, size, source = parse_and_load(ap, repeats=5)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(a.images, 3, size, size, generator=gen).to(device)
    pool = torch.rand(4 * a.samples, 3, size, size, generator=gen).to(device)
    ids = torch.arange(a.images)
    with torch.no_grad():
        target = model(x).argmax(1)

    budget = a.memory_mb or default_memory_mb(device)
    chunk = get_method("ig_uniform")(model, memory_mb=budget).chunk_size(x.shape[1:], device)
    n_points = a.images * a.samples * a.steps
    limit = forward_backward_limit(model, x, target, n_points, chunk)
    # AGI: B target classes x k steps, each a gradient of the adversarial target's score and
    # one of f (2·B·k passes): its limit has twice the points
    limit2 = forward_backward_limit(model, x, target, 2 * n_points, chunk)

    def runner(name, mode):
        if name == "integrated_gradients":
            kw = {"steps": a.samples * a.steps, "recalibrate": mode}
        else:
            kw = {"samples": a.samples, "steps": a.steps, "recalibrate": mode}
            if name == "expected_gradients":
                kw["references"] = pool
            if name == "lpi":                  # R = samples references, random density
                rho = torch.rand(a.samples, generator=torch.Generator().manual_seed(3))
                kw.update(references=pool[:a.samples], density=rho / rho.sum())
        return lambda: explain(name, model, x, target, image_ids=ids, max_batch=chunk, **kw)

    runs = [(f"{n} {m}", runner(n, m)) for n in a.methods for m in a.recalibrate]
    for _, fn in runs:
        fn()                                                     # warm-up
    limit(), limit2()
    results = timed([fn for _, fn in runs] + [limit, limit2], a.repeats)
    t_lim, t_lim2 = results[-2][0], results[-1][0]
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, B = {a.samples} "
          f"references x k = {a.steps} steps = {n_points} points, {chunk} points per "
          f"forward/backward (budget {budget:.0f} MB)")
    print(f"{'fwd+bwd limit':32s}: {speed(a.images, t_lim)}")
    for (label, _), (t, _) in zip(runs, results):
        print(f"{label:32s}: {speed(a.images, t)}")
    for (label, _), (t, _) in zip(runs, results):
        lim = t_lim2 if label.startswith("agi ") else t_lim
        print(f"speed ratio {label:26s}/limit: {ratio(lim, t)}")


if __name__ == "__main__":
    main()
