"""Insertion metric throughput against the model's raw forward limit, same model and batch size.

Times ``xaipipe.metrics.insertion(model, images, maps, target, steps=..., batch_size=...)`` and
the limit: the same number of model inputs (images x steps) pushed through the model under
``torch.no_grad`` in batches of the same size, on one pre-built random batch (no ranking, no
masking, no scores, no AUCs). Prints images/s of both and insertion/limit as median, best and
paired median over interleaved repeats. Run:

    .venv/bin/python benchmarks/bench_insertion.py [--model demo|resnet18] [--images 64]

``demo`` uses the demo model trained by ``make demo`` when it exists (random weights otherwise)
on 64x64 images; ``resnet18`` is torchvision's ResNet-18 (random weights) at 224x224. Maps are
random (their values do not change the work).

The metric also scores the N unperturbed images (the reference of the normalised AUC), which the
limit leaves out: even a free metric would reach only steps / (steps + 1) of the limit (0.955 at
21 steps). Nothing is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse

import torch

from benchcommon import header, parse_and_load, ratio, speed, timed
from xaipipe.metrics import insertion

DEFAULT_BATCH = {"demo": 256, "resnet18": 128}         # score.batch_size of config / imagenet


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="model inputs per forward for both (default: 256 demo, 128 resnet18)")
    a, device, model, size, source = parse_and_load(ap, repeats=7)
    bs = a.batch_size or DEFAULT_BATCH[a.model]
    torch.manual_seed(1)
    x = torch.rand(a.images, 3, size, size, device=device)
    maps = torch.rand(a.images, 3, size, size, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)

    def ours():
        return insertion(model, x, maps, target, steps=a.steps, batch_size=bs)

    n_inputs = a.images * a.steps
    lim_x = torch.rand(min(bs, n_inputs), 3, size, size, device=device)

    def limit():
        out = None
        with torch.no_grad():
            for s in range(0, n_inputs, bs):
                out = model(lim_x[:min(bs, n_inputs - s)])
        return out

    ours(), limit()                                    # warm-up
    (t_ours, res), (t_lim, _) = timed([ours, limit], a.repeats)
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, {a.steps} steps, "
          f"{n_inputs} perturbed inputs in batches of {bs} for both")
    for name, t in (("insertion", t_ours), ("forward limit", t_lim)):
        print(f"{name:13s}: {speed(a.images, t)}")
    print(f"speed ratio insertion/limit: {ratio(t_lim, t_ours)}; "
          f"ceiling steps/(steps+1) = {a.steps / (a.steps + 1):.3f}")
    print(f"mean AUC {float(res['auc'].mean()):.4f} (sanity: curve shape "
          f"{tuple(res['curve'].shape)})")


if __name__ == "__main__":
    main()
