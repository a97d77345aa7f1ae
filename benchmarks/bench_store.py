"""Saliency store size: bytes per map of float32, float16 + per-image scale and GradCAM's
native-resolution stores against raw float32, and what float16 does to the insertion AUC.

Computes Integrated Gradients and GradCAM maps with the demo model, writes each set of maps as
the pipeline does (``xaipipe.store.write_saliency``, chunks of 32 images) and prints, per
store, the bytes on disk per map (all files of the store, metadata included) and the ratio to
raw float32 (C x H x W x 4 bytes of the full-resolution map). Then scores insertion
(``xaipipe.metrics.insertion``, default parameters) on the maps read back from each store
(``open_saliency``: float16 rescaled, native maps upsampled) and prints the largest and the
mean change of an image's AUC against the float32 maps, and how many images change by more
than 1e-3. Run:

    .venv/bin/python benchmarks/bench_store.py [--images 64] [--steps 32] [--data shapes]

Images: ``shapes`` (the default where ``make demo`` built it) takes the first N validation
images of the demo data set; ``random`` uniform noise. The model is the demo model trained by
``make demo`` when it exists (random weights otherwise), 64x64.

The row ``IG f32 x(1+-2^-12)`` is a reference, not a store: the float32 maps with every value
multiplied by an independent factor in [1 - 2^-12, 1 + 2^-12] (about float16's rounding error,
without its ties). Its AUC change is what the metric does with perturbations of that size,
whatever their source. Goals: float16 <= 0.4x raw float32, |AUC change| <= 1e-3. Nothing is
asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchcommon import DEMO_WEIGHTS, bench_model, header
from xaipipe.explain import explain
from xaipipe.explain.cams.gradcam import GradCAM
from xaipipe.metrics import insertion
from xaipipe.store import open_saliency, write_saliency
from xaipipe.utils import resolve_device

DEMO_IMAGES = Path("results/data/shapes/native/original.zarr")


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_images(kind, n, size, device):
    """(images, where they come from)."""
    if kind == "shapes" and DEMO_IMAGES.exists() and DEMO_WEIGHTS.exists():
        from xaipipe.data.image_store import open_images
        images = open_images(DEMO_IMAGES, "val")
        n = min(n, len(images))
        return images.tensor(np.arange(n), device), f"first {n} val images of {DEMO_IMAGES}"
    torch.manual_seed(1)
    return torch.rand(n, 3, size, size, device=device), f"{n} random images"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32, help="IG path segments")
    ap.add_argument("--data", default="shapes", choices=["shapes", "random"])
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    device = resolve_device(a.device)
    model, size, source = bench_model("demo", device)
    x, data = bench_images(a.data, a.images, size, device)
    n = x.shape[0]
    with torch.no_grad():
        target = model(x).argmax(1)
    ids, tg = np.arange(n), target.cpu().numpy()

    ig = explain("integrated_gradients", model, x, target, steps=a.steps).cpu()
    cam = explain("gradcam", model, x, target).cpu()                 # upsampled, as today
    native = GradCAM(model)
    native.native_resolution = True
    cam_native = native.run(x, target).maps.cpu()
    upsample = dict(image_size=tuple(x.shape[-2:]), upsample=GradCAM.native_upsample)

    print(header(device))
    print(f"demo model ({source}), {data} 3x{size}x{size}, IG {a.steps} steps, GradCAM layer "
          f"map {tuple(cam_native.shape[-2:])}")
    rows = []          # (name, bytes per map or None, raw bytes per map, maps read back, reference)
    with tempfile.TemporaryDirectory() as tmp:
        def store(name, maps, ref, **kw):
            path = Path(tmp) / f"{name.replace(' ', '_')}.zarr"
            write_saliency(path, maps, ids, tg, chunk_n=32, **kw)
            back = torch.from_numpy(open_saliency(path).saliency.compute())
            rows.append((name, store_bytes(path) / n, ref[0].numel() * 4, back, ref))

        store("IG float32", ig, ig)
        store("IG float16+scale", ig, ig, dtype="float16")
        store("IG f16+scale keepbits 9", ig, ig, dtype="float16", keepbits=9)
        store("IG f16+scale keepbits 8", ig, ig, dtype="float16", keepbits=8)
        g = torch.Generator().manual_seed(2)
        noise = 1 + (torch.rand(ig.shape, generator=g) * 2 - 1) * 2.0 ** -12
        rows.append(("IG f32 x(1+-2^-12)", None, ig[0].numel() * 4, ig * noise, ig))
        store("GradCAM float32", cam, cam)
        store("GradCAM float16+scale", cam, cam, dtype="float16")
        store("GradCAM native float32", cam_native, cam, **upsample)
        store("GradCAM native float16", cam_native, cam, dtype="float16", **upsample)

    print(f"{'store':24s} {'bytes/map':>9s} {'raw f32':>7s} {'x raw':>6s} {'max err/max':>11s} "
          f"{'max |dAUC|':>10s} {'mean |dAUC|':>11s} {'>1e-3':>6s} {'d mean AUC':>10s}")
    scores = {}
    for name, per_map, raw, back, ref in rows:
        if id(ref) not in scores:
            scores[id(ref)] = np.asarray(insertion(model, x, ref.to(device), target)["auc"])
        signed = np.asarray(insertion(model, x, back.to(device), target)["auc"]) \
            - scores[id(ref)]
        d_auc = np.abs(signed)
        peak = ref.abs().flatten(1).max(1).values.clamp_min(1e-30)
        rel = ((back - ref).abs().flatten(1).max(1).values / peak).max().item()
        size_cols = (f"{per_map:9.0f} {raw:7d} {per_map / raw:6.3f}" if per_map is not None
                     else f"{'-':>9s} {raw:7d} {'-':>6s}")
        print(f"{name:24s} {size_cols} {rel:11.2e} {d_auc.max():10.2e} {d_auc.mean():11.2e} "
              f"{int((d_auc > 1e-3).sum()):3d}/{n} {abs(signed.mean()):10.2e}")
    print("raw f32 = C x H x W x 4 bytes of the full-resolution map; x raw = bytes/map / raw "
          "f32; max err/max = largest |read back - float32| over the image's max |float32|; "
          "dAUC: insertion AUC change per image against the float32 maps of the same method "
          "(GradCAM: today's upsampled maps); d mean AUC: change of the mean over the images, "
          "the number the summary tables report.")


if __name__ == "__main__":
    main()
