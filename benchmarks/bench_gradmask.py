"""GradMask throughput against the reference's one masked image per forward pass, and against
the model's own limit for the same work.

Times ``explain("gradmask", model, x, t, masks_layer=H_m)`` (all masked images of a batch in
batched no-grad forwards, across images) against
- **the per-mask loop**: the same masks (from the method itself), each masked image classified
  alone in its own forward pass, as ``DavideTraini/GradMask`` does (``GradMask.py``): the
  "≥ 10×" goal;
- **the limit**: one forward+backward of the batch plus 3·(L − 1)·H_m forwards of random
  images in chunks of the same size (the forward-only estimate's), no hooks, masks or sums: the "≤ 1.3×" goal (GradMask's
  time over the limit's).
Prints images/s and the ratios (median, best and paired median over interleaved repeats), and
the largest difference between the two heatmaps. Run:

    .venv/bin/python benchmarks/bench_gradmask.py [--model demo|base] [--images 4]
        [--masks-layer 4]

``demo``: the demo ViT (64x64, conv stem, 8x8 patches, width 64, 4 layers), random weights; ``base``: a
ViT-B/16-sized ``transformers`` ViT (224x224, 12 layers, 768 wide), random weights. Nothing is
asserted; the numbers are printed.
"""
from __future__ import annotations

import argparse

import torch

from benchcommon import add_allocator, header, ratio, speed, timed, use_allocator
from xaipipe.explain import explain, get_method
from xaipipe.explain.base import default_memory_mb
from xaipipe.explain.vit.tokens import patch_map
from xaipipe.models.vit import HFClassifier, vit_structure
from xaipipe.models.wrapper import NormalizedModel
from xaipipe.utils import resolve_device


def build(name: str, device):
    import transformers as tf
    torch.manual_seed(0)
    if name == "demo":
        from xaipipe.models import load_model
        return load_model("demo_vit", weights="random", num_classes=10).to(device), 64
    cfg = tf.ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072, num_labels=1000)
    cfg._attn_implementation = "eager"
    net = HFClassifier(tf.ViTForImageClassification(cfg).eval())
    return NormalizedModel(net, (0.5,) * 3, (0.5,) * 3).to(device).eval(), 224


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", choices=["demo", "base"])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--masks-layer", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    add_allocator(ap)
    a = ap.parse_args()
    use_allocator(a.allocator)
    device = resolve_device(a.device)
    model, size = build(a.model, device)
    st = vit_structure(model)
    x = torch.rand(a.images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    method = get_method("gradmask")(model, masks_layer=a.masks_layer)
    chunk = method.chunk_size(x.shape[1:], device, forward_only=True)   # as GradMask's
    rows = 3 * (st.layers - 1) * a.masks_layer

    def ours():
        return explain("gradmask", model, x, t, masks_layer=a.masks_layer)

    def loop():
        masks, grid = method.masks(x, t)
        fill = model.normalize.mean
        out = []
        with torch.no_grad():
            for i in range(a.images):
                heat = torch.zeros(masks.shape[-1], device=device)
                for r in range(rows):
                    up = patch_map(masks[i, r][None].float(), grid, (size, size))
                    xm = x[i:i + 1] * up + fill * (1 - up)
                    w = torch.softmax(model(xm), 1)[0, t[i]]
                    heat += w * masks[i, r].float()
                out.append(patch_map(heat[None], grid, (size, size)))
        return torch.cat(out)

    lim_x = torch.rand(min(chunk, a.images * rows), 3, size, size, device=device)

    def limit():
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
        with torch.no_grad():
            for s in range(0, a.images * rows, chunk):
                model(lim_x[:min(chunk, a.images * rows - s)])
        return g

    ours(), loop(), limit()                                  # warm-up
    (t_ours, m_ours), (t_loop, m_loop), (t_lim, _) = timed([ours, loop, limit], a.repeats)
    print(header(device))
    print(f"model {a.model} ({st.layers} layers, {size}x{size}, grid {st.grid(size, size)}), "
          f"{a.images} images, masks_layer {a.masks_layer}: {rows} masked images each; "
          f"{chunk} per forward (budget {default_memory_mb(device):.0f} MB)")
    for name, tm in (("gradmask", t_ours), ("per-mask loop", t_loop), ("limit", t_lim)):
        print(f"{name:14s}: {speed(a.images, tm)}")
    print(f"speed ratio gradmask/per-mask loop: {ratio(t_loop, t_ours)} (goal >= 10)")
    print(f"time ratio gradmask/limit: {ratio(t_ours, t_lim)} (goal <= 1.3)")
    print(f"max |heatmap difference|: {(m_ours - m_loop).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
