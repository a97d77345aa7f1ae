"""Training of the demo models on an image store's ``train`` split (CPU minutes).

SGD with Nesterov momentum and a one-cycle schedule (25 % warm-up), horizontal flips;
deterministic for a seed. ``optimizer: adamw`` is the recipe of the demo ViT: AdamW, a
one-cycle schedule with 15 % warm-up and gradients clipped at norm 1 (transformers are trained
so; with SGD the demo ViT reached 0.52 in 10 epochs). Writes the weights (a plain state dict,
loadable with ``weights_only=True``) and a JSON with the validation accuracy and the training
settings next to them.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data.image_store import open_images
from ..params import Param, check_params
from ..utils import atomic_path
from .zoo import load_model

TRAIN_PARAMS = {
    "epochs": Param(10, int, min=1),
    "batch_size": Param(64, int, min=1),
    "lr": Param(0.1, float, min=0.0, doc="peak learning rate of the one-cycle schedule"),
    "weight_decay": Param(5e-4, float, min=0.0),
    "width": Param(16, int, min=1, doc="base width of the demo network"),
    "seed": Param(0, int),
    "min_accuracy": Param(0.0, float, min=0.0, max=1.0,
                          doc="fail if the validation accuracy ends below this"),
    # left out of the job's signature at its default, so the demo CNNs' weights stay valid
    "optimizer": Param("sgd", str, ("sgd", "adamw"), omit_default=True,
                       doc="sgd: Nesterov SGD, 25 % warm-up; adamw: AdamW, 15 % warm-up, "
                           "gradient norm clipped at 1 (the demo ViT)"),
}


@torch.no_grad()
def accuracy(model, images, batch_size=512, device="cpu") -> float:
    correct = 0
    for start in range(0, len(images), batch_size):
        pos = np.arange(start, min(len(images), start + batch_size))
        pred = model(images.tensor(pos, device)).argmax(1).cpu().numpy()
        correct += int((pred == images.labels[pos]).sum())
    return correct / max(1, len(images))


def train_demo_model(arch: str, data_path, weights_out, metrics_out, *, device="cpu",
                     log=print, **params) -> dict:
    p = check_params(TRAIN_PARAMS, params, "models.<name>.train")
    torch.manual_seed(p["seed"])
    train = open_images(data_path, "train")
    val = open_images(data_path, "val")
    num_classes = len(train.classes) or int(train.labels.max()) + 1
    model = load_model(arch, weights="random", num_classes=num_classes, width=p["width"],
                       device=device)
    x_all = torch.from_numpy(train.read(np.arange(len(train))))     # uint8, small data set
    y_all = torch.from_numpy(train.labels)
    bs = p["batch_size"]
    steps_per_epoch = max(1, len(train) // bs)
    adamw = p["optimizer"] == "adamw"
    if adamw:
        opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=0.9, nesterov=True,
                              weight_decay=p["weight_decay"])
    total_steps = p["epochs"] * steps_per_epoch
    # One-cycle needs a few steps per phase; very short runs (tests) keep the LR constant.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"],
                                                pct_start=0.15 if adamw else 0.25,
                                                total_steps=total_steps) \
        if total_steps >= 8 else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    gen = torch.Generator().manual_seed(p["seed"])
    t0 = time.time()
    history = []
    for epoch in range(p["epochs"]):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            x = x_all[idx].float().div_(255)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x.to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if adamw:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        acc = accuracy(model, val, device=device)
        history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch, "val_accuracy": acc})
        log(f"epoch {epoch + 1}/{p['epochs']}: loss {total / steps_per_epoch:.4f} "
            f"val accuracy {acc:.4f} ({time.time() - t0:.0f} s)")
    result = {"arch": arch, "kwargs": {"num_classes": num_classes, "width": p["width"]},
              "val_accuracy": history[-1]["val_accuracy"], "train_images": len(train),
              "val_images": len(val), "seconds": round(time.time() - t0, 1),
              "params": p, "history": history}
    if result["val_accuracy"] < p["min_accuracy"]:
        raise RuntimeError(f"{arch} reached val accuracy {result['val_accuracy']:.4f} < "
                           f"min_accuracy {p['min_accuracy']}")
    with atomic_path(weights_out) as tmp:
        torch.save(model.net.state_dict(), tmp)
    with atomic_path(metrics_out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result
