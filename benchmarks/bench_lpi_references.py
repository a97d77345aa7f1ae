"""LPI's reference set against one forward pass over the same training images.

Times ``xaipipe.explain.lpi_references(model, images, n_references=20, n_clusters=1)`` (the
logits of every image in batched no-grad forwards, then scikit-learn's k-means into R = 20
sub-clusters, ``n_init=3, max_iter=600``, and the nearest image of each centre) against the
forwards alone (the same batches, the logits discarded). The goal: the whole reference set
within 1.5x the forwards. Prints seconds of both, their ratio as median, best and paired median
over interleaved repeats, and the k-means share. Run:

    .venv/bin/python benchmarks/bench_lpi_references.py [--model demo|resnet18] [--images 1000]

``demo``: the demo ResNet-18 trained by ``make demo`` when it exists (random weights
otherwise), 64x64, 10 classes; ``resnet18``: torchvision's, random weights, 224x224, 1000
classes (the k-means then runs on 1000-d logits, as on ImageNet). Images are random. Nothing is
asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchcommon import header, parse_and_load, ratio, timed
from xaipipe.explain import lpi_references
from xaipipe.explain.paths.lpi_references import training_logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--references", type=int, default=20)
    ap.add_argument("--clusters", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=200)
    a, device, model, size, source = parse_and_load(ap, repeats=3)
    torch.manual_seed(1)
    x = torch.rand(a.images, 3, size, size)             # on the CPU, as read from a store

    def forward():
        return training_logits(model, x, a.batch_size)

    def reference_set():
        return lpi_references(model, x, a.references, a.clusters, seed=0,
                              batch_size=a.batch_size)

    forward(), reference_set()                          # warm-up
    (t_fwd, z), (t_ref, ref) = timed([forward, reference_set], a.repeats)
    t0 = time.perf_counter()
    lpi_references(model, x, a.references, a.clusters, seed=0, logits=z)
    t_km = time.perf_counter() - t0
    print(header(device))
    print(f"model {a.model} ({source}), {a.images} training images {size}x{size}, "
          f"{z.shape[1]} logits, R = {a.references}, clusters = {a.clusters}, batches of "
          f"{a.batch_size}")
    for name, t in (("forward only", t_fwd), ("reference set", t_ref)):
        print(f"{name:14s}: median {sorted(t)[len(t) // 2]:.2f} s, best {min(t):.2f} s")
    print(f"k-means and selection alone (logits given): {t_km:.2f} s")
    print(f"time ratio reference set/forward: {ratio(t_ref, t_fwd)} (goal <= 1.5)")
    print(f"density range {float(ref['density'].min()):.3f} .. "
          f"{float(ref['density'].max()):.3f}")


if __name__ == "__main__":
    main()
