"""Preprocessing of a decoded image to a model's input resolution (torchvision's
``ToTensor`` -> ``Resize`` -> ``CenterCrop``, as the papers' reference code).

A named entry of the config's ``preprocess`` catalog; every model names one, and image stores
are keyed by (dataset, preprocess, variant), so models with different input sizes share
nothing they should not. Parameters:

- ``resize``: size of the resize step (None: no resize); ``mode`` ``shorter`` resizes the
  shorter side to ``resize`` (torchvision ``Resize(int)``), ``squash`` both sides
  (``Resize((s, s))``)
- ``crop``: centre-crop size (None: no crop)
- ``interpolation``: ``bilinear`` or ``bicubic`` (antialiased, as torchvision's v2 transforms)

As in the reference code, the image is converted to float in [0, 1] before resizing, and the
result is rounded to uint8 for storage. ``{}`` (all None) keeps the image as decoded.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..params import Param, check_params

PREPROCESS_PARAMS = {
    "resize": Param(None, int, min=1, doc="resize size (shorter side, or both with squash)"),
    "mode": Param("shorter", str, ("shorter", "squash")),
    "crop": Param(None, int, min=1, doc="centre-crop size"),
    "interpolation": Param("bilinear", str, ("bilinear", "bicubic")),
}


def check_preprocess(params: dict | None, where: str = "preprocess") -> dict:
    return check_params(PREPROCESS_PARAMS, params or {}, where)


def preprocess(image: Image.Image, resize=None, mode="shorter", crop=None,
               interpolation="bilinear") -> np.ndarray:
    """PIL image -> uint8 (3, H, W)."""
    image = image.convert("RGB")
    if resize is None and crop is None:
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    # torchvision only here: importing it costs ~2.6 s of start-up (models/demo.py)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    # torchvision's ToTensor (x / 255), as the reference code, to the last bit
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    if resize is not None:
        x = TF.resize(x, [resize, resize] if mode == "squash" else [resize],
                      interpolation=InterpolationMode(interpolation), antialias=True)
    if crop is not None:
        x = TF.center_crop(x, [crop, crop])
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def output_size(params: dict, size: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """(H, W) the preprocessing produces, where it is fixed (a crop, or a squash), else None."""
    if params.get("crop"):
        return params["crop"], params["crop"]
    if params.get("resize") and params.get("mode") == "squash":
        return params["resize"], params["resize"]
    return size
