"""The reference numbers of reproducible mode: numbers that depend on every kind of kernel the
pipeline uses, recorded once (``tests/unit/pipeline/reference/repro.json``) and compared on
other machines (``python -m xaipipe.pipeline.reference [--record FILE]``; see
:mod:`xaipipe.repro`)."""
from __future__ import annotations

import torch

from .. import repro
from ..data.sources.shapes import ShapesConfig, render
from ..explain import explain
from ..metrics import insertion
from ..models import load_model


def reference_numbers(device: str = "cpu") -> dict:
    """Numbers that depend on every kind of kernel the pipeline uses: a few SGD steps of a
    small demo ResNet on shapes images (conv, batch norm, cross-entropy, backward), then IG
    maps (16 steps) and insertion AUCs of four images with the trained weights."""
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
    missing = repro.check_environment()
    if missing:
        sys.exit(f"reproducible mode needs, before python starts: {' '.join(missing)}")
    repro.enable(a.device)
    nums = reference_numbers(a.device)
    text = json.dumps(nums, indent=1)
    if a.record:
        with open(a.record, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    _main()
