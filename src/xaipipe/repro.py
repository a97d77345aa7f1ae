"""Reproducible mode: the same numbers on another x86 machine, at a measured cost.

The same config gives byte-identical results twice on one machine anyway. Across machines
the numbers move because the CPU kernels differ: ATen picks AVX2 / AVX-512 code paths by the
CPU it finds, MKL picks its own, oneDNN (mkldnn) convolutions pick algorithms by CPU and
shape, and a reduction split over the job's threads (whose number follows the allocation)
adds in another order. ``reproducible: true`` in the config (or :func:`enable` for API users)
pins all of them:

- ``ATEN_CPU_CAPABILITY=default``: ATen's portable kernels on every x86 CPU;
- ``MKL_CBWR=COMPATIBLE,STRICT``: MKL's conditional numerical reproducibility, the same code
  path on every CPU and the same results whatever the number of threads;
- oneDNN off (``torch.backends.mkldnn.enabled = False``), deterministic algorithms on
  (``torch.use_deterministic_algorithms``; on CUDA also cuDNN deterministic, no benchmark,
  ``CUBLAS_WORKSPACE_CONFIG``);
- on CUDA no TF32 (``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32`` False): float32 matmuls and convolutions in float32.
  torch's default lets cuDNN convolutions use TF32 on Ampere and later GPUs, which rounds
  their inputs to 10 mantissa bits (up to 2**-11, about 5e-4, relative each), beyond
  :data:`TOLERANCE`;
- torch intra-op threads fixed (``REPRO_THREADS``, 1) instead of following the allocation.

The environment variables are read when torch is imported, so the workflow sets them for its
jobs (the Snakefile, before any job starts; SLURM jobs inherit the submitting environment).
A process that has imported torch already can still call :func:`enable` for the flags, and
:func:`check_environment` says what is missing.

CPU against GPU cannot be bit-identical (other kernels, other summation orders); there the
documented tolerance (:data:`TOLERANCE`) holds and is tested against recorded numbers
(``tests/reference/repro.json``, written by ``python -m xaipipe.repro --record``).
"""
from __future__ import annotations

import os

ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "XAIPIPE_REPRODUCIBLE": "1",
}
REPRO_THREADS = 1
# largest relative difference of the reference numbers between devices (CPU vs CUDA), and
# between CPUs outside reproducible mode
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def requested() -> bool:
    """Whether this process runs in reproducible mode (set by the workflow's environment)."""
    return os.environ.get("XAIPIPE_REPRODUCIBLE") == "1"


def environment() -> dict:
    """The variables to export before torch is imported."""
    return dict(ENV)


def check_environment() -> list[str]:
    """The variables of :data:`ENV` this process does not have (empty: all set)."""
    return [f"{k}={v}" for k, v in ENV.items() if os.environ.get(k) != v]


def enable() -> None:
    """The torch flags of reproducible mode, in this process (the environment variables must
    have been set before torch was imported: :func:`check_environment`). For the rest of
    the process: nothing restores torch's defaults (a job process runs in one mode)."""
    import torch
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False     # settable and readable without CUDA
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(REPRO_THREADS)


def reference_numbers(device: str = "cpu") -> dict:
    """Numbers that depend on every kind of kernel the pipeline uses: a few SGD steps of a
    small demo ResNet on shapes images (conv, batch norm, cross-entropy, backward), then IG
    maps (16 steps) and insertion AUCs of four images with the trained weights."""
    import torch

    from .data.shapes import ShapesConfig, render
    from .explain import explain
    from .metrics import insertion
    from .models import load_model
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=4, width=4).to(device)
    cfg = ShapesConfig(image_size=32, num_classes=4)
    imgs = [render(cfg, "train", i) for i in range(32)]
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255
                     for im, _, _ in imgs]).to(device)
    y = torch.tensor([lab for _, _, lab in imgs], device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for step in range(6):
        sl = slice((step % 4) * 8, (step % 4) * 8 + 8)
        loss = torch.nn.functional.cross_entropy(model(x[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    maps = explain("integrated_gradients", model, x[:4], y[:4], steps=16)
    auc = insertion(model, x[:4], maps, y[:4], steps=11)["auc"]
    flat = maps.flatten(1).double()
    return {"loss": losses, "map_sum": flat.sum(1).tolist(),
            "map_abs_sum": flat.abs().sum(1).tolist(),
            "insertion_auc": [float(v) for v in auc]}


def _main():
    import argparse
    import json
    import sys
    ap = argparse.ArgumentParser(description="print (or --record) the reference numbers")
    ap.add_argument("--record", help="write them to this JSON file")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    missing = check_environment()
    if missing:
        sys.exit(f"reproducible mode needs, before python starts: {' '.join(missing)}")
    enable()
    nums = reference_numbers(a.device)
    text = json.dumps(nums, indent=1)
    if a.record:
        with open(a.record, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    _main()
