"""Path methods of the IDGI study: throughput against the model's forward+backward limit, and
the cost of a step sweep against its largest count alone.

For IG and Blur IG, plain and with IDGI, prints
- images/s of the ``--steps`` run and of the fwd+bwd limit (steps x one forward+backward of
  the same model, objective ``prob``, same points per chunk), and their ratio (the target
  for Blur IG: >= 0.8; the method also pays its blurs and one extra point per path);
- the time of ``explain_sweep`` over ``--sweep`` (default 8, 16, 32, 64, 128) against the
  ``max(sweep)``-step run alone (goal: <= 1.1).
Runs are interleaved (benchcommon.timed). Nothing is asserted. Run:

    .venv/bin/python benchmarks/bench_sweep.py [--model demo|resnet18] [--images 8]
"""
from __future__ import annotations

import argparse

import torch

from benchcommon import bench_model, header, ratio, speed, timed
from xaipipe.explain import explain, explain_sweep
from xaipipe.explain.base import default_memory_mb, get_method
from xaipipe.utils import resolve_device


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--sweep", default="8,16,32,64,128")
    ap.add_argument("--methods", default="integrated_gradients,blur_ig,guided_ig")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    device = resolve_device(a.device)
    model, size, source = bench_model(a.model, device)
    x = torch.rand(a.images, 3, size, size, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)
    sweep = [int(s) for s in a.sweep.split(",")]
    chunk = get_method("integrated_gradients")(model).chunk_size(x.shape[1:], device)
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, objective prob, "
          f"{chunk} points per forward/backward (budget {default_memory_mb(device):.0f} MB)")

    lim_x = torch.rand(chunk, *x.shape[1:], device=device)
    lim_t = target[torch.arange(chunk, device=device) % a.images]

    def limit(steps):
        n_points = a.images * steps
        for s in range(0, n_points, chunk):
            b = min(chunk, n_points - s)
            pts = lim_x[:b].detach().requires_grad_(True)
            with torch.enable_grad():
                f = torch.softmax(model(pts), 1).gather(1, lim_t[:b].view(-1, 1)).sum()
                torch.autograd.grad(f, pts)

    for name in a.methods.split(","):
        for idgi in (False, True):
            kw = {"objective": "prob", "idgi": idgi}
            tag = f"{name}{' +IDGI' if idgi else ''}"

            def one(steps=a.steps):
                return explain(name, model, x, target, steps=steps, **kw)

            one(), limit(a.steps)
            (t_m, _), (t_l, _) = timed([one, lambda: limit(a.steps)], a.repeats)
            print(f"{tag:28s} {a.steps} steps: {speed(a.images, t_m)}")
            print(f"{'':28s} limit   : {speed(a.images, t_l)}")
            print(f"{'':28s} method/limit: {ratio(t_l, t_m)}")
            if not get_method(name).sweepable:
                continue
            top = max(sweep)
            (t_s, _), (t_1, _) = timed([lambda: explain_sweep(name, model, x, target,
                                                              steps=sweep, **kw),
                                        lambda: one(top)], a.repeats)
            print(f"{'':28s} cost of the sweep {sweep} / the {top}-step run alone: "
                  f"{ratio(t_s, t_1)}")


if __name__ == "__main__":
    main()
