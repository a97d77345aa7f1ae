"""The cost of reproducible mode (xaipipe.repro): IG and insertion on the demo model, in a
fresh process per mode (torch reads the kernel settings at import), modes interleaved.

Prints images/s of each mode and the ratio reproducible / default. Default mode uses the
threads of this process's allocation; reproducible mode pins one thread and portable kernels.

    .venv/bin/python benchmarks/bench_repro.py [--images 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from xaipipe import repro

WORK = """
import json, time, torch
from xaipipe import repro
from xaipipe.data.sources.shapes import ShapesConfig, render
from xaipipe.explain import explain
from xaipipe.metrics import insertion
from xaipipe.parallel import set_torch_threads
from benchcommon import bench_model
repro.enable() if repro.requested() else set_torch_threads()
model, size, _ = bench_model("demo", "cpu")
cfg = ShapesConfig(image_size=size)
imgs = [render(cfg, "val", i) for i in range({n})]
x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im, _, _ in imgs])
t = torch.tensor([lab for _, _, lab in imgs])
explain("integrated_gradients", model, x[:2], t[:2], steps=8)        # warm-up
s = time.perf_counter()
maps = explain("integrated_gradients", model, x, t, steps=64)
ig = time.perf_counter() - s
s = time.perf_counter()
insertion(model, x, maps, t, steps=21)
ins = time.perf_counter() - s
print(json.dumps({{"ig": ig, "insertion": ins, "threads": torch.get_num_threads()}}))
"""


def run(n, reproducible):
    env = {k: v for k, v in os.environ.items() if k not in repro.ENV}
    if reproducible:
        env.update(repro.environment())
    out = subprocess.run([sys.executable, "-c", WORK.format(n=n)], env=env, text=True,
                         capture_output=True, check=True, cwd=os.path.dirname(__file__))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    res = {False: [], True: []}
    for r in range(a.repeats):
        for mode in ((False, True) if r % 2 == 0 else (True, False)):
            res[mode].append(run(a.images, mode))
    for part in ("ig", "insertion"):
        d = statistics.median(x[part] for x in res[False])
        p = statistics.median(x[part] for x in res[True])
        print(f"{part:9s}: default {a.images / d:7.2f} images/s ({res[False][0]['threads']} "
              f"threads), reproducible {a.images / p:7.2f} images/s (1 thread); "
              f"reproducible / default throughput {d / p:.3f}")


if __name__ == "__main__":
    main()
