"""Integrated Gradients throughput: xaipipe against Captum and against the model's raw
forward+backward limit, same model, inputs, steps, rule and points per forward/backward.

Prints images/s of all three, the ratios xaipipe/Captum and xaipipe/limit (and Captum/limit),
each as median, best and paired median over interleaved repeats, and the largest difference of
the two maps. Run:

    .venv/bin/python benchmarks/bench_ig.py [--model demo|resnet18] [--images 32] [--steps 64]

``demo`` uses the demo model trained by ``make demo`` when it exists (random weights otherwise)
on 64x64 images; ``resnet18`` is torchvision's ResNet-18 (random weights) at 224x224.

The limit pushes the same number of points (images x steps) through forward + backward of the
same model (gradient of the target logit w.r.t. the input, like IG's default objective), in
chunks of the same size, on one pre-built random chunk: no path points, no weighting, no
accumulation, no extra pass for the completeness gap. IG/limit near 1.0 means IG costs what the
model costs. Nothing is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse

import torch
from captum.attr import IntegratedGradients

from benchcommon import forward_backward_limit, header, parse_and_load, ratio, speed, timed
from xaipipe.explain import explain
from xaipipe.explain.base import default_memory_mb, get_method

CAPTUM_METHOD = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rule", default="right", choices=sorted(CAPTUM_METHOD))
    ap.add_argument("--memory-mb", type=float, default=None,
                    help="chunk budget of all three (default: xaipipe's default for the device)")
    a, device, model, size, source = parse_and_load(ap, repeats=7)
    x = torch.rand(a.images, 3, size, size, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)

    budget = a.memory_mb or default_memory_mb(device)
    chunk = get_method("integrated_gradients")(model, memory_mb=budget).chunk_size(
        x.shape[1:], device)
    # Captum batches whole steps (internal_batch_size // N steps of N images, at least one);
    # all three get exactly that many points per forward/backward, so the work is the same.
    chunk = a.images * max(1, chunk // a.images)
    ig = IntegratedGradients(model)

    def ours():
        return explain("integrated_gradients", model, x, target, steps=a.steps, rule=a.rule,
                       max_batch=chunk)

    def captum():
        return ig.attribute(x, target=target, n_steps=a.steps, method=CAPTUM_METHOD[a.rule],
                            internal_batch_size=chunk)

    n_points = a.images * a.steps                      # left/right/middle: one point a step
    limit = forward_backward_limit(model, x, target, n_points, chunk)

    ours(), captum(), limit()                          # warm-up
    (t_ours, m_ours), (t_cap, m_cap), (t_lim, _) = timed([ours, captum, limit], a.repeats)
    diff = (m_ours - m_cap).abs().max().item()
    scale = m_cap.abs().max().item()
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, {a.steps} steps, "
          f"rule {a.rule}, {chunk} points per forward/backward for all (budget {budget:.0f} MB)")
    for name, t in (("xaipipe IG", t_ours), ("Captum  IG", t_cap), ("fwd+bwd limit", t_lim)):
        print(f"{name:13s}: {speed(a.images, t)}")
    print(f"speed ratio xaipipe/Captum: {ratio(t_cap, t_ours)}")
    print(f"speed ratio xaipipe/limit : {ratio(t_lim, t_ours)}")
    print(f"speed ratio Captum/limit  : {ratio(t_lim, t_cap)}")
    print(f"max |difference|: {diff:.3e} (max |map| {scale:.3e}, relative {diff / scale:.2e})")


if __name__ == "__main__":
    main()
