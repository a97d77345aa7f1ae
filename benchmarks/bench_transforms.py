"""Shearlet and wavelet transform speed, against the model work of one mask-optimisation step.

ShearletX reconstructs S=16 perturbed coefficient sets of 3 colour channels x 49 bands at
256x256 every optimisation step, then runs the model on the 16 images and back-propagates
through both. This prints the times of

- ``decompose``: one image, (1, 3, 256, 256) -> (1, 3, 49, 256, 256) (done once per image),
- ``reconstruct``: (16, 3, 49, 256, 256) -> (16, 3, 256, 256), forward only and
  forward + backward (gradient w.r.t. the coefficients, as the mask step needs),
- the DWT (J=5, db3) of WaveletX on the same 16 x 3 images, forward + backward,
- torchvision's ResNet-18 (weights=None) forward + backward of 16 images at 256x256,

and the ratios reconstruct / ResNet-18 (median, best, paired median over interleaved repeats):
below 1 means the transform costs less than the model it feeds. Nothing is asserted. Run:

    .venv/bin/python benchmarks/bench_transforms.py [--samples 16] [--repeats 3] [--device auto]

The shearlet system is built on first use and cached (see ``xaipipe.transforms.shearlet``);
its build time is printed but not part of any ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from benchcommon import header, ratio, sync, timed
from xaipipe.transforms import ShearletTransform, WaveletTransform
from xaipipe.utils import resolve_device


def seconds(times):
    return f"median {statistics.median(times):7.3f} s, best {min(times):7.3f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16, help="S: images per mask step")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--scales", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    device = resolve_device(a.device)
    print(header(device))
    t = time.perf_counter()
    T = ShearletTransform(a.size, a.size, a.scales)
    print(f"shearlet system {a.size}x{a.size}, {a.scales} scales: K={T.n_bands}, "
          f"ready in {time.perf_counter() - t:.2f} s (cache {T.cache_path})")
    D = WaveletTransform(J=5, wave="db3", mode="zero")

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, a.size, a.size, generator=g).to(device)
    coeffs = torch.randn(a.samples, 3, T.n_bands, a.size, a.size, generator=g).to(device)
    images = torch.rand(a.samples, 3, a.size, a.size, generator=g).to(device)
    model = torchvision.models.resnet18(weights=None).to(device).eval()
    target = torch.zeros(a.samples, dtype=torch.long, device=device)

    def decompose():
        with torch.no_grad():
            return T.decompose(image)

    def reconstruct():
        with torch.no_grad():
            return T.reconstruct(coeffs)

    def reconstruct_fb():
        c = coeffs.detach().requires_grad_(True)
        T.reconstruct(c).square().mean().backward()
        return c.grad

    def dwt_fb():
        x = images.detach().requires_grad_(True)
        D.reconstruct(D.decompose(x)).square().mean().backward()
        return x.grad

    def resnet_fb():
        x = images.detach().requires_grad_(True)
        model(x).gather(1, target.view(-1, 1)).sum().backward()
        return x.grad

    fns = [decompose, reconstruct, reconstruct_fb, dwt_fb, resnet_fb]
    for fn in fns:                                   # warm-up: filter spectra, allocator
        fn()
    sync()
    (dec, _), (rec, _), (rec_fb, _), (dwt, _), (res, _) = timed(fns, a.repeats)
    del model

    n = a.samples
    print(f"decompose   (1, 3, {a.size}, {a.size}):                  {seconds(dec)}")
    print(f"reconstruct ({n}, 3, {T.n_bands}, {a.size}, {a.size}) forward:     {seconds(rec)}")
    print(f"reconstruct ({n}, 3, {T.n_bands}, {a.size}, {a.size}) fwd+bwd:     {seconds(rec_fb)}")
    print(f"DWT+IDWT    ({n}, 3, {a.size}, {a.size}) fwd+bwd:          {seconds(dwt)}")
    print(f"ResNet-18   ({n}, 3, {a.size}, {a.size}) fwd+bwd:          {seconds(res)}")
    print(f"ratio reconstruct forward / ResNet-18 fwd+bwd: {ratio(rec, res)}")
    print(f"ratio reconstruct fwd+bwd / ResNet-18 fwd+bwd: {ratio(rec_fb, res)}")
    print(f"ratio DWT+IDWT fwd+bwd    / ResNet-18 fwd+bwd: {ratio(dwt, res)}")


if __name__ == "__main__":
    main()
