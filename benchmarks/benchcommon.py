"""Shared by the benchmarks: interleaved timing and the benchmark models.

Only the stable public API of xaipipe is used here (``load_model``, ``resolve_device``;
``retain_freed_memory`` where the checkout has it), so the benchmarks also run against older
checkouts (``PYTHONPATH=<worktree>/src``).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from xaipipe.models import load_model

DEMO_WEIGHTS = Path("results/models/shapes_resnet18/weights.pt")
#: torchvision architectures a benchmark may run with random weights (the ShearletX paper's
#: three models)
TORCHVISION = ("resnet18", "vgg19", "mobilenet_v3_small")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fns, repeats):
    """Wall times of each function, runs interleaved (a, b, c, then b, c, a, then c, a, b, ...:
    the order rotates so that no function always runs first) so that drifts of the machine hit
    all alike; returns [(list of the times in s, one per repeat, last output), ...]."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for r in range(repeats):
        for j in range(len(fns)):
            i = (r + j) % len(fns)
            fn = fns[i]
            sync()
            t = time.perf_counter()
            outs[i] = fn()
            sync()
            times[i].append(time.perf_counter() - t)
    return list(zip(times, outs))


def speed(n_images, times):
    """'... images/s (median ... s, best ... s)' of one function's times."""
    med, best = statistics.median(times), min(times)
    return f"{n_images / med:8.2f} images/s  (median {med:.3f} s, best {best:.3f} s)"


def ratio(fast, slow):
    """Throughput of ``slow``'s function relative to ``fast``'s (= time fast / time slow), as
    'M (median), B (best of n), P (paired median)': M of the median times, B of the best
    times, P the median over repeats of the ratio within each repeat (the runs of one repeat
    are adjacent, so P is the least sensitive to load that comes and goes)."""
    med = statistics.median(fast) / statistics.median(slow)
    best = min(fast) / min(slow)
    paired = statistics.median(f / s for f, s in zip(fast, slow))
    return f"{med:.3f} (median), {best:.3f} (best of {len(fast)}), {paired:.3f} (paired median)"


def bench_model(name: str, device):
    """(model in eval mode on ``device``, image size, where its weights come from).

    ``demo``: the demo ResNet-18 trained by ``make demo`` when its weights exist (relative to
    the current directory), else a random ``demo_resnet18`` (width 16, 10 classes), 64x64.
    ``resnet18``, ``vgg19``, ``mobilenet_v3_small``: torchvision's, random weights, 224x224."""
    torch.manual_seed(0)
    if name == "demo":
        if DEMO_WEIGHTS.exists():
            model, source = load_model("demo_resnet18", weights=str(DEMO_WEIGHTS)), \
                str(DEMO_WEIGHTS)
        else:
            model, source = load_model("demo_resnet18", weights="random", num_classes=10), \
                "random weights"
        size = 64
    elif name in TORCHVISION:
        model, size, source = load_model(name, weights="random"), 224, "random weights"
    else:
        raise ValueError(f"unknown benchmark model {name!r}; allowed: demo, "
                         f"{', '.join(TORCHVISION)}")
    return model.to(device).eval(), size, source


ALLOCATOR = "system"


def add_allocator(ap):
    """``--allocator retain|system``: the memory policy of the benchmark's process, ``retain``
    (default) as the workflow's jobs have it (config ``allocator``)."""
    ap.add_argument("--allocator", choices=("retain", "system"), default="retain")


def use_allocator(name):
    """Apply ``--allocator`` (before anything is timed); :func:`header` prints what applies."""
    global ALLOCATOR
    if name == "retain":
        try:
            from xaipipe.parallel import retain_freed_memory
        except ImportError:                          # an older checkout: glibc's default
            return
        if retain_freed_memory():
            ALLOCATOR = "retain"


def parse_and_load(ap, repeats: int):
    """The options every model benchmark shares (``--repeats``, ``--device``,
    ``--allocator``; ``ap`` has ``--model``), parsed and applied: (args, device, model, image
    size, where the weights came from)."""
    from xaipipe.utils import resolve_device
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--device", default="auto")
    add_allocator(ap)
    a = ap.parse_args()
    use_allocator(a.allocator)
    device = resolve_device(a.device)
    model, size, source = bench_model(a.model, device)
    return a, device, model, size, source


def forward_backward_limit(model, x, target, n_points: int, chunk: int):
    """The model's raw forward+backward cost for ``n_points`` points in chunks of ``chunk``
    (gradient of the target logit w.r.t. one pre-built random chunk shaped like ``x``; no
    method bookkeeping): a function to time, the limit a gradient method is compared with."""
    lim_x = torch.rand(min(chunk, n_points), *x.shape[1:], device=x.device)
    lim_t = target[torch.arange(lim_x.shape[0], device=x.device) % x.shape[0]].view(-1, 1)

    def limit():
        g = None
        for s in range(0, n_points, chunk):
            b = min(chunk, n_points - s)
            pts = lim_x[:b].detach().requires_grad_(True)
            with torch.enable_grad():
                f = model(pts).gather(1, lim_t[:b]).sum()
                (g,) = torch.autograd.grad(f, pts)
        return g
    return limit


def header(device):
    import xaipipe
    return (f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"allocator {ALLOCATOR}, xaipipe from {Path(xaipipe.__file__).parent}")
