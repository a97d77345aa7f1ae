"""DiffID throughput against a per-image per-ratio loop, same model, same scores.

Times ``xaipipe.metrics.diffid(model, images, maps, target, batch_size=...)`` (a chunk of
images and all their 2·R perturbed copies in one batched forward, the kept means from one
cumulative sum per image) against the loop the reference's structure suggests: per image,
the ranking once, then per ratio and game one perturbed image (boolean-index kept mean) and
one forward of that image (``ypeiyu/LPI`` ``evaluator.py`` builds each perturbed image in a
Python loop; here even the forward is per image, the "no batching" baseline). Both compute the
same scores: the script prints the largest difference of the fractional logits (float32
rounding of the forward at different batch sizes) and whether the accuracies are equal.
Prints images/s of both and loop/batched as median, best and paired median over interleaved
repeats. Run:

    .venv/bin/python benchmarks/bench_diffid.py [--model demo|resnet18] [--images 32]

``demo``: the demo ResNet-18 trained by ``make demo`` when it exists (random weights
otherwise), 64x64; ``resnet18``: torchvision's, random weights, 224x224. Maps are random.
Nothing is asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchcommon import header, parse_and_load, ratio, speed, timed
from xaipipe.metrics import diffid
from xaipipe.metrics.diffid import RATIOS, diffid_saliency, element_order

DEFAULT_BATCH = {"demo": 256, "resnet18": 128}


@torch.no_grad()
def loop(model, images, maps, target, ratios=RATIOS):
    """Per image, per ratio, per game: one perturbed image and one forward."""
    n, c, h, w = images.shape
    t = c * h * w
    out = {k: np.zeros((n, len(ratios))) for k in ("ins_logit", "del_logit", "ins_acc",
                                                     "del_acc")}
    for i in range(n):
        x = model.normalize(images[i:i + 1])
        z = model.net(x)[0]
        y = int(target[i])
        order = element_order(diffid_saliency(maps[i:i + 1], (h, w)), c)[0]
        flat = x.flatten()
        for j, r in enumerate(ratios):
            k = int(np.floor(r * t + 1e-9))
            for game, drop in (("ins", order[t - k:]), ("del", order[:k])):
                keep = torch.ones(t, dtype=torch.bool, device=x.device)
                keep[drop] = False
                xp = flat.clone()
                xp[drop] = flat[keep].double().mean().float()
                zp = model.net(xp.view(1, c, h, w))[0]
                out[f"{game}_logit"][i, j] = float(zp[y].double() / z[y].double())
                out[f"{game}_acc"][i, j] = float(zp.argmax() == y)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="model inputs per forward of the batched metric (default: 256 demo, "
                         "128 resnet18)")
    a, device, model, size, source = parse_and_load(ap, repeats=3)
    bs = a.batch_size or DEFAULT_BATCH[a.model]
    torch.manual_seed(1)
    x = torch.rand(a.images, 3, size, size, device=device)
    maps = torch.randn(a.images, 3, size, size, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)

    def ours():
        return diffid(model, x, maps, target, batch_size=bs)

    def reference():
        return loop(model, x, maps, target)

    ours(), reference()                                    # warm-up
    (t_ours, res), (t_loop, ref) = timed([ours, reference], a.repeats)
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, {len(RATIOS)} ratios "
          f"x 2 games = {a.images * 2 * len(RATIOS)} perturbed inputs; batched in forwards of "
          f"up to {bs}, the loop one at a time")
    for name, t in (("diffid", t_ours), ("per-image loop", t_loop)):
        print(f"{name:14s}: {speed(a.images, t)}")
    print(f"speed ratio diffid/loop: {ratio(t_loop, t_ours)}")
    dq = max(float(np.abs(res[k] - ref[k]).max()) for k in ("ins_logit", "del_logit"))
    same_acc = all(np.array_equal(res[k], ref[k]) for k in ("ins_acc", "del_acc"))
    print(f"same scores: max |Δ fractional logit| = {dq:.2e}, accuracies equal: {same_acc}; "
          f"mean DiffID-logit {res['diffid_logit_mean']:.4f}")


if __name__ == "__main__":
    main()
