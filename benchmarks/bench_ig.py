"""Integrated Gradients throughput: xaipipe against Captum, same model, inputs, steps, rule.

Prints images/s of both, their ratio, and the largest difference of the two maps. Run:

    .venv/bin/python benchmarks/bench_ig.py [--model demo|resnet18] [--images 32] [--steps 64]

``demo`` uses the demo model trained by ``make demo`` when it exists (random weights otherwise)
on 64x64 images; ``resnet18`` is torchvision's ResNet-18 (random weights) at 224x224.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

from xaipipe.explain import explain
from xaipipe.explain.base import default_memory_mb, get_method
from xaipipe.models import load_model
from xaipipe.utils import resolve_device

CAPTUM_METHOD = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle"}


def timed(fns, repeats):
    """Wall times of each function, runs interleaved (a, b, a, b, ...) so that drifts of the
    machine hit both alike; returns [((median s, best s), last output), ...]."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs[i] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t)
    return [((statistics.median(t), min(t)), o) for t, o in zip(times, outs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "resnet18"])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rule", default="right", choices=sorted(CAPTUM_METHOD))
    ap.add_argument("--memory-mb", type=float, default=None,
                    help="chunk budget of both (default: xaipipe's default for the device)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    device = resolve_device(a.device)
    torch.manual_seed(0)
    if a.model == "demo":
        weights = Path("results/models/shapes_resnet18/weights.pt")
        model = load_model("demo_resnet18", weights=str(weights)) if weights.exists() else \
            load_model("demo_resnet18", weights="random", num_classes=10)
        size, source = 64, str(weights) if weights.exists() else "random weights"
    else:
        model, size, source = load_model("resnet18", weights="random"), 224, "random weights"
    model = model.to(device).eval()
    x = torch.rand(a.images, 3, size, size, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)

    budget = a.memory_mb or default_memory_mb(device)
    chunk = get_method("integrated_gradients")(model, memory_mb=budget).chunk_size(
        x.shape[1:], device)
    # Captum batches whole steps (internal_batch_size // N steps of N images, at least one);
    # both get exactly that many points per forward/backward, so the work is the same.
    chunk = a.images * max(1, chunk // a.images)
    ig = IntegratedGradients(model)

    def ours():
        return explain("integrated_gradients", model, x, target, steps=a.steps, rule=a.rule,
                       max_batch=chunk)

    def captum():
        return ig.attribute(x, target=target, n_steps=a.steps, method=CAPTUM_METHOD[a.rule],
                            internal_batch_size=chunk)

    ours(), captum()                                   # warm-up
    (t_ours, m_ours), (t_cap, m_cap) = timed([ours, captum], a.repeats)
    diff = (m_ours - m_cap).abs().max().item()
    scale = m_cap.abs().max().item()
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model {a.model} ({source}), {a.images} images {size}x{size}, {a.steps} steps, "
          f"rule {a.rule}, {chunk} points per forward/backward for both (budget {budget:.0f} MB)")
    print(f"xaipipe IG: {a.images / t_ours[0]:8.2f} images/s  (median {t_ours[0]:.3f} s, "
          f"best {t_ours[1]:.3f} s)")
    print(f"Captum  IG: {a.images / t_cap[0]:8.2f} images/s  (median {t_cap[0]:.3f} s, "
          f"best {t_cap[1]:.3f} s)")
    print(f"speed ratio xaipipe/Captum: {t_cap[0] / t_ours[0]:.3f} (median), "
          f"{t_cap[1] / t_ours[1]:.3f} (best of {a.repeats})")
    print(f"max |difference|: {diff:.3e} (max |map| {scale:.3e}, relative {diff / scale:.2e})")


if __name__ == "__main__":
    main()
